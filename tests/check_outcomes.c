/* SPDX-License-Identifier: MIT */
/* check_outcomes.c - telling outcomes apart: "not ready yet" versus "this
 * item failed", per-item messages, and maps that keep their good results
 * (fp_call_opts.item_status).
 *
 * Every test makes its own pool; the checked teardown asserts no child is
 * left. Nothing sleeps to synchronise: a task that must still be running
 * blocks in pause() until its time limit kills it.
 */
#include "forkpool.h"
#include "testutil.h"

#include <check.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static fp_pool *new_pool(int n) {
  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  o.processes = n;
  int rc = fp_pool_new(&p, &o);
  ck_assert_msg(rc == 0, "fp_pool_new: %s (%s)", fp_err_name(rc),
                fp_last_error());
  return p;
}

/* Blocks until killed by its time limit. */
static int t_block(fp_reader *args, fp_writer *out) {
  (void)args;
  (void)out;
  for (;;)
    pause();
  return 0;
}

/* Returns its int argument; fails on odd values above 10. */
static int t_odd_fails(fp_reader *args, fp_writer *out) {
  int64_t v;
  int rc = fp_read_int(args, &v);
  if (rc != 0)
    return rc;
  if (v % 2 == 1 && v > 10)
    return fp_task_fail("odd value %lld", (long long)v);
  return fp_write_int(out, v * 10);
}

/* out = in + 1; item 5 kills its worker. */
static int t_crash_at_5(const void *in, void *out) {
  int64_t v = *(const int64_t *)in;
  if (v == 5)
    raise(SIGSEGV);
  *(int64_t *)out = v + 1;
  return 0;
}

START_TEST(iter_wait_expiry_is_eagain_item_time_limit_is_etimedout) {
  fp_pool *p = new_pool(1);
  fp_writer items;
  fp_writer_init(&items);
  fp_write_int(&items, 1);
  fp_call_opts o = {0};
  o.timeout = 0.2;
  fp_iter *it = NULL;
  ck_assert_int_eq(fp_pool_imap(p, (fp_task_fn)t_block, &items, &o, &it), 0);
  fp_reader rd;
  /* The item blocks: nothing can be ready yet. */
  ck_assert_int_eq(fp_iter_next(it, &rd, 0), FP_EAGAIN);
  ck_assert_int_eq(fp_iter_next(it, &rd, 0.001), FP_EAGAIN);
  /* Then its time limit kills it: that item's own outcome. */
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_ETIMEDOUT);
  ck_assert_ptr_nonnull(strstr(fp_iter_error(it), "time limit"));
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  ck_assert_int_eq(fp_iter_next(it, &rd, 0.0 / 0.0), FP_EINVAL); /* NaN */
  fp_iter_free(it);
  fp_writer_free(&items);
  fp_pool_free(p);
}
END_TEST

START_TEST(iter_message_belongs_to_its_item_and_loop_goes_on) {
  fp_pool *p = new_pool(2);
  fp_writer items;
  fp_writer_init(&items);
  for (int64_t v = 10; v < 16; v++) /* 11, 13 and 15 fail */
    fp_write_int(&items, v);
  fp_iter *it = NULL;
  ck_assert_int_eq(
      fp_pool_imap(p, (fp_task_fn)t_odd_fails, &items, NULL, &it), 0);
  fp_reader rd;
  int rc, good = 0, bad = 0;
  /* The documented loop: a failed item is reported, then the next call
   * goes on with the following item, until FP_EOF. */
  while ((rc = fp_iter_next(it, &rd, FP_FOREVER)) != FP_EOF) {
    if (rc == 0) {
      ck_assert_str_eq(fp_iter_error(it), "");
      good++;
    } else {
      ck_assert_int_eq(rc, FP_ETASK);
      ck_assert_ptr_nonnull(strstr(fp_iter_error(it), "odd value"));
      bad++;
    }
  }
  ck_assert_int_eq(good, 3);
  ck_assert_int_eq(bad, 3);
  fp_iter_free(it);
  fp_writer_free(&items);
  fp_pool_free(p);
}
END_TEST

START_TEST(map_values_item_status_keeps_good_results) {
  fp_pool *p = new_pool(2);
  enum { N = 20 };
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  for (int64_t v = 0; v < N; v++)
    fp_write_int(&items, v);
  int status[N];
  memset(status, 0x55, sizeof(status));
  fp_call_opts o = {0};
  o.item_status = status;
  o.chunksize = 3;
  ck_assert_int_eq(
      fp_pool_map_values(p, (fp_task_fn)t_odd_fails, &items, &out, &o), 0);
  fp_reader rd;
  fp_reader_init(&rd, out.data, out.len);
  for (int64_t v = 0; v < N; v++) {
    int bad = v % 2 == 1 && v > 10;
    ck_assert_int_eq(status[v], bad ? FP_ETASK : 0);
    if (bad) {
      ck_assert_int_eq(fp_read_nil(&rd), 0);
    } else {
      int64_t got;
      ck_assert_int_eq(fp_read_int(&rd, &got), 0);
      ck_assert_int_eq(got, v * 10);
    }
  }
  ck_assert(fp_reader_at_end(&rd));
  /* Without item_status the same map fails and appends nothing. */
  size_t len = out.len;
  ck_assert_int_eq(
      fp_pool_map_values(p, (fp_task_fn)t_odd_fails, &items, &out, NULL),
      FP_ETASK);
  ck_assert_uint_eq(out.len, len);
  fp_writer_free(&items);
  fp_writer_free(&out);
  fp_pool_free(p);
}
END_TEST

START_TEST(map_item_status_marks_items_lost_with_a_worker) {
  fp_pool *p = new_pool(2);
  enum { N = 40 };
  int64_t in[N], out[N];
  int status[N];
  for (int i = 0; i < N; i++)
    in[i] = i;
  fp_call_opts o = {0};
  o.item_status = status;
  o.chunksize = 4; /* items 4..7 travel with item 5 */
  ck_assert_int_eq(fp_pool_map(p, t_crash_at_5, in, N, sizeof(in[0]), out,
                               sizeof(out[0]), &o),
                   0);
  for (int i = 0; i < N; i++) {
    if (i >= 4 && i < 8) {
      ck_assert_int_eq(status[i], FP_EWORKER);
    } else {
      ck_assert_int_eq(status[i], 0);
      ck_assert_int_eq(out[i], i + 1);
    }
  }
  fp_pool_free(p);
}
END_TEST

START_TEST(map_async_item_status_and_error_names) {
  fp_pool *p = new_pool(1);
  int64_t in[3] = {1, 2, 3}, out[3];
  int status[3] = {7, 7, 7};
  fp_call_opts o = {0};
  o.item_status = status;
  fp_result *r = NULL;
  ck_assert_int_eq(fp_pool_map_async(p, t_crash_at_5, in, 3, sizeof(in[0]),
                                     out, sizeof(out[0]), &o, &r),
                   0);
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  ck_assert_int_eq(status[0] | status[1] | status[2], 0);
  fp_result_free(r);
  ck_assert_str_eq(fp_err_name(FP_EAGAIN), "FP_EAGAIN");
  ck_assert_str_eq(fp_err_name(0), "FP_OK");
  fp_pool_free(p);
}
END_TEST

Suite *outcomes_suite(void) {
  Suite *s = suite_create("outcomes");
  TCase *tc = tcase_create("outcomes");
  tcase_set_timeout(tc, 60);
  tcase_add_checked_fixture(tc, NULL, fp_test_no_children);
  tcase_add_test(tc, iter_wait_expiry_is_eagain_item_time_limit_is_etimedout);
  tcase_add_test(tc, iter_message_belongs_to_its_item_and_loop_goes_on);
  tcase_add_test(tc, map_values_item_status_keeps_good_results);
  tcase_add_test(tc, map_item_status_marks_items_lost_with_a_worker);
  tcase_add_test(tc, map_async_item_status_and_error_names);
  suite_add_tcase(s, tc);
  return s;
}
