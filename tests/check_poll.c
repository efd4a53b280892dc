/* SPDX-License-Identifier: MIT */
/* check_poll.c - a waiting caller that drains the link itself (link.h,
 * poll; sched.c fp__sched_poll_leave; result.c).
 *
 * White-box cases hold the pool's lock while a worker publishes a result,
 * so the pool thread cannot take it, then poll on the test's thread: a
 * result without callbacks is ready when the poll returns (completed here,
 * once), a result with callbacks is left to the pool thread, whose
 * callback runs before the waiter wakes. Black-box cases run many waiters
 * at once, with and without callbacks, and check every result and
 * callback exactly once, whichever thread happened to complete them.
 */
#include "pool/pool_int.h"
#include "testutil.h"

#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

static void teardown(void) {
  fp_test_no_children();
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

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int t_ident(fp_reader *args, fp_writer *out) {
  return fp_copy_value(out, args);
}

static int t_fail(fp_reader *args, fp_writer *out) {
  (void)args;
  (void)out;
  return fp_task_fail("failed on purpose");
}

static int64_t value_of(fp_result *r) {
  fp_reader rd;
  int64_t v = -1;
  ck_assert_int_eq(fp_result_value(r, &rd), 0);
  ck_assert_int_eq(fp_read_int(&rd, &v), 0);
  return v;
}

/* Submits ident(v) while holding the pool's lock, then keeps holding it
 * until the worker's result waits in its ring: nobody but this thread can
 * take it then. Returns with pool->mu held. */
static void submit_and_hold(fp_pool *p, int64_t v, const fp_call_opts *co,
                            fp_result **r) {
  fp_writer a;
  fp_writer_init(&a);
  fp_write_int(&a, v);
  ck_assert_int_eq(fp_pool_apply_async(p, t_ident, &a, co, r), 0);
  fp_writer_free(&a);
  fp__pool_lock(p);
  double until = now_s() + 20;
  /* Not published yet; or the pool thread took it before we locked (then
   * the result is ready, or about to be: the caller checks). */
  while (p->link->ops->spin_check(p->link) != 1 && (*r)->job != NULL)
    ck_assert_msg(now_s() < until, "the worker never published");
}

START_TEST(poll_completes_plain_result_on_caller_exactly_once) {
  fp_pool *p = new_pool(1);
  ck_assert_ptr_nonnull(p->link->ops->poll);
  int done_here = 0;
  for (int64_t i = 0; i < 50; i++) {
    fp_result *r;
    submit_and_hold(p, i, NULL, &r);
    if (r->job != NULL) {
      /* Lock held, result in the ring: this thread completes it. */
      ck_assert_int_eq(fp__sched_poll_leave(p), 1);
      ck_assert_int_eq(atomic_load(&r->ready), 1);
      done_here++;
    } else {
      fp__pool_unlock(p);
    }
    ck_assert_int_eq(fp_result_get(r, 10), 0);
    ck_assert_int_eq(value_of(r), i);
    fp_result_free(r);
  }
  ck_assert_int_gt(done_here, 0);
  fp_pool_free(p);
}
END_TEST

static atomic_int g_cb_runs;
static atomic_int g_cb_on_pool_thread;
static fp_pool *g_pool;

static void cb_note(fp_result *r, void *arg) {
  (void)r;
  atomic_fetch_add((atomic_int *)arg, 1);
  atomic_fetch_add(&g_cb_runs, 1);
  if (pthread_equal(pthread_self(), g_pool->thread))
    atomic_fetch_add(&g_cb_on_pool_thread, 1);
}

START_TEST(poll_leaves_callback_result_to_pool_thread) {
  fp_pool *p = new_pool(1);
  g_pool = p;
  atomic_store(&g_cb_runs, 0);
  atomic_store(&g_cb_on_pool_thread, 0);
  for (int64_t i = 0; i < 20; i++) {
    atomic_int mine = 0;
    fp_call_opts co = {0};
    co.callback = cb_note;
    co.arg = &mine;
    fp_result *r;
    submit_and_hold(p, i, &co, &r);
    fp__sched_poll_leave(p); /* the result's callback stays for the pool
                                thread, which it wakes */
    /* Whoever completed it, the callback ran before the waiter woke. */
    ck_assert_int_eq(fp_result_get(r, 10), 0);
    ck_assert_int_eq(atomic_load(&mine), 1);
    ck_assert_int_eq(value_of(r), i);
    fp_result_free(r);
  }
  ck_assert_int_eq(atomic_load(&g_cb_runs), 20);
  ck_assert_int_eq(atomic_load(&g_cb_on_pool_thread), 20);
  fp_pool_free(p);
}
END_TEST

/* ---- many waiters at once ------------------------------------------------ */

enum { NTHREADS = 4, PER_THREAD = 400 };

typedef struct waiter_arg {
  fp_pool *pool;
  int id;
  int bad;
} waiter_arg;

static atomic_int g_callbacks_seen;

static void cb_count(fp_result *r, void *arg) {
  (void)r;
  atomic_fetch_add((atomic_int *)arg, 1);
  atomic_fetch_add(&g_callbacks_seen, 1);
  if (pthread_equal(pthread_self(), g_pool->thread))
    atomic_fetch_add(&g_cb_on_pool_thread, 1);
}

/* One waiter: odd ids use callbacks (checked set before get returns),
 * even ids none; every third call blocks (fp_pool_apply), the others
 * go async then get; every seventh fails on purpose. */
static void *waiter(void *p) {
  waiter_arg *w = p;
  fp_writer a, out;
  fp_writer_init(&a);
  fp_writer_init(&out);
  for (int i = 0; i < PER_THREAD && !w->bad; i++) {
    int64_t v = (int64_t)w->id * 1000000 + i;
    int fail = i % 7 == 6;
    fp_writer_reset(&a);
    fp_writer_reset(&out);
    fp_write_int(&a, v);
    if (i % 3 == 0 && !fail) {
      fp_reader rd;
      int64_t got = -1;
      if (fp_pool_apply(w->pool, t_ident, &a, &out) != 0)
        w->bad = 1;
      fp_reader_init(&rd, out.data, out.len);
      if (fp_read_int(&rd, &got) != 0 || got != v)
        w->bad = 2;
      continue;
    }
    atomic_int mine = 0;
    fp_call_opts co = {0};
    if (w->id % 2) {
      co.callback = cb_count;
      co.error_callback = cb_count;
      co.arg = &mine;
    }
    fp_result *r;
    if (fp_pool_apply_async(w->pool, fail ? t_fail : t_ident, &a, &co,
                            &r) != 0) {
      w->bad = 3;
      break;
    }
    int rc = fp_result_get(r, 30);
    if (fail ? rc != FP_ETASK : rc != 0)
      w->bad = 4;
    else if (!fail && value_of(r) != v)
      w->bad = 5;
    if (w->id % 2 && atomic_load(&mine) != 1)
      w->bad = 6; /* the callback ran once, before get returned */
    fp_result_free(r);
  }
  fp_writer_free(&a);
  fp_writer_free(&out);
  return NULL;
}

START_TEST(many_waiters_get_every_result_and_callback_once) {
  fp_pool *p = new_pool(2);
  g_pool = p;
  atomic_store(&g_callbacks_seen, 0);
  atomic_store(&g_cb_on_pool_thread, 0);
  pthread_t th[NTHREADS];
  waiter_arg wa[NTHREADS];
  for (int t = 0; t < NTHREADS; t++) {
    wa[t] = (waiter_arg){p, t, 0};
    ck_assert_int_eq(pthread_create(&th[t], NULL, waiter, &wa[t]), 0);
  }
  for (int t = 0; t < NTHREADS; t++) {
    pthread_join(th[t], NULL);
    ck_assert_msg(wa[t].bad == 0, "waiter %d failed (%d)", t, wa[t].bad);
  }
  int per = 0;
  for (int i = 0; i < PER_THREAD; i++)
    per += !(i % 3 == 0 && i % 7 != 6);
  ck_assert_int_eq(atomic_load(&g_callbacks_seen), per * (NTHREADS / 2));
  ck_assert_int_eq(atomic_load(&g_cb_on_pool_thread),
                   per * (NTHREADS / 2));
  fp_pool_free(p);
}
END_TEST

/* A waiter still polling when another thread frees the pool: the pool's
 * join waits for it, and its result (failed by the terminate, or done)
 * stays readable after the pool is gone. */
static void *late_waiter(void *p) {
  fp_result *r = p;
  fp_result_wait(r, 30);
  return NULL;
}

START_TEST(results_outlive_pool_freed_under_a_poller) {
  for (int k = 0; k < 20; k++) {
    fp_pool *p = new_pool(2);
    fp_writer a;
    fp_writer_init(&a);
    fp_write_int(&a, k);
    fp_result *r;
    ck_assert_int_eq(fp_pool_apply_async(p, t_ident, &a, NULL, &r), 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, late_waiter, r), 0);
    fp_pool_free(p);
    pthread_join(th, NULL);
    int rc = fp_result_get(r, 0);
    ck_assert(rc == 0 || rc == FP_ECANCELED);
    if (rc == 0)
      ck_assert_int_eq(value_of(r), k);
    fp_result_free(r);
    fp_writer_free(&a);
  }
}
END_TEST

Suite *poll_suite(void) {
  Suite *s = suite_create("poll");
  TCase *tc = tcase_create("caller_side");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, poll_completes_plain_result_on_caller_exactly_once);
  tcase_add_test(tc, poll_leaves_callback_result_to_pool_thread);
  tcase_add_test(tc, many_waiters_get_every_result_and_callback_once);
  tcase_add_test(tc, results_outlive_pool_freed_under_a_poller);
  suite_add_tcase(s, tc);
  return s;
}
