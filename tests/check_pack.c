/* SPDX-License-Identifier: MIT */
/* check_pack.c - tests of fp_pack/fp_unpack (ipc/wire/pack.c).
 *
 * Every format letter in both directions, byte equality with the plain
 * writer calls, malformed formats (rejected before anything happens), and
 * the all-or-nothing rule of unpack: on failure the reader is where it was
 * and no output pointer was written.
 */
#include "forkpool.h"
#include "testutil.h"

#include <string.h>

START_TEST(pack_unpack_roundtrip_every_letter) {
  fp_writer w;
  fp_reader r;
  int b = -1;
  int64_t i = 0, j = 0;
  double d = 0;
  const char *s = NULL, *sn = NULL;
  const void *p = NULL;
  size_t sl = 0, pl = 0;

  fp_writer_init(&w);
  ck_assert_int_eq(fp_pack(&w, "n ? i d s S b [ i [] ] n", 1, (int64_t)-7, 1.5,
                           "str", "a\0b", (size_t)3, "\x00\xff", (size_t)2,
                           (int64_t)INT64_MAX),
                   0);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(
      fp_unpack(&r, "n?idsSb[i[]]n", &b, &i, &d, &s, &sn, &sl, &p, &pl, &j), 0);
  ck_assert_int_eq(b, 1);
  ck_assert(i == -7);
  ck_assert(d == 1.5);
  ck_assert_str_eq(s, "str");
  ck_assert_uint_eq(sl, 3);
  ck_assert_mem_eq(sn, "a\0b", 3);
  ck_assert_uint_eq(pl, 2);
  ck_assert_mem_eq(p, "\x00\xff", 2);
  ck_assert(j == INT64_MAX);
  ck_assert_int_eq(fp_reader_at_end(&r), 1);
  fp_writer_free(&w);
}
END_TEST

START_TEST(pack_matches_writer_calls) {
  fp_writer a, b;
  fp_writer_init(&a);
  fp_writer_init(&b);
  fp_pack(&a, "[i d s]", (int64_t)7, 2.5, "hi");
  fp_write_list_begin(&b);
  fp_write_int(&b, 7);
  fp_write_float(&b, 2.5);
  fp_write_str(&b, "hi");
  fp_write_list_end(&b);
  ck_assert_uint_eq(a.len, b.len);
  ck_assert_mem_eq(a.data, b.data, a.len);
  fp_writer_free(&a);
  fp_writer_free(&b);
}
END_TEST

START_TEST(pack_malformed_format_fails_einval_writes_nothing) {
  static const char *bad[] = {"x", "[", "]", "[[]", "][", "i*", "%d", "I"};
  fp_writer w;
  fp_writer_init(&w);
  for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
    fp_writer_reset(&w);
    fp_write_nil(&w);
    ck_assert_msg(fp_pack(&w, bad[k], (int64_t)1) == FP_EINVAL, "format %s",
                  bad[k]);
    ck_assert_uint_eq(w.len, 1);
    ck_assert_int_eq(fp_writer_error(&w), FP_EINVAL);
  }
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_pack(&w, NULL), FP_EINVAL);
  /* Brackets nested deeper than FP_MAX_DEPTH. */
  char deep[2 * (FP_MAX_DEPTH + 1) + 1];
  memset(deep, '[', FP_MAX_DEPTH + 1);
  memset(deep + FP_MAX_DEPTH + 1, ']', FP_MAX_DEPTH + 1);
  deep[sizeof(deep) - 1] = 0;
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_pack(&w, deep), FP_EINVAL);
  ck_assert_uint_eq(w.len, 0);
  deep[0] = ' ';
  deep[sizeof(deep) - 2] = ' '; /* exactly FP_MAX_DEPTH: fine */
  ck_assert_int_eq(fp_writer_error(&w), FP_EINVAL);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_pack(&w, deep), 0);
  ck_assert_int_eq(fp_pack(NULL, "n"), FP_EINVAL);
  fp_writer_free(&w);
}
END_TEST

START_TEST(pack_failure_rolls_back_partial_values) {
  fp_writer w;
  fp_writer_init(&w);
  fp_write_list_begin(&w);
  fp_write_int(&w, 1);
  size_t len = w.len;
  ck_assert_int_eq(fp_pack(&w, "i [ s ]", (int64_t)2, (const char *)NULL),
                   FP_EINVAL);
  ck_assert_uint_eq(w.len, len);
  ck_assert_int_eq(w.depth, 1);
  ck_assert_uint_eq(w.counts[0], 1);
  ck_assert_int_eq(fp_pack(&w, "n"), FP_EINVAL); /* sticky */
  fp_writer_free(&w);
}
END_TEST

START_TEST(pack_inside_deep_lists_fails_edepth) {
  fp_writer w;
  fp_writer_init(&w);
  for (int k = 0; k < FP_MAX_DEPTH; k++)
    fp_write_list_begin(&w);
  ck_assert_int_eq(fp_pack(&w, "i", (int64_t)1), 0);
  ck_assert_int_eq(fp_pack(&w, "[ ]"), FP_EDEPTH);
  fp_writer_free(&w);
}
END_TEST

START_TEST(unpack_malformed_format_fails_einval_without_moving) {
  static const char *bad[] = {"x", "[", "]", "[*", "i]", "q"};
  fp_writer w;
  fp_reader r;
  fp_writer_init(&w);
  fp_pack(&w, "[i]", (int64_t)1);
  fp_reader_init(&r, w.data, w.len);
  for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
    ck_assert_int_eq(fp_unpack(&r, bad[k], NULL), FP_EINVAL);
    ck_assert_uint_eq(r.pos, 0);
  }
  ck_assert_int_eq(fp_unpack(&r, NULL), FP_EINVAL);
  ck_assert_int_eq(fp_unpack(NULL, "n"), FP_EINVAL);
  fp_writer_free(&w);
}
END_TEST

START_TEST(unpack_star_skips_any_value) {
  fp_writer w;
  fp_reader r;
  int64_t i = 0;
  fp_writer_init(&w);
  fp_pack(&w, "[s [i i] b] i", "x", (int64_t)1, (int64_t)2, "y", (size_t)1,
          (int64_t)42);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_unpack(&r, "* i", &i), 0);
  ck_assert(i == 42);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_unpack(&r, "[* * *] *"), 0);
  ck_assert_int_eq(fp_reader_at_end(&r), 1);
  fp_writer_free(&w);
}
END_TEST

START_TEST(unpack_failure_is_all_or_nothing) {
  fp_writer w;
  fp_reader r;
  int64_t i = -1;
  const char *s = "untouched";
  fp_writer_init(&w);
  fp_pack(&w, "i i", (int64_t)5, (int64_t)6);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_unpack(&r, "i s", &i, &s), FP_ETYPE);
  ck_assert(i == -1); /* the first letter's output was not stored */
  ck_assert_str_eq(s, "untouched");
  ck_assert_uint_eq(r.pos, 0);
  ck_assert_int_eq(fp_unpack(&r, "i i i", &i, NULL, NULL), FP_EOF);
  ck_assert(i == -1);
  ck_assert_uint_eq(r.pos, 0);
  ck_assert_int_eq(fp_unpack(&r, "i i", &i, NULL), 0);
  ck_assert(i == 5);
  fp_writer_free(&w);
}
END_TEST

START_TEST(unpack_list_length_mismatch_fails_eproto) {
  fp_writer w;
  fp_reader r, snap;
  uint32_t c;
  fp_writer_init(&w);
  fp_pack(&w, "[i i] i", (int64_t)1, (int64_t)2, (int64_t)3);
  fp_reader_init(&r, w.data, w.len);
  /* More items than named: ']' fails. */
  ck_assert_int_eq(fp_unpack(&r, "[i]", NULL), FP_EPROTO);
  /* Fewer items than named: the third 'i' must not read the parent's 3. */
  ck_assert_int_eq(fp_unpack(&r, "[i i i]", NULL, NULL, NULL), FP_EPROTO);
  ck_assert_int_eq(fp_unpack(&r, "[i i i", NULL, NULL, NULL), FP_EINVAL);
  ck_assert_int_eq(fp_unpack(&r, "[]", NULL), FP_EPROTO);
  ck_assert_uint_eq(r.pos, 0);
  ck_assert_int_eq(fp_unpack(&r, "[i i] i", NULL, NULL, NULL), 0);
  /* Inside a list entered by hand, unpack stays within that list. */
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_read_list(&r, &c), 0);
  snap = r;
  ck_assert_int_eq(fp_unpack(&r, "i i i", NULL, NULL, NULL), FP_EOF);
  ck_assert_mem_eq(&r, &snap, sizeof(r));
  ck_assert_int_eq(fp_unpack(&r, "i i", NULL, NULL), 0);
  ck_assert_int_eq(r.depth, 0);
  fp_writer_free(&w);
}
END_TEST

START_TEST(unpack_wrong_type_fails_etype) {
  fp_writer w;
  fp_reader r;
  fp_writer_init(&w);
  fp_pack(&w, "s", "x");
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_unpack(&r, "b", NULL, NULL), FP_ETYPE);
  ck_assert_int_eq(fp_unpack(&r, "[", NULL), FP_EINVAL);
  ck_assert_int_eq(fp_unpack(&r, "[]"), FP_ETYPE);
  ck_assert_int_eq(fp_unpack(&r, "?", NULL), FP_ETYPE);
  ck_assert_int_eq(fp_unpack(&r, "S", NULL, NULL), 0);
  fp_writer_free(&w);
}
END_TEST

/* A varargs wrapper, as a caller would write one, to test the v-forms. */
static int pack_wrap(fp_writer *w, const char *fmt, ...) {
  va_list ap;
  int rc;
  va_start(ap, fmt);
  rc = fp_vpack(w, fmt, ap);
  va_end(ap);
  return rc;
}

static int unpack_wrap(fp_reader *r, const char *fmt, ...) {
  va_list ap;
  int rc;
  va_start(ap, fmt);
  rc = fp_vunpack(r, fmt, ap);
  va_end(ap);
  return rc;
}

START_TEST(vpack_vunpack_work_through_wrappers) {
  fp_writer w;
  fp_reader r;
  double d = 0;
  const char *s = NULL;
  fp_writer_init(&w);
  ck_assert_int_eq(pack_wrap(&w, "d s", 0.25, "v"), 0);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(unpack_wrap(&r, "d s", &d, &s), 0);
  ck_assert(d == 0.25);
  ck_assert_str_eq(s, "v");
  fp_writer_free(&w);
}
END_TEST

Suite *pack_suite(void) {
  Suite *s = suite_create("pack");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 10);
  tcase_add_test(tc, pack_unpack_roundtrip_every_letter);
  tcase_add_test(tc, pack_matches_writer_calls);
  tcase_add_test(tc, pack_malformed_format_fails_einval_writes_nothing);
  tcase_add_test(tc, pack_failure_rolls_back_partial_values);
  tcase_add_test(tc, pack_inside_deep_lists_fails_edepth);
  tcase_add_test(tc, unpack_malformed_format_fails_einval_without_moving);
  tcase_add_test(tc, unpack_star_skips_any_value);
  tcase_add_test(tc, unpack_failure_is_all_or_nothing);
  tcase_add_test(tc, unpack_list_length_mismatch_fails_eproto);
  tcase_add_test(tc, unpack_wrong_type_fails_etype);
  tcase_add_test(tc, vpack_vunpack_work_through_wrappers);
  suite_add_tcase(s, tc);
  return s;
}
