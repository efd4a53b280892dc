/* SPDX-License-Identifier: MIT */
/* check_typed.c - the compile-time helpers of forkpool.h: FP_PACK,
 * FP_PACK_LIST, FP_UNPACK, FP_I/FP_D/FP_S/FP_B and FP_MAP.
 *
 * The macros choose a format letter and a conversion from each argument's
 * C type. These tests pack values of every integer width, signedness and
 * floating type and read them back with the plain reader calls, so a wrong
 * letter or a missed conversion shows up as a wrong type or value. FP_MAP
 * runs real maps whose input and output elements differ in size. That a
 * wrong type is refused at compile time cannot be tested here: make check
 * compiles each case of tests/compile_fail/typed.c and expects failure.
 *
 * The pool cases end with the usual no-child teardown; waits are bounded
 * by the test case timeout.
 */
#include "forkpool.h"
#include "testutil.h"

#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void teardown(void) {
  fp_test_no_children();
}

/* Reads one INT value and returns it; fails the test on anything else. */
static int64_t read_i(fp_reader *r) {
  int64_t v = 0;
  ck_assert_int_eq(fp_read_peek(r), FP_INT);
  ck_assert_int_eq(fp_read_int(r, &v), 0);
  return v;
}

/* Reads one FLOAT value and returns it. */
static double read_d(fp_reader *r) {
  double v = 0;
  ck_assert_int_eq(fp_read_peek(r), FP_FLOAT);
  ck_assert_int_eq(fp_read_float(r, &v), 0);
  return v;
}

START_TEST(pack_converts_every_integer_type_to_int64) {
  fp_writer w;
  fp_reader r;
  char c = 'A';
  signed char sc = -5;
  unsigned char uc = 250;
  short s = -30000;
  unsigned short us = 65000;
  int i = -7;
  unsigned u = 4000000000u;
  long l = -1234567890123L;
  fp_writer_init(&w);
  ck_assert_int_eq(FP_PACK(&w, c, sc, uc, s, us, i, u, l), 0);
  unsigned long ul = 18000000000000000000ul; /* above INT64_MAX */
  long long ll = INT64_MIN;
  unsigned long long ull = 42;
  size_t z = 12345;
  ck_assert_int_eq(FP_PACK(&w, ul, ll, ull, z), 0);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(read_i(&r), 'A');
  ck_assert_int_eq(read_i(&r), -5);
  ck_assert_int_eq(read_i(&r), 250);
  ck_assert_int_eq(read_i(&r), -30000);
  ck_assert_int_eq(read_i(&r), 65000);
  ck_assert_int_eq(read_i(&r), -7);
  ck_assert_int_eq(read_i(&r), 4000000000);
  ck_assert_int_eq(read_i(&r), -1234567890123);
  ck_assert_int_eq(read_i(&r), (int64_t)18000000000000000000ull); /* wraps */
  ck_assert_int_eq(read_i(&r), INT64_MIN);
  ck_assert_int_eq(read_i(&r), 42);
  ck_assert_int_eq(read_i(&r), 12345);
  ck_assert(fp_reader_at_end(&r));
  fp_writer_free(&w);
}
END_TEST

START_TEST(pack_floats_strings_and_bools_by_type) {
  fp_writer w;
  fp_reader r;
  float f = 0.25f;
  double d = -1.5;
  long double ld = 3.0L;
  char buf[] = "mutable";
  const char *cs = "constant";
  bool yes = true;
  const char *s;
  size_t n;
  int b;
  fp_writer_init(&w);
  ck_assert_int_eq(FP_PACK(&w, f, d, ld, buf, cs, "literal", yes), 0);
  fp_reader_init(&r, w.data, w.len);
  ck_assert(read_d(&r) == 0.25);
  ck_assert(read_d(&r) == -1.5);
  ck_assert(read_d(&r) == 3.0);
  ck_assert_int_eq(fp_read_str(&r, &s, &n), 0);
  ck_assert_str_eq(s, "mutable");
  ck_assert_int_eq(fp_read_str(&r, &s, &n), 0);
  ck_assert_str_eq(s, "constant");
  ck_assert_int_eq(fp_read_str(&r, &s, &n), 0);
  ck_assert_str_eq(s, "literal");
  ck_assert_int_eq(fp_read_peek(&r), FP_BOOL);
  ck_assert_int_eq(fp_read_bool(&r, &b), 0);
  ck_assert_int_eq(b, 1);
  ck_assert(fp_reader_at_end(&r));
  fp_writer_free(&w);
}
END_TEST

/* FP_B(x) is true for every nonzero integer, of any width: a 64-bit value
 * whose low 32 bits are zero included. */
START_TEST(bool_of_a_wide_integer_is_its_truth) {
  long long big = 1LL << 32, neg = -(1LL << 40);
  unsigned long top = 1UL << 63;
  fp_writer w;
  fp_reader r;
  int b;
  fp_writer_init(&w);
  ck_assert_int_eq(
      fp_pack(&w, "? ? ? ?", FP_B(big), FP_B(neg), FP_B(top), FP_B(0LL)), 0);
  fp_reader_init(&r, w.data, w.len);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(fp_read_bool(&r, &b), 0);
    ck_assert_int_eq(b, 1);
  }
  ck_assert_int_eq(fp_read_bool(&r, &b), 0);
  ck_assert_int_eq(b, 0);
  fp_writer_free(&w);
}
END_TEST

START_TEST(pack_equals_the_explicit_format) {
  fp_writer a, b;
  fp_writer_init(&a);
  fp_writer_init(&b);
  ck_assert_int_eq(FP_PACK(&a, 7, 2.5, "x"), 0);
  ck_assert_int_eq(fp_pack(&b, "i d s", (int64_t)7, 2.5, "x"), 0);
  ck_assert_uint_eq(a.len, b.len);
  ck_assert_mem_eq(a.data, b.data, a.len);
  fp_writer_free(&a);
  fp_writer_free(&b);
}
END_TEST

START_TEST(pack_evaluates_each_argument_once) {
  fp_writer w;
  fp_reader r;
  int i = 10, j = 20, rc;
  double d = 1.0;
  fp_writer_init(&w);
  rc = FP_PACK(&w, i++, d *= 2, j--);
  ck_assert_int_eq(rc, 0);
  ck_assert_int_eq(i, 11);
  ck_assert(d == 2.0);
  ck_assert_int_eq(j, 19);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(read_i(&r), 10);
  ck_assert(read_d(&r) == 2.0);
  ck_assert_int_eq(read_i(&r), 20);
  fp_writer_free(&w);
}
END_TEST

START_TEST(pack_list_writes_one_tuple) {
  fp_writer w;
  fp_reader r;
  uint32_t count;
  const char *s;
  fp_writer_init(&w);
  ck_assert_int_eq(FP_PACK_LIST(&w, 1, 2u, 3.5, "four"), 0);
  ck_assert_int_eq(FP_PACK_LIST(&w, (short)5), 0);
  ck_assert_int_eq(fp_values_count(w.data, w.len, NULL), 0);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_read_list(&r, &count), 0);
  ck_assert_uint_eq(count, 4);
  ck_assert_int_eq(read_i(&r), 1);
  ck_assert_int_eq(read_i(&r), 2);
  ck_assert(read_d(&r) == 3.5);
  ck_assert_int_eq(fp_read_str(&r, &s, NULL), 0);
  ck_assert_str_eq(s, "four");
  ck_assert_int_eq(fp_read_list(&r, &count), 0);
  ck_assert_uint_eq(count, 1);
  ck_assert_int_eq(read_i(&r), 5);
  ck_assert(fp_reader_at_end(&r));
  fp_writer_free(&w);
}
END_TEST

START_TEST(pack_takes_eight_values) {
  fp_writer w;
  fp_reader r;
  fp_writer_init(&w);
  ck_assert_int_eq(FP_PACK(&w, 1, 2, 3, 4, 5, 6, 7, 8), 0);
  fp_reader_init(&r, w.data, w.len);
  for (int64_t k = 1; k <= 8; k++)
    ck_assert_int_eq(read_i(&r), k);
  ck_assert(fp_reader_at_end(&r));
  fp_writer_free(&w);
}
END_TEST

START_TEST(pack_returns_the_sticky_error_and_adds_nothing) {
  fp_writer w;
  size_t len;
  fp_writer_init(&w);
  ck_assert_int_eq(FP_PACK(&w, 1), 0);
  len = w.len;
  /* A list end without a list makes the writer's error sticky. */
  ck_assert_int_eq(fp_write_list_end(&w), FP_EINVAL);
  ck_assert_int_eq(FP_PACK(&w, 2, "x"), FP_EINVAL);
  ck_assert_int_eq(FP_PACK_LIST(&w, 3), FP_EINVAL);
  ck_assert_uint_eq(w.len, len);
  fp_writer_free(&w);
}
END_TEST

START_TEST(single_argument_converters_with_a_format) {
  fp_writer w;
  fp_reader r;
  uint32_t count;
  int b;
  const char *s;
  unsigned char small = 200;
  int whole = 3;
  char name[] = "n";
  fp_writer_init(&w);
  ck_assert_int_eq(fp_pack(&w, "[i d ? ? s] b", FP_I(small), FP_D(whole),
                           FP_B(5), FP_B(0), FP_S(name), "raw", (size_t)3),
                   0);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(fp_read_list(&r, &count), 0);
  ck_assert_uint_eq(count, 5);
  ck_assert_int_eq(read_i(&r), 200);
  ck_assert(read_d(&r) == 3.0);
  ck_assert_int_eq(fp_read_bool(&r, &b), 0);
  ck_assert_int_eq(b, 1);
  ck_assert_int_eq(fp_read_bool(&r, &b), 0);
  ck_assert_int_eq(b, 0);
  ck_assert_int_eq(fp_read_str(&r, &s, NULL), 0);
  ck_assert_str_eq(s, "n");
  ck_assert_int_eq(fp_read_peek(&r), FP_BYTES);
  fp_writer_free(&w);
}
END_TEST

START_TEST(unpack_reads_by_pointer_type) {
  fp_writer w;
  fp_reader r;
  int64_t i = 0;
  double d = 0;
  const char *s = NULL;
  fp_writer_init(&w);
  ck_assert_int_eq(FP_PACK(&w, -9, 0.5, "str"), 0);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(FP_UNPACK(&r, &i, &d, &s), 0);
  ck_assert_int_eq(i, -9);
  ck_assert(d == 0.5);
  ck_assert_str_eq(s, "str");
  ck_assert(fp_reader_at_end(&r));
  fp_writer_free(&w);
}
END_TEST

START_TEST(unpack_wrong_value_type_fails_and_keeps_the_reader) {
  fp_writer w;
  fp_reader r;
  int64_t i = 77;
  double d = 0;
  fp_writer_init(&w);
  ck_assert_int_eq(FP_PACK(&w, 1.5, 2), 0);
  fp_reader_init(&r, w.data, w.len);
  ck_assert_int_eq(FP_UNPACK(&r, &i, &d), FP_ETYPE);
  ck_assert_uint_eq(r.pos, 0);
  ck_assert_int_eq(i, 77); /* all or nothing: nothing stored */
  ck_assert_int_eq(FP_UNPACK(&r, &d, &i), 0);
  ck_assert(d == 1.5);
  ck_assert_int_eq(i, 2);
  fp_writer_free(&w);
}
END_TEST

/* ---- FP_MAP over typed arrays ------------------------------------------ */

/* 12-byte input, 24-byte output: sizes a hand-written call could swap. */
typedef struct point {
  int32_t x, y, z;
} point;

typedef struct stats {
  int64_t sum;
  double norm2;
  int64_t index;
} stats;

static int t_point_stats(const void *in, void *out) {
  const point *p = in;
  stats *s = out;
  s->sum = (int64_t)p->x + p->y + p->z;
  s->norm2 = (double)p->x * p->x + (double)p->y * p->y + (double)p->z * p->z;
  s->index = fp_task_index();
  return 0;
}

static int t_fail_negative(const void *in, void *out) {
  const point *p = in;
  if (p->x < 0)
    return fp_task_fail("negative x %d", (int)p->x);
  return t_point_stats(in, out);
}

static fp_pool *new_pool(int n) {
  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  o.processes = n;
  int rc = fp_pool_new(&p, &o);
  ck_assert_msg(rc == 0, "fp_pool_new: %s (%s)", fp_err_name(rc),
                fp_last_error());
  return p;
}

START_TEST(map_takes_element_sizes_from_the_arrays) {
  enum { N = 1000 };
  point in[N];
  stats out[N];
  fp_pool *pool = new_pool(2);
  for (int k = 0; k < N; k++)
    in[k] = (point){k, -2 * k, 3};
  memset(out, 0, sizeof out);
  ck_assert_int_eq(FP_MAP(pool, t_point_stats, in, N, out, NULL), 0);
  for (int k = 0; k < N; k++) {
    ck_assert_int_eq(out[k].sum, 3 - k);
    ck_assert(out[k].norm2 == 5.0 * k * k + 9.0);
    ck_assert_int_eq(out[k].index, k);
  }
  fp_pool_free(pool);
}
END_TEST

START_TEST(map_with_pointers_evaluates_them_once) {
  enum { N = 64 };
  point *in = calloc(N + 1, sizeof *in);
  stats *out = calloc(N, sizeof *out);
  const point *cursor = in;
  fp_pool *pool = new_pool(2);
  ck_assert_ptr_nonnull(in);
  ck_assert_ptr_nonnull(out);
  for (int k = 0; k <= N; k++)
    in[k] = (point){k, k, k};
  /* cursor++ is evaluated once: the map starts at in[0]. */
  ck_assert_int_eq(FP_MAP(pool, t_point_stats, cursor++, N, out, NULL), 0);
  ck_assert_ptr_eq(cursor, in + 1);
  for (int k = 0; k < N; k++)
    ck_assert_int_eq(out[k].sum, 3 * k);
  fp_pool_free(pool);
  free(in);
  free(out);
}
END_TEST

START_TEST(map_empty_and_failing_items) {
  point in[4] = {{1, 1, 1}, {-1, 0, 0}, {2, 2, 2}, {-3, 0, 0}};
  stats out[4];
  fp_pool *pool = new_pool(1);
  ck_assert_int_eq(FP_MAP(pool, t_point_stats, in, 0, out, NULL), 0);
  memset(out, 0, sizeof out);
  ck_assert_int_eq(FP_MAP(pool, t_fail_negative, in, 4, out, NULL), FP_ETASK);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "negative x -1"));
  ck_assert_int_eq(out[0].sum, 3); /* the other items still ran */
  ck_assert_int_eq(out[2].sum, 6);
  fp_pool_free(pool);
}
END_TEST

START_TEST(map_async_takes_element_sizes_from_the_arrays) {
  point in[3] = {{1, 2, 3}, {4, 5, 6}, {7, 8, 9}};
  stats out[3];
  fp_result *res = NULL;
  fp_pool *pool = new_pool(2);
  ck_assert_int_eq(FP_MAP_ASYNC(pool, t_point_stats, in, 3, out, NULL, &res),
                   0);
  ck_assert_int_eq(fp_result_get(res, 30), 0);
  ck_assert_int_eq(out[0].sum, 6);
  ck_assert_int_eq(out[1].sum, 15);
  ck_assert_int_eq(out[2].sum, 24);
  fp_result_free(res);
  fp_pool_free(pool);
}
END_TEST

static int t_add(fp_reader *args, fp_writer *out) {
  int64_t a, b;
  int rc = FP_UNPACK(args, &a, &b);
  return rc < 0 ? rc : FP_PACK(out, a + b);
}

START_TEST(starmap_over_packed_tuples) {
  fp_writer items, out;
  fp_reader r;
  fp_pool *pool = new_pool(2);
  fp_writer_init(&items);
  fp_writer_init(&out);
  for (int k = 0; k < 100; k++) /* plain ints: converted by the macro */
    ck_assert_int_eq(FP_PACK_LIST(&items, k, 1000 * k), 0);
  ck_assert_int_eq(fp_pool_starmap(pool, t_add, &items, &out, NULL), 0);
  fp_reader_init(&r, out.data, out.len);
  for (int k = 0; k < 100; k++)
    ck_assert_int_eq(read_i(&r), 1001 * k);
  fp_writer_free(&items);
  fp_writer_free(&out);
  fp_pool_free(pool);
}
END_TEST

Suite *typed_suite(void) {
  Suite *s = suite_create("typed");
  TCase *tc = tcase_create("pack");
  /* Check's default is 4 s; a loaded machine (an ASan run beside other
   * work) took that long to run a forked case at all. */
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, pack_converts_every_integer_type_to_int64);
  tcase_add_test(tc, pack_floats_strings_and_bools_by_type);
  tcase_add_test(tc, bool_of_a_wide_integer_is_its_truth);
  tcase_add_test(tc, pack_equals_the_explicit_format);
  tcase_add_test(tc, pack_evaluates_each_argument_once);
  tcase_add_test(tc, pack_list_writes_one_tuple);
  tcase_add_test(tc, pack_takes_eight_values);
  tcase_add_test(tc, pack_returns_the_sticky_error_and_adds_nothing);
  tcase_add_test(tc, single_argument_converters_with_a_format);
  tcase_add_test(tc, unpack_reads_by_pointer_type);
  tcase_add_test(tc, unpack_wrong_value_type_fails_and_keeps_the_reader);
  suite_add_tcase(s, tc);

  tc = tcase_create("map");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, map_takes_element_sizes_from_the_arrays);
  tcase_add_test(tc, map_with_pointers_evaluates_them_once);
  tcase_add_test(tc, map_empty_and_failing_items);
  tcase_add_test(tc, map_async_takes_element_sizes_from_the_arrays);
  tcase_add_test(tc, starmap_over_packed_tuples);
  suite_add_tcase(s, tc);
  return s;
}
