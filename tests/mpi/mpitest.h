/* SPDX-License-Identifier: MIT */
/* mpitest.h - the small harness of the MPI tests (tests/mpi/).
 *
 * Check forks every test case into a child process; an MPI process must
 * not be forked and the pool must be made once per run (the worker ranks
 * end with it), so these programs run their cases in order in rank 0 and
 * count them here. EXPECT() records a failure with its line and goes on;
 * a case is one function; mt_done() prints "N passed, N failed" and gives
 * the exit status. Worker ranks never get here: they serve inside
 * fp_pool_new() and exit there.
 */
#ifndef FP_TESTS_MPITEST_H
#define FP_TESTS_MPITEST_H

#include <stdio.h>
#include <time.h>

static int mt_passed, mt_failed, mt_case_failed;

#define EXPECT(cond, ...)                                                     \
  do {                                                                        \
    if (!(cond)) {                                                            \
      printf("  %s:%d: expected %s: ", __FILE__, __LINE__, #cond);            \
      printf(__VA_ARGS__);                                                    \
      printf("\n");                                                           \
      mt_case_failed = 1;                                                     \
    }                                                                         \
  } while (0)

static inline double mt_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Runs one case and prints its outcome. */
static inline void mt_run(const char *name, void (*fn)(void *), void *arg) {
  double t0 = mt_now();
  mt_case_failed = 0;
  fn(arg);
  printf("%s %s (%.3f s)\n", mt_case_failed ? "FAIL" : "ok  ", name,
         mt_now() - t0);
  fflush(stdout);
  if (mt_case_failed)
    mt_failed++;
  else
    mt_passed++;
}

static inline int mt_done(void) {
  printf("%d passed, %d failed\n", mt_passed, mt_failed);
  fflush(stdout);
  return mt_failed ? 1 : 0;
}

#endif
