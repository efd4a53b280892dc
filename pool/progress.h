/* SPDX-License-Identifier: MIT */
/* progress.h - opt-in progress reporting for pool jobs (internal).
 *
 * The pool thread owns one fp__progress per job that asked for progress.
 * It calls fp__progress_update() each time items complete; the reporter
 * rate-limits its output (a bar redrawn at most ~10 times a second, or a
 * joblib-style line at growing intervals), so updating costs a clock read
 * and a compare on the hot path. Output goes to stderr only, and only when
 * the user asked for it: the library prints nothing else, ever.
 */
#ifndef FP_POOL_PROGRESS_H
#define FP_POOL_PROGRESS_H

#include "forkpool.h"

typedef struct fp__progress fp__progress;

/* Creates a reporter for a job of `total` items (-1: unknown). `mode` is
 * already resolved (never FP_PROGRESS_DEFAULT); FP_PROGRESS_OFF gives
 * *out = NULL and 0. `cb` (may be NULL) is called on every update that
 * passes the rate limit and once at the end. Returns 0 or FP_ENOMEM. */
int fp__progress_new(fp__progress **out, fp_progress_mode mode,
                     fp_progress_fn cb, void *cb_arg, int nworkers,
                     int64_t total);

/* Records that `done` items (cumulative) have completed; may print. NULL
 * is ignored. */
void fp__progress_update(fp__progress *pg, int64_t done);

/* Sets the total once it becomes known (producer-fed imap at its end). */
void fp__progress_set_total(fp__progress *pg, int64_t total);

/* Prints the final state (100 %, total elapsed) and frees the reporter.
 * NULL is ignored. */
void fp__progress_finish(fp__progress *pg);

#endif
