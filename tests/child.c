/* SPDX-License-Identifier: MIT */
/* child.c - waiting for a test's child process with a bound (see child.h).
 * Free of Check, so that the stress program links it too. */
#include "child.h"

#include "forkpool.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits for child pid at most `limit` seconds (a pidfd makes the wait
 * block, not spin). Returns 0 with *status once it was reaped, or
 * FP_ETIMEDOUT after SIGKILLing and reaping it. */
int fp_test_wait_child(pid_t pid, double limit, int *status) {
  int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
  double end = mono_s() + limit;
  int rc = FP_ETIMEDOUT;
  for (;;) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid) {
      rc = 0;
      break;
    }
    if (r < 0 && errno != EINTR)
      break;
    double left = end - mono_s();
    if (left <= 0)
      break;
    if (pfd >= 0) {
      struct pollfd pf = {pfd, POLLIN, 0};
      poll(&pf, 1, (int)(left * 1000) + 1);
    } else {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
  }
  if (rc != 0) {
    kill(pid, SIGKILL);
    while (waitpid(pid, status, 0) < 0 && errno == EINTR) {
    }
  }
  if (pfd >= 0)
    close(pfd);
  return rc;
}
