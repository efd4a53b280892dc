/* check_errors.c - tests of fp_version, fp_strerror and fp_err_name.
 *
 * The expected strings come from the same FP_ERRNO_MAP table as the
 * library, so every entry is checked one by one; codes outside the table
 * (a system errno, garbage) must still give a non-NULL string.
 */
#include "forkpool.h"
#include "testutil.h"

#include <limits.h>
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
  static const int codes[] = {0,     1,      12345,   -4000,
                              -4999, -99999, INT_MIN, INT_MAX};
  for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
    const char *msg = fp_strerror(codes[i]);
    ck_assert_ptr_nonnull(msg);
    ck_assert_str_eq(msg, "unknown error");
    ck_assert_str_eq(fp_err_name(codes[i]), "FP_UNKNOWN");
  }
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
  suite_add_tcase(s, tc);
  return s;
}
