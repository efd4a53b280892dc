/* SPDX-License-Identifier: MIT */
/* clock.c - the monotonic clock and the conversion of user timeouts.
 *
 * Every time limit and wait in the library is measured on CLOCK_MONOTONIC
 * in nanoseconds. User-facing timeouts are doubles in seconds; they are
 * converted here, in one place, so that a huge value (1e10, 1e300,
 * INFINITY, DBL_MAX) means "forever" instead of overflowing an int64_t or
 * a time_t, and so that NaN is refused everywhere alike.
 */
#include "pool/clock.h"

#include <math.h>
#include <time.h>

int64_t fp__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Beyond this many seconds a timeout is "forever": about 292 years fit in
 * an int64_t of nanoseconds; a century is far past any real deadline and
 * leaves room to add it to the current time. */
#define FOREVER_S (100.0 * 365 * 24 * 3600)

int fp__timeout_ok(double seconds) {
  return !isnan(seconds);
}

int64_t fp__seconds_to_ns(double seconds) {
  if (isnan(seconds) || seconds <= 0)
    return 0;
  if (seconds >= FOREVER_S)
    return FP__NS_FOREVER;
  /* A positive limit below a nanosecond is the shortest one, not 0 ("no
   * limit" where 0 means that). */
  int64_t ns = (int64_t)(seconds * 1e9);
  return ns > 0 ? ns : 1;
}

int64_t fp__deadline_ns(double seconds) {
  int64_t d = fp__seconds_to_ns(seconds);
  return d == FP__NS_FOREVER ? FP__NS_FOREVER : fp__now_ns() + d;
}

int fp__deadline_ts(int64_t deadline_ns, struct timespec *ts) {
  if (deadline_ns == FP__NS_FOREVER)
    return 0;
  ts->tv_sec = (time_t)(deadline_ns / 1000000000);
  ts->tv_nsec = (long)(deadline_ns % 1000000000);
  return 1;
}
