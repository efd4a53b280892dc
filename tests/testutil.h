/* SPDX-License-Identifier: MIT */
/* testutil.h - helpers shared by the Check suites.
 *
 * fp_test_no_children() is every process-spawning test case's teardown: it
 * asserts that the test left no child process behind (waitpid(-1) must
 * report ECHILD). fp_test_count_fds() counts /proc/self/fd entries so a test
 * can compare before and after.
 */
#ifndef FP_TESTUTIL_H
#define FP_TESTUTIL_H

#include "child.h"

#include <check.h>

/* Asserts that the calling process has no child (zombie or live). */
void fp_test_no_children(void);

/* Returns the number of open file descriptors of the calling process. */
int fp_test_count_fds(void);

/* Returns 1 when the tests run under valgrind (FP_TEST_VALGRIND set), so
 * heavy cases can shrink their sizes. */
int fp_test_under_valgrind(void);

/* Returns 1 in ASan/UBSan/TSan builds (FP_ALLOC_LIBC is defined there):
 * tests of address-space limits or peak RSS skip what the sanitizers'
 * shadow memory and quarantine make meaningless. */
int fp_test_under_sanitizer(void);

/* Returns 1 in the ThreadSanitizer build, which cannot start threads in a
 * child forked from a multi-threaded process (it exits with 66): tests
 * whose forked child makes a pool skip that part there. */
int fp_test_under_tsan(void);

/* Busy for `us` microseconds of the monotonic clock: a task's stand-in for
 * work (never a way to wait for another thread or process). */
void fp_test_spin_us(long us);

/* Asserts that call returns code and leaves a message containing word in
 * fp_last_error() (a refusal that says why). */
#define fp_assert_says(call, code, word)                                       \
  do {                                                                         \
    ck_assert_int_eq((call), (code));                                          \
    ck_assert_msg(strstr(fp_last_error(), (word)) != NULL,                     \
                  "%s: message '%s' does not say '%s'", #call,                 \
                  fp_last_error(), (word));                                    \
  } while (0)

#endif
