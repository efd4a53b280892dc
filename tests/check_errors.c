/* SPDX-License-Identifier: MIT */
/* check_errors.c - tests of ipc/wire/error.c: fp_version, fp_strerror,
 * fp_err_name and the per-thread messages (fp_last_error,
 * fp_affinity_error).
 *
 * The expected strings come from the same FP_ERRNO_MAP table as the
 * library, so every entry is checked one by one; codes outside the table
 * (a system errno, garbage) must still give a non-NULL string. The message
 * tests set the pool's message through the internal setters, so they need
 * no pool.
 */
#include "forkpool.h"
#include "ipc/wire/error.h"
#include "testutil.h"

#include <limits.h>
#include <pthread.h>
#include <string.h>

START_TEST(version_matches_header) {
  ck_assert_str_eq(fp_version(), FP_VERSION_STRING);
}
END_TEST

START_TEST(strerror_and_name_match_every_table_entry) {
  int n = 0;
#define CHECK_ENTRY(name, value, msg)                                          \
  ck_assert_str_eq(fp_strerror(value), msg);                                   \
  ck_assert_str_eq(fp_err_name(value), "FP_" #name);                           \
  ck_assert_int_lt(value, 0);                                                  \
  n++;
  FP_ERRNO_MAP(CHECK_ENTRY)
#undef CHECK_ENTRY
  ck_assert_int_ge(n, 20);
}
END_TEST

START_TEST(own_codes_are_far_from_errno) {
  ck_assert_int_le(FP_ETYPE, -4000);
  ck_assert_int_le(FP_EWORKER, -4000);
  ck_assert_int_le(FP_EDEPTH, -4000);
  ck_assert_int_eq(FP_EINVAL, -EINVAL);
  ck_assert_int_eq(FP_EPIPE, -EPIPE);
}
END_TEST

START_TEST(unknown_errno_gets_libc_description_and_syserr) {
  /* ENOTDIR is a system errno that is not in our table. */
  ck_assert_str_eq(fp_strerror(-ENOTDIR), strerrordesc_np(ENOTDIR));
  ck_assert_str_eq(fp_err_name(-ENOTDIR), "FP_SYSERR");
  ck_assert_str_eq(fp_err_name(-EACCES), "FP_SYSERR");
}
END_TEST

START_TEST(garbage_codes_give_unknown_never_null) {
  static const int codes[] = {1, 12345, -4000, -4999, -99999, INT_MIN, INT_MAX};
  for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
    const char *msg = fp_strerror(codes[i]);
    ck_assert_ptr_nonnull(msg);
    ck_assert_str_eq(msg, "unknown error");
    ck_assert_str_eq(fp_err_name(codes[i]), "FP_UNKNOWN");
  }
}
END_TEST

START_TEST(zero_is_fp_ok_success) {
  ck_assert_int_eq(FP_OK, 0);
  ck_assert_str_eq(fp_err_name(0), "FP_OK");
  ck_assert_str_eq(fp_strerror(0), "success");
}
END_TEST

START_TEST(last_error_set_falls_back_to_strerror_and_clears) {
  fp__set_last_error(FP_ETASK, "item 3: odd value");
  ck_assert_str_eq(fp_last_error(), "item 3: odd value");
  fp__set_last_error(FP_ETASK, NULL);
  ck_assert_str_eq(fp_last_error(), fp_strerror(FP_ETASK));
  fp__set_last_error(FP_EINVAL, "");
  ck_assert_str_eq(fp_last_error(), "invalid argument");
  fp__set_last_error(FP_EINVAL, fp_last_error()); /* its own text: no-op */
  ck_assert_str_eq(fp_last_error(), "invalid argument");
  fp__clear_last_error();
  ck_assert_str_eq(fp_last_error(), "");
}
END_TEST

START_TEST(last_error_truncates_long_message) {
  static char big[3 * FP__ERRMSG_LEN];
  memset(big, 'x', sizeof big - 1);
  fp__set_last_error(FP_ETASK, big);
  ck_assert_uint_eq(strlen(fp_last_error()), FP__ERRMSG_LEN - 1);
  fp__clear_last_error();
}
END_TEST

START_TEST(affinity_and_pool_messages_are_separate) {
  fp_cpuset set;
  fp__set_last_error(FP_EWORKER, "item 7: worker died");
  ck_assert_int_eq(fp_cpulist_parse("5-3", &set), FP_EINVAL);
  ck_assert_ptr_nonnull(strstr(fp_affinity_error(), "reversed range 5-3"));
  ck_assert_str_eq(fp_last_error(), "item 7: worker died");
  /* A successful affinity call clears only its own message. */
  ck_assert_int_eq(fp_cpulist_parse("0", &set), 0);
  ck_assert_str_eq(fp_affinity_error(), "");
  ck_assert_str_eq(fp_last_error(), "item 7: worker died");
  fp__clear_last_error();
  ck_assert_str_eq(fp_last_error(), "");
}
END_TEST

START_TEST(err_source_out_of_range_is_ignored) {
  fp__err_setf(FP__ERR_NSRC, "%s", "nowhere");
  fp__err_clear((fp__errsrc)-1);
  ck_assert_str_eq(fp__err_get(FP__ERR_NSRC), "");
  ck_assert_str_eq(fp__err_get((fp__errsrc)99), "");
  fp__err_setf(FP__ERR_AFFINITY, "cpu %d", 9);
  ck_assert_str_eq(fp__err_get(FP__ERR_AFFINITY), "cpu 9");
  ck_assert_str_eq(fp_affinity_error(), "cpu 9");
  fp__err_clear(FP__ERR_AFFINITY);
}
END_TEST

static void *other_thread_messages(void *arg) {
  (void)arg;
  int clean = fp_last_error()[0] == '\0' && fp_affinity_error()[0] == '\0';
  fp__set_last_error(FP_EINVAL, "other thread");
  return (void *)(intptr_t)clean;
}

START_TEST(messages_are_per_thread) {
  pthread_t t;
  void *clean;
  fp__set_last_error(FP_ETASK, "main thread");
  fp__err_setf(FP__ERR_AFFINITY, "main affinity");
  ck_assert_int_eq(pthread_create(&t, NULL, other_thread_messages, NULL), 0);
  ck_assert_int_eq(pthread_join(t, &clean), 0);
  ck_assert_int_eq((int)(intptr_t)clean, 1);
  ck_assert_str_eq(fp_last_error(), "main thread");
  ck_assert_str_eq(fp_affinity_error(), "main affinity");
  fp__clear_last_error();
  fp__err_clear(FP__ERR_AFFINITY);
}
END_TEST

Suite *errors_suite(void) {
  Suite *s = suite_create("errors");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 10);
  tcase_add_test(tc, version_matches_header);
  tcase_add_test(tc, strerror_and_name_match_every_table_entry);
  tcase_add_test(tc, own_codes_are_far_from_errno);
  tcase_add_test(tc, unknown_errno_gets_libc_description_and_syserr);
  tcase_add_test(tc, garbage_codes_give_unknown_never_null);
  tcase_add_test(tc, zero_is_fp_ok_success);
  tcase_add_test(tc, last_error_set_falls_back_to_strerror_and_clears);
  tcase_add_test(tc, last_error_truncates_long_message);
  tcase_add_test(tc, affinity_and_pool_messages_are_separate);
  tcase_add_test(tc, err_source_out_of_range_is_ignored);
  tcase_add_test(tc, messages_are_per_thread);
  suite_add_tcase(s, tc);
  return s;
}
