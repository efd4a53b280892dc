/* SPDX-License-Identifier: MIT */
/* clock.h - the monotonic clock and timeouts in one place (clock.c). */
#ifndef FP_POOL_CLOCK_H
#define FP_POOL_CLOCK_H

#include <stdint.h>
#include <time.h>

/* A deadline or duration that never comes. */
#define FP__NS_FOREVER INT64_MAX

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t fp__now_ns(void);

/* 1 when `seconds` is a usable timeout value (not NaN), else 0. */
int fp__timeout_ok(double seconds);

/* Seconds as nanoseconds: 0 for zero, negative or NaN; FP__NS_FOREVER
 * for anything of a century or more (INFINITY, DBL_MAX, 1e300 ...). */
int64_t fp__seconds_to_ns(double seconds);

/* fp__now_ns() + seconds, or FP__NS_FOREVER. seconds > 0. */
int64_t fp__deadline_ns(double seconds);

/* Fills ts (CLOCK_MONOTONIC) for pthread_cond_timedwait and returns 1, or
 * returns 0 when the deadline is FP__NS_FOREVER (wait without a limit). */
int fp__deadline_ts(int64_t deadline_ns, struct timespec *ts);

#endif
