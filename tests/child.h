/* SPDX-License-Identifier: MIT */
/* child.h - waiting for a test's child process with a bound. */
#ifndef FP_TEST_CHILD_H
#define FP_TEST_CHILD_H

#include <sys/types.h>

/* Waits for child pid at most `limit` seconds (a pidfd makes the wait
 * block, not spin). Returns 0 with *status once it was reaped, or
 * FP_ETIMEDOUT after SIGKILLing and reaping it. */
int fp_test_wait_child(pid_t pid, double limit, int *status);

#endif
