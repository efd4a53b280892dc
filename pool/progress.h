/* SPDX-License-Identifier: MIT */
/* progress.h - opt-in progress reporting for pool jobs (internal).
 *
 * Each job that asked for progress owns one fp__progress, driven under the
 * pool's lock by whichever thread takes results in: it calls
 * fp__progress_update() each time items complete; the reporter
 * rate-limits its output (a bar redrawn at most ~10 times a second, or a
 * joblib-style line at growing intervals), so updating costs a clock read
 * and a compare on the hot path. Output goes to stderr only, and only when
 * the user asked for it: the library prints nothing else, ever.
 */
#ifndef FP_POOL_PROGRESS_H
#define FP_POOL_PROGRESS_H

#include "forkpool.h"

#include <stdatomic.h>

typedef struct fp__progress fp__progress;

/* Creates a reporter for a job of `total` items (-1: unknown). `mode` is
 * already resolved (never FP_PROGRESS_DEFAULT); FP_PROGRESS_OFF gives
 * *out = NULL and 0. `cb` (may be NULL) is called on every update that
 * passes the rate limit and once at the end. Returns 0 or FP_ENOMEM. */
int fp__progress_new(fp__progress **out, fp_progress_mode mode,
                     fp_progress_fn cb, void *cb_arg, int nworkers,
                     int64_t total);

/* Records that `done` items (cumulative) have completed; may print, and
 * may call (or queue, see fp__progress_defer) the callback. NULL is
 * ignored. */
void fp__progress_update(fp__progress *pg, int64_t done);

/* Callbacks that are due, waiting to be run outside the pool's lock: the
 * reporter is driven under it, and a callback may call the pool. `pending`
 * is readable without the lock. */
typedef struct fp__progress_queue {
  fp__progress *head, *tail;
  _Atomic int pending;
} fp__progress_queue;

/* From now on pg's callback is queued on q instead of called (pg is then
 * only used under the lock that guards q). */
void fp__progress_defer(fp__progress *pg, fp__progress_queue *q);

/* 1 when pg's callback is deferred (queued), else 0 (also for NULL). */
int fp__progress_deferred(const fp__progress *pg);

/* One due callback, taken off a queue. done_with: the reporter to free
 * once it has run (its last call), else NULL. */
typedef struct fp__progress_call {
  fp_progress_fn cb;
  void *arg;
  int64_t done, total;
  double elapsed;
  fp__progress *done_with;
} fp__progress_call;

/* Under the lock: moves q's first due callback to *c. 0 when q is empty. */
int fp__progress_take(fp__progress_queue *q, fp__progress_call *c);

/* Outside the lock: runs c, then frees its reporter if it was the last. */
void fp__progress_call_run(const fp__progress_call *c);

/* Sets the total once it becomes known (producer-fed imap at its end). */
void fp__progress_set_total(fp__progress *pg, int64_t total);

/* Prints the final state (100 %, total elapsed) and frees the reporter,
 * or, when its callback is deferred, queues the last call, which frees it.
 * NULL is ignored. */
void fp__progress_finish(fp__progress *pg);

/* Frees the reporter of a job that never started (a refused call): no
 * line, no callback -- as far as the user can tell, there was no job.
 * Never deferred yet, so nothing of it is queued. NULL is ignored. */
void fp__progress_discard(fp__progress *pg);

#endif
