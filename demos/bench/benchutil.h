/* SPDX-License-Identifier: MIT */
/* benchutil.h - timing and output helpers shared by the benchmark programs.
 *
 * Every benchmark program prints its measurements as one line each,
 *
 *   metric=<id> side=<side> value=<number> unit=<unit>
 *
 * which demos/bench/report.py collects (from C and Python alike) into
 * medians, ratios, docs/benchmarks.json and docs/benchmarks.md. Anything
 * else a program prints goes to stderr. A program that finds a wrong
 * result (a checksum mismatch, a failed call) exits non-zero instead of
 * printing a figure, so a broken run never turns into a number.
 *
 * BENCH_QUICK=1 in the environment selects the short smoke-test sizes.
 */
#ifndef FP_BENCH_UTIL_H
#define FP_BENCH_UTIL_H

#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Monotonic time in seconds. */
static inline double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* 1 when BENCH_QUICK is set to something other than "" or "0". */
static inline int bench_quick(void) {
  const char *q = getenv("BENCH_QUICK");
  return q && *q && strcmp(q, "0") != 0;
}

/* Prints one measurement line on stdout and flushes it, so the lines of a
 * program that dies later are not lost in a buffer (and are not duplicated
 * into forked children). */
static inline void emit(const char *metric, const char *side, double value,
                        const char *unit) {
  printf("metric=%s side=%s value=%.6g unit=%s\n", metric, side, value, unit);
  fflush(stdout);
}

/* Prints a message on stderr and exits with status 1. */
static inline void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  fflush(stdout);
  exit(1);
}

/* Number of CPUs this process may run on. */
static inline int usable_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0)
    return 1;
  int n = CPU_COUNT(&set);
  return n > 0 ? n : 1;
}

/* The n-th CPU (0-based) of this process's mask, or -1. */
static inline int nth_cpu(int n) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0)
    return -1;
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &set) && n-- == 0)
      return c;
  return -1;
}

/* Pins the calling thread to cpu; returns 0 or -1. */
static inline int pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set);
}

#endif /* FP_BENCH_UTIL_H */
