/* SPDX-License-Identifier: MIT */
/* forkgen.h - which process is this? A number that changes in every
 * child, however it was made (internal header).
 *
 * The pool and the Manager keep state that belongs to the process that
 * made it (a pool's threads, a thread's Manager heap). A forked copy must
 * see that state as its parent's, with a check cheap enough for every
 * call: a getpid() system call costs ~180 ns here, more than some calls.
 */
#ifndef FP_IPC_FORKGEN_H
#define FP_IPC_FORKGEN_H

#include "ipc/wire/alloc.h" /* FP__HIDDEN */

#include <stdint.h>

/* This process's fork generation: never 0, the same for every thread of
 * one process, different in each child from its parent's (and every
 * ancestor's) value, whether the child came from fork() (pthread_atfork
 * tells), _Fork() or a raw fork/clone system call (a MADV_WIPEONFORK page
 * tells; on a kernel without it, before Linux 4.14, only fork() is
 * seen). A few loads on the common path. */
FP__HIDDEN uint64_t fp__fork_gen(void);

#endif
