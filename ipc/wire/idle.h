/* SPDX-License-Identifier: MIT */
/* idle.h - what a process does before it sleeps for a while (internal
 * header).
 *
 * A pool worker about to sleep on its task ring runs the idle hook; the
 * Manager sets it (ipc/shm/thread.c) to give the thread's heap caches
 * back to the arena. The hook lives in this lowest layer so that neither
 * side depends on the other.
 */
#ifndef FP_IPC_IDLE_H
#define FP_IPC_IDLE_H

#include "ipc/wire/alloc.h" /* FP__HIDDEN */

/* Sets the hook (one per process; the last set wins). It returns 1 when
 * it could not do all it had to (run it again after a while), else 0. */
FP__HIDDEN void fp__idle_hook_set(int (*fn)(void));

/* Runs the hook, if one is set; returns what it returned, 0 without one. */
FP__HIDDEN int fp__idle_run(void);

#endif
