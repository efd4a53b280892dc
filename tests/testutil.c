/* SPDX-License-Identifier: MIT */
/* testutil.c - helpers shared by the Check suites (see testutil.h). */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

void fp_test_no_children(void) {
  int status;
  pid_t pid = waitpid(-1, &status, WNOHANG);
  ck_assert_msg(pid == -1 && errno == ECHILD,
                "test left a child process behind (waitpid gave %d)",
                (int)pid);
}

int fp_test_count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  if (d == NULL)
    return -1;
  while (readdir(d) != NULL)
    n++;
  closedir(d);
  return n - 3; /* ".", ".." and the DIR's own descriptor */
}

int fp_test_under_valgrind(void) {
  return getenv("FP_TEST_VALGRIND") != NULL;
}

int fp_test_under_sanitizer(void) {
#ifdef FP_ALLOC_LIBC
  return 1;
#else
  return 0;
#endif
}

#if defined(__SANITIZE_THREAD__)
#define FP_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FP_TEST_TSAN 1
#endif
#endif

int fp_test_under_tsan(void) {
#ifdef FP_TEST_TSAN
  return 1;
#else
  return 0;
#endif
}

void fp_test_spin_us(long us) {
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do
    clock_gettime(CLOCK_MONOTONIC, &t);
  while ((t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000 <
         us);
}
