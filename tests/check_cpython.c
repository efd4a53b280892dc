/* SPDX-License-Identifier: MIT */
/* check_cpython.c - CPython's multiprocessing Pool and Manager promises,
 * ported to forkpool.
 *
 * Each case is named after the test of CPython's
 * Lib/test/_test_multiprocessing.py it ports (_TestPool,
 * _TestPoolWorkerErrors, _TestPoolWorkerLifetime, _TestContainers,
 * _TestValue, _TestArray, _TestLock, TestSyncManagerTypes) and checks the
 * same promise through forkpool's C API. Where docs/python-to-c.md or
 * include/forkpool.h document a deliberate difference, the case checks the
 * documented behaviour and says so; otherwise it asserts what CPython does.
 *
 * Every case builds its own manager (before its pool, as the docs require)
 * and its own pool; the teardown checks that no child is left. Waits are
 * bounded; no case sleeps to synchronise: a task that must stay running
 * blocks on a pipe the test controls.
 */
#include "forkpool.h"
#include "testutil.h"

#include <check.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- fixtures and helpers ------------------------------------------------ */

static fp_manager *g_mgr;
static int g_gate[2] = {-1, -1}; /* tasks block reading g_gate[0] */

static void setup(void) {
  fp_manager_opts o = {.arena_size = 16u << 20};
  ck_assert_int_eq(fp_manager_new(&g_mgr, &o), 0);
  ck_assert_int_eq(pipe(g_gate), 0);
}

static void teardown(void) {
  fp_test_no_children();
  fp_manager_free(g_mgr);
  g_mgr = NULL;
  close(g_gate[0]);
  close(g_gate[1]);
}

/* A pool with options o, which must start. */
static fp_pool *pool_with(fp_pool_opts o) {
  fp_pool *p = NULL;
  int rc = fp_pool_new(&p, &o);
  ck_assert_msg(rc == 0, "fp_pool_new: %s (%s)", fp_err_name(rc),
                fp_last_error());
  return p;
}

static fp_pool *pool_n(int n) {
  return pool_with((fp_pool_opts){.processes = n});
}

/* apply_async(fn, (i,)) for i in range(n), into r[0..n). */
static void submit_ints(fp_pool *p, fp_task_fn fn, int n, fp_result **r) {
  fp_writer a;
  fp_writer_init(&a);
  for (int i = 0; i < n; i++) {
    fp_writer_reset(&a);
    ck_assert_int_eq(fp_write_int(&a, i), 0);
    ck_assert_int_eq(fp_pool_apply_async(p, fn, &a, NULL, &r[i]), 0);
  }
  fp_writer_free(&a);
}

static void write_range(fp_writer *w, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    ck_assert_int_eq(fp_write_int(w, i), 0);
}

/* Reads n ints from rd and checks each equals f(i). */
static void expect_squares(fp_reader *rd, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    int64_t v = -1;
    ck_assert_int_eq(fp_read_int(rd, &v), 0);
    ck_assert_int_eq(v, i * i);
  }
  ck_assert(fp_reader_at_end(rd));
}

/* ---- tasks --------------------------------------------------------------- */

static int t_sqr(fp_reader *args, fp_writer *out) {
  int64_t x;
  int rc = fp_read_int(args, &x);
  return rc ? rc : fp_write_int(out, x * x);
}

static int e_sqr(const void *in, void *out) {
  int64_t x = *(const int64_t *)in;
  *(int64_t *)out = x * x;
  return 0;
}

static int t_mul(fp_reader *args, fp_writer *out) {
  int64_t a, b;
  int rc = fp_unpack(args, "i i", &a, &b);
  return rc ? rc : fp_write_int(out, a * b);
}

/* Python's int(s): fails like ValueError on a non-number. */
static int t_int(fp_reader *args, fp_writer *out) {
  const char *s;
  int rc = fp_read_str(args, &s, NULL);
  if (rc)
    return rc;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (*s == '\0' || *end != '\0')
    return fp_task_fail("invalid literal for int(): '%s'", s);
  return fp_write_int(out, v);
}

/* Blocks until the test writes to g_gate[1], then squares. */
static int t_gated_sqr(fp_reader *args, fp_writer *out) {
  int64_t x;
  char c;
  int rc = fp_read_int(args, &x);
  if (rc)
    return rc;
  while (read(g_gate[0], &c, 1) < 0 && errno == EINTR)
    ;
  return fp_write_int(out, x * x);
}

static int e_gated(const void *in, void *out) {
  char c;
  (void)in;
  (void)out;
  while (read(g_gate[0], &c, 1) < 0 && errno == EINTR)
    ;
  return 0;
}

static int t_fail_traceback(fp_reader *args, fp_writer *out) {
  return fp_task_fail("RuntimeError(123) # some comment");
}

static int t_raise_edom(fp_reader *args, fp_writer *out) {
  return -EDOM; /* a task's own error code: its "exception type" */
}

static int t_raise_keyerror(fp_reader *args, fp_writer *out) {
  return fp_task_fail("KeyError('key')");
}

/* A result that cannot be encoded: two values instead of one. */
static int t_two_values(fp_reader *args, fp_writer *out) {
  fp_write_int(out, 1);
  return fp_write_int(out, 2);
}

/* A result larger than the pool's max_frame (4096 in that test). */
static int t_big_result(fp_reader *args, fp_writer *out) {
  static char big[16384];
  return fp_write_bytes(out, big, sizeof big);
}

static int t_sqr_pid(fp_reader *args, fp_writer *out) {
  int64_t x;
  int rc = fp_read_int(args, &x);
  return rc ? rc : fp_pack(out, "[i i]", x * x, (int64_t)getpid());
}

static int t_slow_sqr(fp_reader *args, fp_writer *out) {
  fp_test_spin_us(20000);
  return t_sqr(args, out);
}

static fp_counter *g_ran; /* items that ran to their end */

/* raise_large_valuerror: item i spins i * 150 ms, counts, then fails with
 * a message of 1 MiB (the library keeps its first 511 bytes). */
static int t_large_valueerror(fp_reader *args, fp_writer *out) {
  static char msg[1 << 20];
  int64_t x;
  fp_read_int(args, &x);
  fp_test_spin_us((long)x * 150000);
  memset(msg, 'x', sizeof msg - 1);
  fp_counter_add(g_ran, 1, NULL);
  return fp_task_fail("ValueError(%s)", msg);
}

static int t_die(fp_reader *args, fp_writer *out) {
  raise(SIGKILL);
  return 0;
}

/* Producer: exception_throwing_generator(total, when). */
typedef struct gen {
  int64_t total, when, next;
} gen;

static int gen_produce(void *arg, fp_writer *item) {
  gen *g = arg;
  if (g->when == -1 || g->next == g->when)
    return -EDOM; /* SayWhenError */
  if (g->next == g->total)
    return 0;
  return fp_write_int(item, g->next++) == 0 ? 1 : FP_ENOMEM;
}

/* ---- _TestPool ----------------------------------------------------------- */

/* apply(sqr, (5,)) returns 25; the result value is appended to out.
 * CPython: _TestPool.test_apply. */
START_TEST(test_apply) {
  fp_pool *p = pool_n(4);
  fp_writer a, out;
  fp_writer_init(&a);
  fp_writer_init(&out);
  fp_write_int(&a, 5);
  ck_assert_int_eq(fp_pool_apply(p, t_sqr, &a, &out), 0);
  fp_reader rd;
  int64_t v;
  fp_reader_init(&rd, out.data, out.len);
  ck_assert_int_eq(fp_read_int(&rd, &v), 0);
  ck_assert_int_eq(v, 25);
  ck_assert(fp_reader_at_end(&rd));
  ck_assert_str_eq(fp_last_error(), "");
  fp_writer_free(&a);
  fp_writer_free(&out);
  fp_pool_free(p);
}
END_TEST

/* map(sqr, range(10)) and map(sqr, range(100), chunksize=20) keep order,
 * for the fixed-size and the codec map. CPython: _TestPool.test_map. */
START_TEST(test_map) {
  fp_pool *p = pool_n(4);
  int64_t in[100], out[100];
  for (int i = 0; i < 100; i++)
    in[i] = i;
  memset(out, 0xff, sizeof out);
  ck_assert_int_eq(FP_MAP(p, e_sqr, in, 10, out, NULL), 0);
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(out[i], (int64_t)i * i);
  fp_call_opts co = {0};
  co.chunksize = 20;
  ck_assert_int_eq(FP_MAP(p, e_sqr, in, 100, out, &co), 0);
  for (int i = 0; i < 100; i++)
    ck_assert_int_eq(out[i], (int64_t)i * i);

  fp_writer items, res;
  fp_writer_init(&items);
  fp_writer_init(&res);
  write_range(&items, 10);
  ck_assert_int_eq(fp_pool_map_values(p, t_sqr, &items, &res, NULL), 0);
  fp_reader rd;
  fp_reader_init(&rd, res.data, res.len);
  expect_squares(&rd, 10);
  fp_writer_reset(&items);
  fp_writer_reset(&res);
  write_range(&items, 100);
  ck_assert_int_eq(fp_pool_map_values(p, t_sqr, &items, &res, &co), 0);
  fp_reader_init(&rd, res.data, res.len);
  expect_squares(&rd, 100);
  fp_writer_free(&items);
  fp_writer_free(&res);
  fp_pool_free(p);
}
END_TEST

static void write_pairs(fp_writer *w, int n) {
  for (int i = 0; i < n; i++)
    ck_assert_int_eq(FP_PACK_LIST(w, i, n - 1 - i), 0);
}

static void expect_products(fp_reader *rd, int n) {
  for (int i = 0; i < n; i++) {
    int64_t v;
    ck_assert_int_eq(fp_read_int(rd, &v), 0);
    ck_assert_int_eq(v, (int64_t)i * (n - 1 - i));
  }
  ck_assert(fp_reader_at_end(rd));
}

/* starmap(mul, zip(range(n), reversed(range(n)))) for n = 10, and n = 100
 * with chunksize=20. CPython: _TestPool.test_starmap. */
START_TEST(test_starmap) {
  fp_pool *p = pool_n(4);
  fp_writer items, res;
  fp_reader rd;
  fp_writer_init(&items);
  fp_writer_init(&res);
  write_pairs(&items, 10);
  ck_assert_int_eq(fp_pool_starmap(p, t_mul, &items, &res, NULL), 0);
  fp_reader_init(&rd, res.data, res.len);
  expect_products(&rd, 10);
  fp_writer_reset(&items);
  fp_writer_reset(&res);
  write_pairs(&items, 100);
  fp_call_opts co = {0};
  co.chunksize = 20;
  ck_assert_int_eq(fp_pool_starmap(p, t_mul, &items, &res, &co), 0);
  fp_reader_init(&rd, res.data, res.len);
  expect_products(&rd, 100);
  fp_writer_free(&items);
  fp_writer_free(&res);
  fp_pool_free(p);
}
END_TEST

/* starmap_async(mul, 100 pairs).get() in order.
 * CPython: _TestPool.test_starmap_async. */
START_TEST(test_starmap_async) {
  fp_pool *p = pool_n(4);
  fp_writer items;
  fp_writer_init(&items);
  write_pairs(&items, 100);
  fp_result *r;
  ck_assert_int_eq(fp_pool_starmap_async(p, t_mul, &items, NULL, &r), 0);
  fp_writer_free(&items); /* copied at the call */
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  fp_reader rd;
  ck_assert_int_eq(fp_result_value(r, &rd), 0);
  expect_products(&rd, 100);
  fp_result_free(r);
  fp_pool_free(p);
}
END_TEST

/* map_async(sqr, range(10)).get(), fixed-size and codec forms.
 * CPython: _TestPool.test_map_async. */
START_TEST(test_map_async) {
  fp_pool *p = pool_n(4);
  static int64_t in[10], out[10];
  for (int i = 0; i < 10; i++)
    in[i] = i;
  fp_result *r;
  ck_assert_int_eq(FP_MAP_ASYNC(p, e_sqr, in, 10, out, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(out[i], (int64_t)i * i);
  fp_result_free(r);
  fp_writer items;
  fp_writer_init(&items);
  write_range(&items, 10);
  ck_assert_int_eq(fp_pool_map_values_async(p, t_sqr, &items, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  fp_reader rd;
  ck_assert_int_eq(fp_result_value(r, &rd), 0);
  expect_squares(&rd, 10);
  fp_result_free(r);
  fp_writer_free(&items);
  fp_pool_free(p);
}
END_TEST

typedef struct calls {
  int ok, err;
  int64_t value;   /* the callback's first result value */
  int err_code;    /* the error callback's get() */
  char err_msg[128];
} calls;

static void cb_ok(fp_result *r, void *arg) {
  calls *c = arg;
  fp_reader rd;
  c->ok++;
  if (fp_result_value(r, &rd) == 0)
    fp_read_int(&rd, &c->value);
}

static void cb_err(fp_result *r, void *arg) {
  calls *c = arg;
  c->err++;
  c->err_code = fp_result_get(r, 0);
  const char *m = fp_result_error(r);
  snprintf(c->err_msg, sizeof c->err_msg, "%s", m ? m : "(null)");
}

/* map_async(int, ['1']) runs only callback, with [1]; map_async(int, ['a'])
 * runs only error_callback, with the ValueError.
 * CPython: _TestPool.test_map_async_callbacks. */
START_TEST(test_map_async_callbacks) {
  fp_pool *p = pool_n(4);
  calls c = {0};
  fp_call_opts co = {0};
  co.callback = cb_ok;
  co.error_callback = cb_err;
  co.arg = &c;
  fp_writer items;
  fp_writer_init(&items);
  fp_write_str(&items, "1");
  fp_result *r;
  ck_assert_int_eq(fp_pool_map_values_async(p, t_int, &items, &co, &r), 0);
  ck_assert_int_eq(fp_result_wait(r, 30), 0);
  ck_assert_int_eq(c.ok, 1); /* the callback ran before wait() returned */
  ck_assert_int_eq(c.err, 0);
  ck_assert_int_eq(c.value, 1);
  fp_result_free(r);
  fp_writer_reset(&items);
  fp_write_str(&items, "a");
  ck_assert_int_eq(fp_pool_map_values_async(p, t_int, &items, &co, &r), 0);
  ck_assert_int_eq(fp_result_wait(r, 30), 0);
  ck_assert_int_eq(c.ok, 1);
  ck_assert_int_eq(c.err, 1);
  ck_assert_int_eq(c.err_code, FP_ETASK);
  ck_assert_msg(strstr(c.err_msg, "invalid literal") != NULL, "%s",
                c.err_msg);
  ck_assert_int_eq(fp_result_successful(r), 0);
  fp_result_free(r);
  fp_writer_free(&items);
  fp_pool_free(p);
}
END_TEST

/* Arguments that cannot be encoded fail the call at once, with no hang,
 * no result and no callback, and the pool stays usable (C's "cannot
 * pickle": a writer in error, an open list, malformed bytes, an item over
 * max_frame). CPython: _TestPool.test_map_unplicklable. */
START_TEST(test_map_unplicklable) {
  fp_pool *p = pool_with((fp_pool_opts){.processes = 2, .max_frame = 4096});
  calls c = {0};
  fp_call_opts co = {0};
  co.callback = cb_ok;
  co.error_callback = cb_err;
  co.arg = &c;
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  fp_result *r = (fp_result *)1;

  fp_write_list_begin(&items); /* an open list */
  ck_assert_int_eq(fp_pool_map_values(p, t_sqr, &items, &out, NULL),
                   FP_EINVAL);
  ck_assert_int_eq(fp_pool_map_values_async(p, t_sqr, &items, &co, &r),
                   FP_EINVAL);
  ck_assert_ptr_null(r);
  fp_writer_reset(&items);
  static const unsigned char junk[] = {0x77, 1, 2};
  fp_writer_append(&items, junk, sizeof junk); /* not a codec value */
  ck_assert_int_eq(fp_pool_map_values(p, t_sqr, &items, &out, NULL),
                   FP_EPROTO);
  fp_writer_reset(&items);
  static char big[8192];
  fp_write_bytes(&items, big, sizeof big); /* over max_frame */
  r = (fp_result *)1;
  ck_assert_int_eq(fp_pool_map_values_async(p, t_sqr, &items, &co, &r),
                   FP_EMSGSIZE);
  ck_assert_ptr_null(r);
  ck_assert_int_eq(out.len, 0);

  /* still usable, and no callback ever ran for the refused calls */
  fp_writer_reset(&items);
  write_range(&items, 10);
  ck_assert_int_eq(fp_pool_map_values(p, t_sqr, &items, &out, NULL), 0);
  fp_reader rd;
  fp_reader_init(&rd, out.data, out.len);
  expect_squares(&rd, 10);
  ck_assert_int_eq(c.ok + c.err, 0);
  fp_writer_free(&items);
  fp_writer_free(&out);
  fp_pool_free(p);
}
END_TEST

/* map_async over an empty input with chunksize=1 is ready at once, not
 * stalled. CPython: _TestPool.test_map_chunksize. */
START_TEST(test_map_chunksize) {
  fp_pool *p = pool_n(4);
  fp_call_opts co = {0};
  co.chunksize = 1;
  fp_writer empty;
  fp_writer_init(&empty);
  fp_result *r;
  ck_assert_int_eq(fp_pool_map_values_async(p, t_sqr, &empty, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 0.1), 0);
  fp_reader rd;
  ck_assert_int_eq(fp_result_value(r, &rd), 0);
  ck_assert(fp_reader_at_end(&rd));
  fp_result_free(r);
  int64_t dummy = 0;
  ck_assert_int_eq(FP_MAP_ASYNC(p, e_sqr, &dummy, 0, &dummy, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 0.1), 0);
  fp_result_free(r);
  fp_pool_free(p);
}
END_TEST

/* apply_async(sqr, (7,)).get() == 49. CPython: _TestPool.test_async. */
START_TEST(test_async) {
  fp_pool *p = pool_n(4);
  fp_writer a;
  fp_writer_init(&a);
  fp_write_int(&a, 7);
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, t_slow_sqr, &a, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  fp_reader rd;
  int64_t v;
  ck_assert_int_eq(fp_result_value(r, &rd), 0);
  ck_assert_int_eq(fp_read_int(&rd, &v), 0);
  ck_assert_int_eq(v, 49);
  /* get() again gives the same outcome and value */
  ck_assert_int_eq(fp_result_get(r, 0), 0);
  ck_assert_int_eq(fp_result_value(r, &rd), 0);
  ck_assert_int_eq(fp_read_int(&rd, &v), 0);
  ck_assert_int_eq(v, 49);
  fp_result_free(r);
  fp_writer_free(&a);
  fp_pool_free(p);
}
END_TEST

/* get(timeout) on a running task times out (TimeoutError: FP_ETIMEDOUT)
 * and leaves the result usable; successful() before ready is an error
 * (ValueError: FP_EINVAL); ready() is false meanwhile.
 * CPython: _TestPool.test_async_timeout (+ AsyncResult.successful). */
START_TEST(test_async_timeout) {
  fp_pool *p = pool_n(3);
  fp_writer a;
  fp_writer_init(&a);
  fp_write_int(&a, 6);
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, t_gated_sqr, &a, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 0.1), FP_ETIMEDOUT);
  ck_assert_int_eq(fp_result_wait(r, 0.05), FP_ETIMEDOUT);
  ck_assert_int_eq(fp_result_ready(r), 0);
  ck_assert_int_eq(fp_result_successful(r), FP_EINVAL);
  fp_reader rd;
  ck_assert_int_eq(fp_result_value(r, &rd), FP_EINVAL);
  ck_assert_ptr_null(fp_result_error(r));
  ck_assert_int_eq(write(g_gate[1], "g", 1), 1);
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  ck_assert_int_eq(fp_result_ready(r), 1);
  ck_assert_int_eq(fp_result_successful(r), 1);
  int64_t v;
  ck_assert_int_eq(fp_result_value(r, &rd), 0);
  ck_assert_int_eq(fp_read_int(&rd, &v), 0);
  ck_assert_int_eq(v, 36);
  fp_result_free(r);
  fp_writer_free(&a);
  fp_pool_terminate(p);
  fp_pool_join(p);
  fp_pool_free(p);
}
END_TEST

/* imap(sqr, range(10)) in order, one next() at a time, then StopIteration
 * (FP_EOF, again on every later call); chunksize=100 over 1000 items.
 * CPython: _TestPool.test_imap. */
START_TEST(test_imap) {
  fp_pool *p = pool_n(4);
  fp_writer items;
  fp_writer_init(&items);
  write_range(&items, 10);
  fp_iter *it;
  fp_reader rd;
  int64_t v;
  ck_assert_int_eq(fp_pool_imap(p, t_sqr, &items, NULL, &it), 0);
  for (int i = 0; i < 10; i++) {
    ck_assert_int_eq(fp_iter_next(it, &rd, 30), 0);
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, (int64_t)i * i);
    ck_assert_int_eq(fp_iter_index(it), i);
  }
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  fp_iter_free(it);

  fp_writer_reset(&items);
  write_range(&items, 1000);
  fp_call_opts co = {0};
  co.chunksize = 100;
  ck_assert_int_eq(fp_pool_imap(p, t_sqr, &items, &co, &it), 0);
  for (int i = 0; i < 1000; i++) {
    ck_assert_int_eq(fp_iter_next(it, &rd, 30), 0);
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, (int64_t)i * i);
  }
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  fp_iter_free(it);
  fp_writer_free(&items);
  fp_pool_free(p);
}
END_TEST

/* Runs imap over exception_throwing_generator(total, when) with the given
 * chunksize and a read-ahead of one chunk, so the producer runs only as
 * results are consumed. good >= 0: expects exactly that many squares in
 * order; good < 0: a prefix of at most `when` squares in order. Then the
 * producer's error once, then the end. */
static void imap_gen_case(fp_pool *p, int64_t total, int64_t when,
                          size_t chunksize, int good) {
  gen g = {total, when, 0};
  fp_call_opts co = {0};
  co.chunksize = chunksize;
  co.readahead = chunksize;
  fp_iter *it = NULL;
  fp_reader rd;
  int64_t v;
  ck_assert_int_eq(fp_pool_imap_producer(p, t_sqr, gen_produce, &g, &co, &it),
                   0);
  int rc, i = 0;
  while ((rc = fp_iter_next(it, &rd, 30)) == 0) {
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, (int64_t)i * i);
    ck_assert_int_eq(fp_iter_index(it), i);
    i++;
  }
  ck_assert_msg(rc == -EDOM, "gen(%lld, %lld) chunksize %zu: next() gave %s",
                (long long)total, (long long)when, chunksize, fp_err_name(rc));
  if (good >= 0)
    ck_assert_msg(i == good, "gen(%lld, %lld) chunksize %zu: %d results, "
                  "CPython gives %d", (long long)total, (long long)when,
                  chunksize, i, good);
  else
    ck_assert_int_le(i, when < 0 ? 0 : when);
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  fp_iter_free(it);
}

/* An input generator that raises makes next() raise that very error where
 * the input stopped, after the results before it: at once for when=-1
 * (twice: reentrant), after exactly 3 for (10, 3) with chunksize 1. With
 * chunksize 2 and 4 CPython gives exactly 6 and 4 results (the failing
 * chunk is dropped whole); forkpool's chunks are cut short by the
 * read-ahead bound and a producer error cancels items not yet complete
 * (both documented in pool.md, "Producer-fed imap"), so there the case
 * checks an in-order prefix of at most `when` results.
 * CPython: _TestPool.test_imap_handle_iterable_exception. */
START_TEST(test_imap_handle_iterable_exception) {
  fp_pool *p = pool_n(4);
  imap_gen_case(p, 1, -1, 1, 0);
  imap_gen_case(p, 1, -1, 1, 0);
  imap_gen_case(p, 10, 3, 1, 3);
  imap_gen_case(p, 20, 7, 2, -1);
  imap_gen_case(p, 20, 7, 4, -1);
  fp_pool_free(p);
}
END_TEST

/* The same with the default read-ahead: documented difference (pool.md,
 * "Producer-fed imap"): the failing producer cancels items not yet
 * completed, so only a prefix of the good results (in order) comes before
 * the error, which still comes exactly once, then the end.
 * CPython: _TestPool.test_imap_handle_iterable_exception (documented). */
START_TEST(test_imap_handle_iterable_exception_default_readahead) {
  fp_pool *p = pool_n(4);
  gen g = {10, 3, 0};
  fp_iter *it;
  fp_reader rd;
  int64_t v;
  ck_assert_int_eq(fp_pool_imap_producer(p, t_sqr, gen_produce, &g, NULL, &it),
                   0);
  int rc, i = 0;
  while ((rc = fp_iter_next(it, &rd, 30)) == 0) {
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, (int64_t)i * i);
    i++;
  }
  ck_assert_int_le(i, 3);
  ck_assert_int_eq(rc, -EDOM);
  ck_assert_int_eq(fp_iter_index(it), -1);
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  fp_iter_free(it);
  fp_pool_free(p);
}
END_TEST

/* imap_unordered gives every result exactly once, for chunksize 1 and 100.
 * CPython: _TestPool.test_imap_unordered. */
START_TEST(test_imap_unordered) {
  fp_pool *p = pool_n(4);
  static unsigned char seen[1000];
  fp_writer items;
  fp_writer_init(&items);
  write_range(&items, 1000);
  for (int pass = 0; pass < 2; pass++) {
    int64_t n = pass == 0 ? 10 : 1000;
    fp_writer_reset(&items);
    write_range(&items, n);
    fp_call_opts co = {0};
    co.chunksize = pass == 0 ? 1 : 100;
    memset(seen, 0, sizeof seen);
    fp_iter *it;
    fp_reader rd;
    int64_t v;
    ck_assert_int_eq(fp_pool_imap_unordered(p, t_sqr, &items, &co, &it), 0);
    for (int64_t k = 0; k < n; k++) {
      ck_assert_int_eq(fp_iter_next(it, &rd, 30), 0);
      ck_assert_int_eq(fp_read_int(&rd, &v), 0);
      int64_t i = fp_iter_index(it);
      ck_assert(i >= 0 && i < n);
      ck_assert_int_eq(v, i * i);
      ck_assert_int_eq(seen[i], 0);
      seen[i] = 1;
    }
    ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
    fp_iter_free(it);
  }
  fp_writer_free(&items);
  fp_pool_free(p);
}
END_TEST

/* imap_unordered over a failing generator: every value before the error
 * is a distinct good square, and the error comes (once).
 * CPython: _TestPool.test_imap_unordered_handle_iterable_exception. */
START_TEST(test_imap_unordered_handle_iterable_exception) {
  fp_pool *p = pool_n(4);
  const int64_t cases[][3] = {{1, -1, 1}, {1, -1, 1}, {10, 3, 1}, {20, 7, 2}};
  for (size_t c = 0; c < 4; c++) {
    gen g = {cases[c][0], cases[c][1], 0};
    fp_call_opts co = {0};
    co.chunksize = (size_t)cases[c][2];
    fp_iter *it;
    fp_reader rd;
    int64_t v;
    unsigned char seen[20] = {0};
    ck_assert_int_eq(
        fp_pool_imap_unordered_producer(p, t_sqr, gen_produce, &g, &co, &it),
        0);
    int rc, got = 0;
    while ((rc = fp_iter_next(it, &rd, 30)) == 0) {
      ck_assert_int_eq(fp_read_int(&rd, &v), 0);
      int64_t i = fp_iter_index(it);
      ck_assert(i >= 0 && i < g.total && i != g.when);
      ck_assert_int_eq(v, i * i);
      ck_assert_int_eq(seen[i], 0);
      seen[i] = 1;
      got++;
    }
    ck_assert_int_eq(rc, -EDOM);
    ck_assert_int_lt(got, g.total);
    ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
    fp_iter_free(it);
  }
  fp_pool_free(p);
}
END_TEST

/* Pool(-1) is refused (ValueError: FP_EINVAL); Pool(3) has 3 workers.
 * Pool(0): documented difference (header, fp_pool_opts.processes): 0 is
 * the default, fp_cpu_count(), not an error.
 * CPython: _TestPool.test_make_pool. */
START_TEST(test_make_pool) {
  fp_pool *p = (fp_pool *)1;
  fp_pool_opts o = {0};
  o.processes = -1;
  ck_assert_int_eq(fp_pool_new(&p, &o), FP_EINVAL);
  ck_assert_ptr_null(p);
  ck_assert(strstr(fp_last_error(), "processes") != NULL);
  o.processes = 3;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  ck_assert_int_eq(fp_pool_size(p), 3);
  fp_pool_close(p);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_pool_free(p);
  o.processes = 0;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  ck_assert_int_eq(fp_pool_size(p), fp_cpu_count());
  fp_pool_free(p);
}
END_TEST

/* terminate() during a map of tasks that never end returns, and join()
 * returns; the unfinished result fails with FP_ECANCELED (CPython leaves
 * it unready forever: forkpool's documented improvement).
 * CPython: _TestPool.test_terminate. */
START_TEST(test_terminate) {
  fp_pool *p = pool_n(3);
  enum { N = 2000 };
  static int64_t in[N], out[N];
  fp_call_opts co = {0};
  co.chunksize = 1;
  fp_result *r;
  ck_assert_int_eq(FP_MAP_ASYNC(p, e_gated, in, N, out, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 0.2), FP_ETIMEDOUT);
  ck_assert_int_eq(fp_pool_terminate(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  ck_assert_int_eq(fp_result_get(r, 5), FP_ECANCELED);
  fp_result_free(r);
  fp_pool_free(p);
}
END_TEST

/* map, imap, imap_unordered and map_async over an empty input give empty
 * results; close and join then succeed. CPython: _TestPool.
 * test_empty_iterable. */
START_TEST(test_empty_iterable) {
  fp_pool *p = pool_n(1);
  fp_writer empty, out;
  fp_writer_init(&empty);
  fp_writer_init(&out);
  int64_t dummy = 0;
  ck_assert_int_eq(FP_MAP(p, e_sqr, &dummy, 0, &dummy, NULL), 0);
  ck_assert_int_eq(fp_pool_map_values(p, t_sqr, &empty, &out, NULL), 0);
  ck_assert_int_eq(out.len, 0);
  ck_assert_int_eq(fp_pool_map_values(p, t_sqr, NULL, &out, NULL), 0);
  ck_assert_int_eq(fp_pool_starmap(p, t_mul, &empty, &out, NULL), 0);
  ck_assert_int_eq(out.len, 0);
  fp_iter *it;
  fp_reader rd;
  ck_assert_int_eq(fp_pool_imap(p, t_sqr, &empty, NULL, &it), 0);
  ck_assert_int_eq(fp_iter_next(it, &rd, 5), FP_EOF);
  fp_iter_free(it);
  ck_assert_int_eq(fp_pool_imap_unordered(p, t_sqr, &empty, NULL, &it), 0);
  ck_assert_int_eq(fp_iter_next(it, &rd, 5), FP_EOF);
  fp_iter_free(it);
  fp_result *r;
  ck_assert_int_eq(fp_pool_map_values_async(p, t_sqr, &empty, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 5), 0);
  ck_assert_int_eq(fp_result_value(r, &rd), 0);
  ck_assert(fp_reader_at_end(&rd));
  fp_result_free(r);
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_writer_free(&empty);
  fp_writer_free(&out);
  fp_pool_free(p);
}
END_TEST

/* After the with-block's exit (terminate + join: what fp_pool_free does),
 * map_async is refused (ValueError: FP_ECLOSED) and no result exists.
 * CPython: _TestPool.test_context (and test_enter's "pool not running"). */
START_TEST(test_context) {
  fp_pool *p = pool_n(2);
  static int64_t in[10], out[10];
  for (int i = 0; i < 10; i++)
    in[i] = i;
  fp_result *r;
  ck_assert_int_eq(FP_MAP_ASYNC(p, e_sqr, in, 10, out, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  fp_result_free(r);
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(out[i], (int64_t)i * i);
  ck_assert_int_eq(fp_pool_terminate(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  r = (fp_result *)1;
  ck_assert_int_eq(FP_MAP_ASYNC(p, e_sqr, in, 10, out, NULL, &r), FP_ECLOSED);
  ck_assert_ptr_null(r);
  fp_pool_free(p);
}
END_TEST

/* A task's error reaches the caller with its message (the traceback's
 * text) and its item; a producer's error reaches it unwrapped (its own
 * code, no item). CPython: _TestPool.test_traceback. */
START_TEST(test_traceback) {
  fp_pool *p = pool_n(1);
  ck_assert_int_eq(fp_pool_apply(p, t_fail_traceback, NULL, NULL), FP_ETASK);
  ck_assert_msg(strstr(fp_last_error(), "RuntimeError(123) # some comment"),
                "%s", fp_last_error());
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, t_fail_traceback, NULL, NULL, &r),
                   0);
  ck_assert_int_eq(fp_result_get(r, 30), FP_ETASK);
  ck_assert_ptr_nonnull(fp_result_error(r));
  ck_assert(strstr(fp_result_error(r), "RuntimeError(123) # some comment"));
  ck_assert_int_eq(fp_result_error_index(r), 0);
  fp_result_free(r);
  gen g = {1, -1, 0};
  fp_iter *it;
  fp_reader rd;
  fp_call_opts co = {0};
  co.chunksize = 1;
  ck_assert_int_eq(fp_pool_imap_producer(p, t_sqr, gen_produce, &g, &co, &it),
                   0);
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), -EDOM);
  ck_assert_int_eq(fp_iter_index(it), -1);
  fp_iter_free(it);
  fp_pool_free(p);
}
END_TEST

/* A task's own error code comes back as is (the exception is not wrapped
 * into another type). CPython: _TestPool.test_wrapped_exception. */
START_TEST(test_wrapped_exception) {
  fp_pool *p = pool_n(1);
  ck_assert_int_eq(fp_pool_apply(p, t_raise_edom, NULL, NULL), -EDOM);
  fp_pool_free(p);
}
END_TEST

/* A map whose items fail (with huge messages) returns only once every item
 * ran, and close + join afterwards do not deadlock.
 * CPython: _TestPool.test_map_no_failfast. */
START_TEST(test_map_no_failfast) {
  ck_assert_int_eq(fp_counter_new(g_mgr, 0, &g_ran), 0);
  fp_pool *p = pool_n(2);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  write_range(&items, 2);
  fp_call_opts co = {0};
  co.chunksize = 1;
  ck_assert_int_eq(fp_pool_map_values(p, t_large_valueerror, &items, &out, &co),
                   FP_ETASK);
  int64_t ran = -1;
  ck_assert_int_eq(fp_counter_get(g_ran, &ran), 0);
  ck_assert_int_eq(ran, 2);
  ck_assert(strstr(fp_last_error(), "item 0: ValueError(xxx") != NULL);
  ck_assert_int_eq(out.len, 0);
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_writer_free(&items);
  fp_writer_free(&out);
  fp_pool_free(p);
}
END_TEST

/* join() while the pool runs is refused (ValueError: FP_EINVAL) and
 * apply() after close() is refused ("Pool not running": FP_ECLOSED);
 * close() after terminate() is harmless. CPython: Pool.join / Pool._check_
 * running, as exercised by _TestPool.test_context and test_enter. */
START_TEST(test_join_and_close_rules) {
  fp_pool *p = pool_n(1);
  ck_assert_int_eq(fp_pool_join(p), FP_EINVAL);
  ck_assert_int_eq(fp_pool_close(p), 0);
  fp_writer a;
  fp_writer_init(&a);
  fp_write_int(&a, 2);
  ck_assert_int_eq(fp_pool_apply(p, t_sqr, &a, NULL), FP_ECLOSED);
  fp_result *r = (fp_result *)1;
  ck_assert_int_eq(fp_pool_apply_async(p, t_sqr, &a, NULL, &r), FP_ECLOSED);
  ck_assert_ptr_null(r);
  ck_assert_int_eq(fp_pool_terminate(p), 0);
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_writer_free(&a);
  fp_pool_free(p);
}
END_TEST

/* A worker that dies running a task fails that task (CPython's Pool hangs
 * forever here; forkpool documents FP_EWORKER) and the pool goes on.
 * CPython: none (bpo-22393 behaviour), documented in python-to-c.md. */
START_TEST(test_worker_crash) {
  fp_pool *p = pool_n(2);
  ck_assert_int_eq(fp_pool_apply(p, t_die, NULL, NULL), FP_EWORKER);
  fp_writer a, out;
  fp_writer_init(&a);
  fp_writer_init(&out);
  fp_write_int(&a, 9);
  ck_assert_int_eq(fp_pool_apply(p, t_sqr, &a, &out), 0);
  fp_writer_free(&a);
  fp_writer_free(&out);
  fp_pool_free(p);
}
END_TEST

static int e_fail_3_7(const void *in, void *out) {
  int64_t x = *(const int64_t *)in;
  if (x == 3 || x == 7)
    return fp_task_fail("ValueError(%lld)", (long long)x);
  *(int64_t *)out = x * x;
  return 0;
}

/* map_async over an empty input still runs its callback, once, with an
 * empty result, before get() returns (CPython calls callback([])).
 * CPython: _TestPool.test_map_async_callbacks + test_empty_iterable. */
START_TEST(test_map_async_empty_callback) {
  fp_pool *p = pool_n(2);
  calls c = {0};
  fp_call_opts co = {0};
  co.callback = cb_ok;
  co.error_callback = cb_err;
  co.arg = &c;
  fp_writer empty;
  fp_writer_init(&empty);
  fp_result *r;
  ck_assert_int_eq(fp_pool_map_values_async(p, t_sqr, &empty, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 5), 0);
  ck_assert_int_eq(c.ok, 1);
  ck_assert_int_eq(c.err, 0);
  fp_result_free(r);
  int64_t dummy = 0;
  ck_assert_int_eq(FP_MAP_ASYNC(p, e_sqr, &dummy, 0, &dummy, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 5), 0);
  ck_assert_int_eq(c.ok, 2);
  fp_result_free(r);
  ck_assert_int_eq(fp_pool_starmap_async(p, t_mul, &empty, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 5), 0);
  ck_assert_int_eq(c.ok, 3);
  ck_assert_int_eq(c.err, 0);
  fp_result_free(r);
  fp_pool_free(p);
}
END_TEST

/* map_async whose items 3 and 7 fail: error_callback runs once, get()
 * gives the task's error; forkpool names the lowest failing item (CPython:
 * the first failing chunk to arrive; documented improvement).
 * CPython: _TestPool.test_map_async_callbacks (error path). */
START_TEST(test_map_async_error_callback) {
  fp_pool *p = pool_n(2);
  static int64_t in[10], out[10];
  for (int i = 0; i < 10; i++)
    in[i] = i;
  calls c = {0};
  fp_call_opts co = {0};
  co.callback = cb_ok;
  co.error_callback = cb_err;
  co.arg = &c;
  co.chunksize = 1;
  fp_result *r;
  ck_assert_int_eq(FP_MAP_ASYNC(p, e_fail_3_7, in, 10, out, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), FP_ETASK);
  ck_assert_int_eq(c.ok, 0);
  ck_assert_int_eq(c.err, 1);
  ck_assert_int_eq(fp_result_error_index(r), 3);
  ck_assert_msg(strstr(c.err_msg, "ValueError(3)") != NULL, "%s", c.err_msg);
  ck_assert_int_eq(fp_result_successful(r), 0);
  fp_result_free(r);
  fp_pool_free(p);
}
END_TEST

/* A result that was ready before terminate() keeps its value; one still
 * running fails (FP_ECANCELED, CPython: never ready); both stay readable
 * after the pool is freed. CPython: AsyncResult after Pool.terminate
 * (_TestPool.test_terminate, tearDownClass). */
START_TEST(test_terminate_keeps_finished_results) {
  fp_pool *p = pool_n(2);
  fp_writer a;
  fp_writer_init(&a);
  fp_write_int(&a, 4);
  fp_result *done, *running;
  ck_assert_int_eq(fp_pool_apply_async(p, t_sqr, &a, NULL, &done), 0);
  ck_assert_int_eq(fp_result_get(done, 30), 0);
  ck_assert_int_eq(fp_pool_apply_async(p, t_gated_sqr, &a, NULL, &running), 0);
  ck_assert_int_eq(fp_pool_terminate(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_pool_free(p);
  ck_assert_int_eq(fp_result_get(done, 0), 0);
  ck_assert_int_eq(fp_result_successful(done), 1);
  fp_reader rd;
  int64_t v;
  ck_assert_int_eq(fp_result_value(done, &rd), 0);
  ck_assert_int_eq(fp_read_int(&rd, &v), 0);
  ck_assert_int_eq(v, 16);
  ck_assert_int_eq(fp_result_get(running, 5), FP_ECANCELED);
  ck_assert_int_eq(fp_result_successful(running), 0);
  fp_result_free(done);
  fp_result_free(running);
  fp_writer_free(&a);
}
END_TEST

/* An imap submitted before close() still delivers every result, and
 * join() then returns. CPython: Pool.close semantics (_TestPool.
 * test_empty_iterable's close/join after imap). */
START_TEST(test_imap_then_close) {
  fp_pool *p = pool_n(2);
  fp_writer items;
  fp_writer_init(&items);
  write_range(&items, 50);
  fp_iter *it, *un;
  ck_assert_int_eq(fp_pool_imap(p, t_sqr, &items, NULL, &it), 0);
  ck_assert_int_eq(fp_pool_imap_unordered(p, t_sqr, &items, NULL, &un), 0);
  ck_assert_int_eq(fp_pool_close(p), 0);
  fp_reader rd;
  int64_t v;
  for (int i = 0; i < 50; i++) {
    ck_assert_int_eq(fp_iter_next(it, &rd, 30), 0);
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, (int64_t)i * i);
  }
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  int64_t sum = 0;
  for (int i = 0; i < 50; i++) {
    ck_assert_int_eq(fp_iter_next(un, &rd, 30), 0);
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    sum += v;
  }
  ck_assert_int_eq(sum, 49 * 50 * 99 / 6);
  ck_assert_int_eq(fp_iter_next(un, &rd, 30), FP_EOF);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_iter_free(it);
  fp_iter_free(un);
  fp_writer_free(&items);
  fp_pool_free(p);
}
END_TEST

/* terminate() during an imap: the next call reports the job's end once
 * (FP_ECANCELED), then StopIteration (FP_EOF). CPython: imap after
 * Pool.terminate (_TestPool.test_terminate); CPython's iterator would
 * block forever: forkpool's documented behaviour. */
START_TEST(test_imap_terminate) {
  fp_pool *p = pool_n(2);
  fp_writer items;
  fp_writer_init(&items);
  write_range(&items, 10);
  fp_iter *it;
  ck_assert_int_eq(fp_pool_imap(p, t_gated_sqr, &items, NULL, &it), 0);
  fp_reader rd;
  ck_assert_int_eq(fp_iter_next(it, &rd, 0.1), FP_EAGAIN);
  ck_assert_int_eq(fp_pool_terminate(p), 0);
  ck_assert_int_eq(fp_iter_next(it, &rd, 5), FP_ECANCELED);
  ck_assert_int_eq(fp_iter_next(it, &rd, 5), FP_EOF);
  fp_iter_free(it);
  fp_writer_free(&items);
  fp_pool_free(p);
}
END_TEST

static int init_fails(void *arg) {
  return 1;
}

/* A pool whose workers cannot start is refused (FP_ESTORM) and leaves no
 * process behind; CPython's Pool respawns such workers forever.
 * CPython: none (Pool(initializer=...) that raises), documented in
 * faults.md (restart storms). */
START_TEST(test_pool_broken_by_initializer) {
  fp_pool *p = (fp_pool *)1;
  fp_pool_opts o = {0};
  o.processes = 2;
  o.initializer = init_fails;
  ck_assert_int_eq(fp_pool_new(&p, &o), FP_ESTORM);
  ck_assert_ptr_null(p);
}
END_TEST

/* ---- _TestPoolWorkerErrors ---------------------------------------------- */

/* apply_async(raising, error_callback=errback): get() raises the task's
 * error and errback got that same error, before get returned.
 * CPython: _TestPoolWorkerErrors.test_async_error_callback. */
START_TEST(test_async_error_callback) {
  fp_pool *p = pool_n(2);
  calls c = {0};
  fp_call_opts co = {0};
  co.error_callback = cb_err;
  co.arg = &c;
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, t_raise_keyerror, NULL, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), FP_ETASK);
  ck_assert_int_eq(c.err, 1);
  ck_assert_int_eq(c.err_code, FP_ETASK);
  ck_assert(strstr(c.err_msg, "KeyError('key')") != NULL);
  fp_result_free(r);
  fp_pool_close(p);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_pool_free(p);
}
END_TEST

/* A result that cannot be encoded (two values; more than max_frame) fails
 * its task through get() and error_callback, 20 times over, without the
 * pool losing a worker. CPython: _TestPoolWorkerErrors.
 * test_unpickleable_result. */
START_TEST(test_unpickleable_result) {
  fp_pool *p = pool_with((fp_pool_opts){.processes = 2, .max_frame = 4096});
  for (int i = 0; i < 20; i++) {
    calls c = {0};
    fp_call_opts co = {0};
    co.error_callback = cb_err;
    co.arg = &c;
    fp_result *r;
    fp_task_fn fn = i % 2 ? t_big_result : t_two_values;
    int want = i % 2 ? FP_EMSGSIZE : FP_EPROTO;
    ck_assert_int_eq(fp_pool_apply_async(p, fn, NULL, &co, &r), 0);
    ck_assert_int_eq(fp_result_get(r, 30), want);
    ck_assert_int_eq(c.err, 1);
    ck_assert_int_eq(c.err_code, want);
    ck_assert_ptr_nonnull(fp_result_error(r));
    fp_result_free(r);
  }
  for (int s = 0; s < 2; s++) {
    fp_worker_info wi;
    ck_assert_int_eq(fp_pool_worker_info(p, s, &wi), 0);
    ck_assert_msg(wi.restarts == 0, "slot %d restarted %llu times", s,
                  (unsigned long long)wi.restarts);
  }
  fp_pool_close(p);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_pool_free(p);
}
END_TEST

/* ---- _TestPoolWorkerLifetime -------------------------------------------- */

/* Pool(3, maxtasksperchild=10): 100 apply_async give right answers and the
 * workers are replaced: at least 10 distinct pids, none running more than
 * 10 tasks. CPython: _TestPoolWorkerLifetime.test_pool_worker_lifetime. */
START_TEST(test_pool_worker_lifetime) {
  fp_pool *p =
      pool_with((fp_pool_opts){.processes = 3, .maxtasksperchild = 10});
  ck_assert_int_eq(fp_pool_size(p), 3);
  pid_t orig[3];
  for (int s = 0; s < 3; s++) {
    fp_worker_info wi;
    ck_assert_int_eq(fp_pool_worker_info(p, s, &wi), 0);
    orig[s] = wi.pid;
    ck_assert_int_gt(orig[s], 0);
  }
  enum { N = 100 };
  fp_result *r[N];
  submit_ints(p, t_sqr_pid, N, r);
  int64_t pids[N];
  for (int i = 0; i < N; i++) {
    fp_reader rd;
    int64_t v;
    ck_assert_int_eq(fp_result_get(r[i], 30), 0);
    ck_assert_int_eq(fp_result_value(r[i], &rd), 0);
    ck_assert_int_eq(fp_unpack(&rd, "[i i]", &v, &pids[i]), 0);
    ck_assert_int_eq(v, (int64_t)i * i);
    fp_result_free(r[i]);
  }
  int distinct = 0;
  for (int i = 0; i < N; i++) {
    int first = 1, count = 0;
    for (int k = 0; k < N; k++) {
      if (pids[k] == pids[i]) {
        count++;
        if (k < i)
          first = 0;
      }
    }
    ck_assert_int_le(count, 10);
    distinct += first;
  }
  ck_assert_int_ge(distinct, 10);
  uint64_t restarts = 0;
  for (int s = 0; s < 3; s++) {
    fp_worker_info wi;
    ck_assert_int_eq(fp_pool_worker_info(p, s, &wi), 0);
    restarts += wi.restarts;
  }
  ck_assert_uint_ge(restarts, 7);
  fp_pool_close(p);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_pool_free(p);
}
END_TEST

/* Pool(3, maxtasksperchild=1): closing before the tasks finished does not
 * make join() hang, and every result is right.
 * CPython: _TestPoolWorkerLifetime.test_pool_worker_lifetime_early_close. */
START_TEST(test_pool_worker_lifetime_early_close) {
  fp_pool *p = pool_with((fp_pool_opts){.processes = 3, .maxtasksperchild = 1});
  fp_result *r[6];
  submit_ints(p, t_slow_sqr, 6, r);
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  for (int i = 0; i < 6; i++) {
    fp_reader rd;
    int64_t v;
    ck_assert_int_eq(fp_result_get(r[i], 0), 0);
    ck_assert_int_eq(fp_result_value(r[i], &rd), 0);
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, (int64_t)i * i);
    fp_result_free(r[i]);
  }
  fp_pool_free(p);
}
END_TEST

/* maxtasksperchild: documented difference (fp_pool_opts): an unsigned
 * count where 0 means unlimited, so CPython's ValueError for 0 has no
 * counterpart; 0 gives a pool whose worker is never replaced.
 * CPython: _TestPoolWorkerLifetime.test_pool_maxtasksperchild_invalid. */
START_TEST(test_pool_maxtasksperchild_invalid) {
  fp_pool *p = pool_with((fp_pool_opts){.processes = 1, .maxtasksperchild = 0});
  fp_writer a;
  fp_writer_init(&a);
  fp_write_int(&a, 3);
  for (int i = 0; i < 20; i++)
    ck_assert_int_eq(fp_pool_apply(p, t_sqr_pid, &a, NULL), 0);
  fp_writer_free(&a);
  fp_worker_info wi;
  ck_assert_int_eq(fp_pool_worker_info(p, 0, &wi), 0);
  ck_assert_uint_eq(wi.restarts, 0);
  fp_pool_free(p);
}
END_TEST

/* ---- manager: _TestContainers ------------------------------------------- */

static int64_t list_int(fp_list *l, int64_t i) {
  fp_writer w;
  fp_reader rd;
  int64_t v = INT64_MIN;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_list_get(l, i, &w), 0);
  fp_reader_init(&rd, w.data, w.len);
  ck_assert_int_eq(fp_read_int(&rd, &v), 0);
  fp_writer_free(&w);
  return v;
}

static void list_append_int(fp_list *l, int64_t v) {
  fp_writer w;
  fp_writer_init(&w);
  fp_write_int(&w, v);
  ck_assert_int_eq(fp_list_append(l, w.data, w.len), 0);
  fp_writer_free(&w);
}

/* Checks list(l) (a snapshot) equals the n ints of want. */
static void expect_list(fp_list *l, const int64_t *want, uint32_t n) {
  fp_writer w;
  fp_reader rd;
  uint32_t cnt = 99;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_list_snapshot(l, &w), 0);
  fp_reader_init(&rd, w.data, w.len);
  ck_assert_int_eq(fp_read_list(&rd, &cnt), 0);
  ck_assert_uint_eq(cnt, n);
  for (uint32_t i = 0; i < n; i++) {
    int64_t v;
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, want[i]);
  }
  ck_assert(fp_reader_at_end(&rd));
  fp_writer_free(&w);
  ck_assert_int_eq(fp_list_len(l), n);
}

static uint64_t list_ref_at(fp_list *l, int64_t i) {
  return (uint64_t)list_int(l, i);
}

/* list(range(10))[:], an empty list, extend, b[2], b[2:10] clamped to the
 * end, b *= 2, b + [5, 6] (a new plain list), lists of proxies that see
 * later appends. Slicing, *= and + have no forkpool call: built from get,
 * snapshot and extend. CPython: _TestContainers.test_list. */
START_TEST(test_list) {
  static const int64_t r10[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  fp_list *a, *b, *e, *f;
  fp_writer w;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_list_new(g_mgr, &a), 0);
  write_range(&w, 10);
  ck_assert_int_eq(fp_list_extend(a, w.data, w.len), 0);
  expect_list(a, r10, 10);
  ck_assert_int_eq(fp_list_new(g_mgr, &b), 0);
  expect_list(b, NULL, 0);
  fp_writer_reset(&w);
  write_range(&w, 5);
  ck_assert_int_eq(fp_list_extend(b, w.data, w.len), 0);
  expect_list(b, r10, 5);
  ck_assert_int_eq(list_int(b, 2), 2);
  int64_t sl[8], n = 0; /* b[2:10] */
  for (int64_t i = 2; i < 10 && i < fp_list_len(b); i++)
    sl[n++] = list_int(b, i);
  ck_assert_int_eq(n, 3);
  ck_assert(sl[0] == 2 && sl[1] == 3 && sl[2] == 4);
  ck_assert_int_eq(fp_list_get(b, 10, &w), FP_ERANGE); /* b[10] */
  /* b *= 2: extend with its own snapshot's items */
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_list_snapshot(b, &w), 0);
  fp_reader rd;
  uint32_t cnt;
  fp_reader_init(&rd, w.data, w.len);
  ck_assert_int_eq(fp_read_list(&rd, &cnt), 0);
  ck_assert_int_eq(fp_list_extend(b, w.data + rd.pos, w.len - rd.pos), 0);
  static const int64_t b2[] = {0, 1, 2, 3, 4, 0, 1, 2, 3, 4};
  expect_list(b, b2, 10);
  expect_list(a, r10, 10);
  /* e = list([a, b]); f = list([a]); a.append('hello') */
  ck_assert_int_eq(fp_list_new(g_mgr, &e), 0);
  ck_assert_int_eq(fp_list_new(g_mgr, &f), 0);
  list_append_int(e, (int64_t)fp_list_ref(a));
  list_append_int(e, (int64_t)fp_list_ref(b));
  list_append_int(f, (int64_t)fp_list_ref(a));
  fp_list *x;
  ck_assert_int_eq(fp_list_from_ref(g_mgr, list_ref_at(e, 0), &x), 0);
  expect_list(x, r10, 10);
  ck_assert_int_eq(fp_list_from_ref(g_mgr, list_ref_at(e, 1), &x), 0);
  expect_list(x, b2, 10);
  fp_writer_reset(&w);
  fp_write_str(&w, "hello");
  ck_assert_int_eq(fp_list_append(a, w.data, w.len), 0);
  ck_assert_int_eq(fp_list_from_ref(g_mgr, list_ref_at(f, 0), &x), 0);
  ck_assert_int_eq(fp_list_len(x), 11);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_list_get(x, 10, &w), 0);
  const char *s;
  fp_reader_init(&rd, w.data, w.len);
  ck_assert_int_eq(fp_read_str(&rd, &s, NULL), 0);
  ck_assert_str_eq(s, "hello");
  fp_writer_free(&w);
}
END_TEST

/* Iterating a list by index sees an item changed after the iteration
 * began (the proxy iterates through __getitem__, not a copy).
 * CPython: _TestContainers.test_list_iter. */
START_TEST(test_list_iter) {
  fp_list *a;
  fp_writer w;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_list_new(g_mgr, &a), 0);
  write_range(&w, 10);
  ck_assert_int_eq(fp_list_extend(a, w.data, w.len), 0);
  for (int64_t i = 0; i < fp_list_len(a); i++)
    ck_assert_int_eq(list_int(a, i), i);
  fp_writer_reset(&w);
  fp_write_int(&w, 100);
  ck_assert_int_eq(fp_list_set(a, 0, w.data, w.len), 0);
  ck_assert_int_eq(list_int(a, 0), 100);
  fp_writer_free(&w);
}
END_TEST

/* A list of lists (by ref): a[0][-1] = 55 changes only a[0]; a[1].pop()
 * returns 2 and shortens only a[1]; a list holding its own ref is fine.
 * CPython: _TestContainers.test_list_proxy_in_list. */
START_TEST(test_list_proxy_in_list) {
  fp_list *a, *in[3];
  fp_writer w;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_list_new(g_mgr, &a), 0);
  for (int k = 0; k < 3; k++) {
    ck_assert_int_eq(fp_list_new(g_mgr, &in[k]), 0);
    fp_writer_reset(&w);
    write_range(&w, 3);
    ck_assert_int_eq(fp_list_extend(in[k], w.data, w.len), 0);
    list_append_int(a, (int64_t)fp_list_ref(in[k]));
  }
  fp_list *x;
  ck_assert_int_eq(fp_list_from_ref(g_mgr, list_ref_at(a, 0), &x), 0);
  fp_writer_reset(&w);
  fp_write_int(&w, 55);
  ck_assert_int_eq(fp_list_set(x, -1, w.data, w.len), 0);
  static const int64_t want0[] = {0, 1, 55}, want[] = {0, 1, 2};
  expect_list(in[0], want0, 3);
  expect_list(in[1], want, 3);
  expect_list(in[2], want, 3);
  ck_assert_int_eq(fp_list_from_ref(g_mgr, list_ref_at(a, 1), &x), 0);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_list_pop(x, -1, &w), 0);
  fp_reader rd;
  int64_t v;
  fp_reader_init(&rd, w.data, w.len);
  ck_assert_int_eq(fp_read_int(&rd, &v), 0);
  ck_assert_int_eq(v, 2);
  ck_assert_int_eq(fp_list_len(in[1]), 2);
  ck_assert_int_eq(fp_list_len(in[0]), 3);
  ck_assert_int_eq(fp_list_len(in[2]), 3);
  fp_list *b;
  ck_assert_int_eq(fp_list_new(g_mgr, &b), 0);
  list_append_int(b, (int64_t)fp_list_ref(b));
  ck_assert_int_eq(fp_list_destroy(b), 0);
  fp_writer_free(&w);
}
END_TEST

/* Indexing as Python: -1 is the last, -len the first, -len-1 and len are
 * IndexError (FP_ERANGE), pop() on an empty list is IndexError, pop(0) the
 * first. CPython: list semantics of ListProxy (_TestContainers.test_list,
 * TestSyncManagerTypes.test_list). */
START_TEST(test_list_negative_index) {
  fp_list *l;
  fp_writer w;
  fp_writer_init(&w);
  ck_assert_int_eq(fp_list_new(g_mgr, &l), 0);
  ck_assert_int_eq(fp_list_pop(l, -1, NULL), FP_ERANGE);
  ck_assert_int_eq(fp_list_pop(l, 0, NULL), FP_ERANGE);
  ck_assert_int_eq(fp_list_get(l, 0, &w), FP_ERANGE);
  ck_assert_int_eq(fp_list_get(l, -1, &w), FP_ERANGE);
  write_range(&w, 5);
  ck_assert_int_eq(fp_list_extend(l, w.data, w.len), 0);
  ck_assert_int_eq(list_int(l, -1), 4);
  ck_assert_int_eq(list_int(l, -5), 0);
  ck_assert_int_eq(list_int(l, 4), 4);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_list_get(l, -6, &w), FP_ERANGE);
  ck_assert_int_eq(fp_list_get(l, 5, &w), FP_ERANGE);
  ck_assert_int_eq(fp_list_get(l, INT64_MIN, &w), FP_ERANGE);
  ck_assert_int_eq(fp_list_get(l, INT64_MAX, &w), FP_ERANGE);
  ck_assert_int_eq(w.len, 0);
  fp_write_int(&w, 7);
  ck_assert_int_eq(fp_list_set(l, -6, w.data, w.len), FP_ERANGE);
  ck_assert_int_eq(fp_list_set(l, 5, w.data, w.len), FP_ERANGE);
  ck_assert_int_eq(fp_list_set(l, -2, w.data, w.len), 0);
  ck_assert_int_eq(list_int(l, 3), 7);
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_list_pop(l, 0, &w), 0); /* pop(0) */
  fp_reader rd;
  int64_t v;
  fp_reader_init(&rd, w.data, w.len);
  ck_assert_int_eq(fp_read_int(&rd, &v), 0);
  ck_assert_int_eq(v, 0);
  ck_assert_int_eq(fp_list_pop(l, -5, NULL), FP_ERANGE);
  ck_assert_int_eq(fp_list_pop(l, -4, NULL), 0); /* pop(-4): the first */
  static const int64_t rest[] = {2, 7, 4};
  expect_list(l, rest, 3);
  fp_writer_free(&w);
}
END_TEST

typedef struct kv {
  int n;
  char keys[16][8];
  char vals[16][8];
} kv;

static int collect(const void *key, size_t klen, const void *value,
                   size_t vlen, void *arg) {
  kv *c = arg;
  fp_reader rd;
  const char *s;
  if (c->n == 16 || klen >= 8)
    return 1;
  memcpy(c->keys[c->n], key, klen);
  c->keys[c->n][klen] = '\0';
  fp_reader_init(&rd, value, vlen);
  if (fp_read_str(&rd, &s, NULL) != 0)
    return 2;
  snprintf(c->vals[c->n], 8, "%s", s);
  c->n++;
  return 0;
}

static int cmp_str8(const void *x, const void *y) {
  return strcmp(x, y);
}

static void fill_dict_65_70(fp_dict *d) {
  for (int i = 65; i < 70; i++) {
    char k[16], v[2] = {(char)i, 0};
    snprintf(k, sizeof k, "%d", i);
    ck_assert_int_eq(fp_dict_set_str(d, k, strlen(k), v), 0);
  }
}

/* d[i] = chr(i) for 65..69: the copy, the sorted keys, values and items
 * match. Keys are byte strings in forkpool (documented).
 * CPython: _TestContainers.test_dict. */
START_TEST(test_dict) {
  fp_dict *d;
  ck_assert_int_eq(fp_dict_new(g_mgr, &d), 0);
  fill_dict_65_70(d);
  ck_assert_int_eq(fp_dict_len(d), 5);
  kv c = {0};
  ck_assert_int_eq(fp_dict_foreach(d, collect, &c), 0);
  ck_assert_int_eq(c.n, 5);
  qsort(c.keys, 5, 8, cmp_str8);
  qsort(c.vals, 5, 8, cmp_str8);
  for (int i = 0; i < 5; i++) {
    char k[16], v[2] = {(char)(65 + i), 0};
    snprintf(k, sizeof k, "%d", 65 + i);
    ck_assert_str_eq(c.keys[i], k);
    ck_assert_str_eq(c.vals[i], v);
  }
}
END_TEST

typedef struct walk {
  int n;
  fp_dict *d;
} walk;

static int clear_on_first(const void *key, size_t klen, const void *value,
                          size_t vlen, void *arg) {
  walk *st = arg;
  if (st->n++ == 0)
    return fp_dict_clear(st->d) ? 99 : 0;
  return 0;
}

static int cmp_keys(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* iter(d) yields every key once (65..69). Documented differences
 * (fp_dict_foreach): the order is the hash table's, not insertion order;
 * modifying the dict during the walk raises nothing, items removed
 * meanwhile may or may not be seen, none twice.
 * CPython: _TestContainers.test_dict_iter. */
START_TEST(test_dict_iter) {
  fp_dict *d;
  ck_assert_int_eq(fp_dict_new(g_mgr, &d), 0);
  fill_dict_65_70(d);
  kv c = {0};
  ck_assert_int_eq(fp_dict_foreach(d, collect, &c), 0);
  ck_assert_int_eq(c.n, 5);
  char *keys[5];
  for (int i = 0; i < 5; i++)
    keys[i] = c.keys[i];
  qsort(keys, 5, sizeof(keys[0]), cmp_keys);
  for (int i = 0; i < 5; i++) {
    char k[16];
    snprintf(k, sizeof k, "%d", 65 + i);
    ck_assert_str_eq(keys[i], k);
  }
  /* clear from inside the walk: ends normally */
  walk st = {0, d};
  ck_assert_int_eq(fp_dict_foreach(d, clear_on_first, &st), 0);
  ck_assert_int_ge(st.n, 1);
  ck_assert_int_le(st.n, 5);
  ck_assert_int_eq(fp_dict_len(d), 0);
}
END_TEST

static int64_t dict_int(fp_dict *d, const char *k) {
  int64_t v = INT64_MIN;
  ck_assert_int_eq(fp_dict_get_int(d, k, strlen(k), &v), 0);
  return v;
}

static fp_dict *dict_at(fp_dict *d, const char *k) {
  fp_dict *x = NULL;
  ck_assert_int_eq(fp_dict_from_ref(g_mgr, (uint64_t)dict_int(d, k), &x), 0);
  return x;
}

#define KL(s) s, strlen(s)

/* Dicts of dicts (by ref): writes through the outer dict reach the inner
 * one, clearing the outer leaves the inner ones alive, a list of dict refs
 * works the same, and a plain nested list is a value, not a proxy.
 * CPython: _TestContainers.test_dict_proxy_nested. */
START_TEST(test_dict_proxy_nested) {
  fp_dict *pets, *supplies, *d;
  ck_assert_int_eq(fp_dict_new(g_mgr, &pets), 0);
  ck_assert_int_eq(fp_dict_new(g_mgr, &supplies), 0);
  ck_assert_int_eq(fp_dict_new(g_mgr, &d), 0);
  fp_dict_set_int(pets, KL("ferrets"), 2);
  fp_dict_set_int(pets, KL("hamsters"), 4);
  fp_dict_set_int(supplies, KL("water"), 10);
  fp_dict_set_int(supplies, KL("feed"), 3);
  fp_dict_set_int(d, KL("pets"), (int64_t)fp_dict_ref(pets));
  fp_dict_set_int(d, KL("supplies"), (int64_t)fp_dict_ref(supplies));
  ck_assert_int_eq(dict_int(supplies, "water"), 10);
  ck_assert_int_eq(dict_int(dict_at(d, "supplies"), "water"), 10);
  fp_dict_set_int(dict_at(d, "supplies"), KL("blankets"), 5);
  ck_assert_int_eq(dict_int(supplies, "blankets"), 5);
  fp_dict_set_int(dict_at(d, "supplies"), KL("water"), 7);
  ck_assert_int_eq(dict_int(supplies, "water"), 7);
  ck_assert_int_eq(dict_int(dict_at(d, "pets"), "ferrets"), 2);
  ck_assert_int_eq(fp_dict_clear(d), 0);
  ck_assert_int_eq(fp_dict_len(d), 0);
  ck_assert_int_eq(dict_int(supplies, "water"), 7);
  ck_assert_int_eq(dict_int(pets, "hamsters"), 4);
  fp_list *l, *outer;
  ck_assert_int_eq(fp_list_new(g_mgr, &l), 0);
  list_append_int(l, (int64_t)fp_dict_ref(pets));
  list_append_int(l, (int64_t)fp_dict_ref(supplies));
  fp_dict *x;
  ck_assert_int_eq(fp_dict_from_ref(g_mgr, list_ref_at(l, 0), &x), 0);
  fp_dict_set_int(x, KL("marmots"), 1);
  ck_assert_int_eq(dict_int(pets, "marmots"), 1);
  ck_assert_int_eq(fp_list_new(g_mgr, &outer), 0);
  fp_writer w;
  fp_writer_init(&w);
  fp_pack(&w, "[i i]", (int64_t)88, (int64_t)99);
  ck_assert_int_eq(fp_list_append(outer, w.data, w.len), 0);
  list_append_int(outer, (int64_t)fp_list_ref(l));
  fp_writer_reset(&w);
  ck_assert_int_eq(fp_list_get(outer, 0, &w), 0); /* a plain list value */
  fp_reader rd;
  fp_reader_init(&rd, w.data, w.len);
  ck_assert_int_eq(fp_read_peek(&rd), FP_LIST);
  fp_list *y;
  ck_assert_int_eq(fp_list_from_ref(g_mgr, list_ref_at(outer, -1), &y), 0);
  ck_assert_int_eq(fp_dict_from_ref(g_mgr, list_ref_at(y, -1), &x), 0);
  ck_assert_int_eq(dict_int(x, "feed"), 3);
  /* a ref of the wrong kind is refused */
  ck_assert_int_eq(fp_list_from_ref(g_mgr, fp_dict_ref(pets), &y), FP_ETYPE);
  fp_writer_free(&w);
}
END_TEST

/* ---- manager: TestSyncManagerTypes (a worker uses the shared object) ---- */

static fp_list *g_list;
static fp_dict *g_dict;
static fp_counter *g_value;
static fp_lock *g_lock;

#define TRY(cond)                                                              \
  do {                                                                         \
    if (!(cond))                                                               \
      return fp_task_fail("line %d: %s", __LINE__, #cond);                     \
  } while (0)

static int64_t w_list_int(fp_list *l, int64_t i) {
  fp_writer w;
  fp_reader rd;
  int64_t v = INT64_MIN;
  fp_writer_init(&w);
  if (fp_list_get(l, i, &w) == 0) {
    fp_reader_init(&rd, w.data, w.len);
    fp_read_int(&rd, &v);
  }
  fp_writer_free(&w);
  return v;
}

/* In the worker: obj[0] == 5, obj += [7], obj *= 2, extend, len 16,
 * pop(0), clear. (count, index, sort, reverse: no forkpool call.) */
static int t_sync_list(fp_reader *args, fp_writer *out) {
  fp_writer w;
  fp_writer_init(&w);
  TRY(w_list_int(g_list, 0) == 5);
  TRY(fp_list_len(g_list) == 1);
  fp_write_int(&w, 7);
  TRY(fp_list_extend(g_list, w.data, w.len) == 0); /* += [7] */
  TRY(w_list_int(g_list, 0) == 5 && w_list_int(g_list, 1) == 7);
  fp_writer_reset(&w);
  fp_pack(&w, "i i", (int64_t)5, (int64_t)7);
  TRY(fp_list_extend(g_list, w.data, w.len) == 0); /* *= 2 */
  TRY(fp_list_len(g_list) == 4);
  fp_writer_reset(&w);
  for (int i = 0; i < 3; i++)
    fp_pack(&w, "i i i i", (int64_t)5, (int64_t)7, (int64_t)5, (int64_t)7);
  TRY(fp_list_extend(g_list, w.data, w.len) == 0);
  TRY(fp_list_len(g_list) == 16);
  fp_writer_reset(&w);
  TRY(fp_list_pop(g_list, 0, &w) == 0);
  TRY(fp_list_len(g_list) == 15);
  TRY(fp_list_clear(g_list) == 0);
  TRY(fp_list_len(g_list) == 0);
  fp_writer_free(&w);
  return fp_write_int(out, 0);
}

/* A list made in the parent, changed by a worker: the parent sees the
 * worker's changes (here: cleared). CPython: TestSyncManagerTypes.
 * test_list. */
START_TEST(test_sync_list) {
  ck_assert_int_eq(fp_list_new(g_mgr, &g_list), 0);
  list_append_int(g_list, 5);
  fp_pool *p = pool_n(1);
  ck_assert_msg(fp_pool_apply(p, t_sync_list, NULL, NULL) == 0, "%s",
                fp_last_error());
  ck_assert_int_eq(fp_list_len(g_list), 0);
  fp_pool_free(p);
}
END_TEST

/* In the worker: len 1, d['foo'] == 5, |= {'bar': 6}, setdefault on a
 * present key keeps it, update bar = 7, pop('bar') == 7, clear. */
static int t_sync_dict(fp_reader *args, fp_writer *out) {
  int64_t v = 0;
  fp_writer w;
  fp_reader rd;
  fp_writer_init(&w);
  TRY(fp_dict_len(g_dict) == 1);
  TRY(fp_dict_get_int(g_dict, KL("foo"), &v) == 0 && v == 5);
  TRY(fp_dict_contains(g_dict, KL("foo")) == 1);
  TRY(fp_dict_contains(g_dict, KL("bar")) == 0);
  TRY(fp_dict_set_int(g_dict, KL("bar"), 6) == 0);
  TRY(fp_dict_len(g_dict) == 2);
  fp_write_int(&w, 0);
  fp_writer out2;
  fp_writer_init(&out2);
  TRY(fp_dict_setdefault(g_dict, KL("bar"), w.data, w.len, &out2) == 1);
  fp_reader_init(&rd, out2.data, out2.len);
  TRY(fp_read_int(&rd, &v) == 0 && v == 6);
  TRY(fp_dict_set_int(g_dict, KL("bar"), 7) == 0);
  fp_writer_reset(&out2);
  TRY(fp_dict_delete(g_dict, KL("bar"), &out2) == 0);
  fp_reader_init(&rd, out2.data, out2.len);
  TRY(fp_read_int(&rd, &v) == 0 && v == 7);
  TRY(fp_dict_delete(g_dict, KL("bar"), NULL) == FP_ENOENT); /* KeyError */
  TRY(fp_dict_clear(g_dict) == 0);
  TRY(fp_dict_len(g_dict) == 0);
  fp_writer_free(&w);
  fp_writer_free(&out2);
  return 0;
}

/* A dict made in the parent, changed by a worker: the parent sees it
 * empty afterwards. CPython: TestSyncManagerTypes.test_dict. */
START_TEST(test_sync_dict) {
  ck_assert_int_eq(fp_dict_new(g_mgr, &g_dict), 0);
  ck_assert_int_eq(fp_dict_set_int(g_dict, KL("foo"), 5), 0);
  fp_pool *p = pool_n(1);
  ck_assert_msg(fp_pool_apply(p, t_sync_dict, NULL, NULL) == 0, "%s",
                fp_last_error());
  ck_assert_int_eq(fp_dict_len(g_dict), 0);
  fp_pool_free(p);
}
END_TEST

static int t_sync_value(fp_reader *args, fp_writer *out) {
  int64_t v = 0;
  TRY(fp_counter_get(g_value, &v) == 0 && v == 1);
  TRY(fp_counter_set(g_value, 2) == 0);
  return 0;
}

/* Value('i', 1): the worker reads 1 and sets 2; the parent reads 2.
 * CPython: TestSyncManagerTypes.test_value. */
START_TEST(test_sync_value) {
  ck_assert_int_eq(fp_counter_new(g_mgr, 1, &g_value), 0);
  fp_pool *p = pool_n(1);
  ck_assert_msg(fp_pool_apply(p, t_sync_value, NULL, NULL) == 0, "%s",
                fp_last_error());
  int64_t v = 0;
  ck_assert_int_eq(fp_counter_get(g_value, &v), 0);
  ck_assert_int_eq(v, 2);
  fp_pool_free(p);
}
END_TEST

/* Takes g_lock and returns holding it; its worker then exits. */
static int t_lock_and_leave(fp_reader *args, fp_writer *out) {
  int rc = fp_lock_acquire(g_lock, 5.0);
  return rc == 0 ? 0 : fp_task_fail("acquire: %s", fp_err_name(rc));
}

/* A process takes the lock and ends without releasing it; then the
 * parent's release() works and a second release() raises (RuntimeError:
 * FP_EPERM). Documented difference (header, fp_lock): ownership is the
 * thread's, so the parent must first acquire, which reports the dead
 * holder (FP_EOWNERDEAD) and gives it the lock.
 * CPython: TestSyncManagerTypes.test_lock. */
START_TEST(test_sync_lock) {
  ck_assert_int_eq(fp_lock_new(g_mgr, &g_lock), 0);
  fp_pool *p = pool_with((fp_pool_opts){.processes = 1, .maxtasksperchild = 1});
  ck_assert_msg(fp_pool_apply(p, t_lock_and_leave, NULL, NULL) == 0, "%s",
                fp_last_error());
  ck_assert_int_eq(fp_lock_release(g_lock), FP_EPERM); /* not ours */
  ck_assert_int_eq(fp_lock_acquire(g_lock, 10.0), FP_EOWNERDEAD);
  ck_assert_int_eq(fp_lock_release(g_lock), 0);
  ck_assert_int_eq(fp_lock_release(g_lock), FP_EPERM);
  fp_pool_free(p);
}
END_TEST

static void *try_lock_thread(void *arg) {
  fp_lock *l = arg;
  intptr_t rc = fp_lock_acquire(l, 0);
  intptr_t rc2 = fp_lock_acquire(l, 0.05);
  intptr_t rc3 = fp_lock_release(l);
  intptr_t ok = rc == FP_ETIMEDOUT && rc2 == FP_ETIMEDOUT && rc3 == FP_EPERM;
  return (void *)ok;
}

/* acquire() is True, a non-blocking acquire by someone else is False
 * (FP_ETIMEDOUT), release() works, releasing an unlocked lock raises
 * (FP_EPERM). Documented difference (header): a non-blocking acquire by
 * the holder itself gives -EDEADLK instead of False.
 * CPython: _TestLock.test_lock. */
START_TEST(test_lock) {
  fp_lock *l;
  ck_assert_int_eq(fp_lock_new(g_mgr, &l), 0);
  ck_assert_int_eq(fp_lock_acquire(l, FP_FOREVER), 0);
  ck_assert_int_eq(fp_lock_acquire(l, 0), -EDEADLK);
  pthread_t t;
  void *ok;
  ck_assert_int_eq(pthread_create(&t, NULL, try_lock_thread, l), 0);
  ck_assert_int_eq(pthread_join(t, &ok), 0);
  ck_assert_ptr_eq(ok, (void *)1);
  ck_assert_int_eq(fp_lock_release(l), 0);
  ck_assert_int_eq(fp_lock_release(l), FP_EPERM);
  ck_assert_int_eq(fp_lock_acquire(l, 0), 0);
  ck_assert_int_eq(fp_lock_release(l), 0);
}
END_TEST

/* ---- _TestValue / _TestArray ------------------------------------------- */

static fp_counter *g_vals[3];
static fp_array *g_dbl, *g_arr;

static int t_set_values(fp_reader *args, fp_writer *out) {
  const int64_t news[3] = {24234, 234, (int64_t)1 << 34};
  for (int i = 0; i < 3; i++)
    TRY(fp_counter_set(g_vals[i], news[i]) == 0);
  *(double *)fp_array_data(g_dbl) = -4.25;
  return 0;
}

/* Shared values written by a worker are seen by the parent ('i', 'h', 'q'
 * through counters, 'd' through an array of one double).
 * CPython: _TestValue.test_value. */
START_TEST(test_value) {
  const int64_t olds[3] = {4343, -232, (int64_t)1 << 33};
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(fp_counter_new(g_mgr, olds[i], &g_vals[i]), 0);
  ck_assert_int_eq(fp_array_new(g_mgr, sizeof(double), &g_dbl), 0);
  *(double *)fp_array_data(g_dbl) = 3.625;
  for (int i = 0; i < 3; i++) {
    int64_t v;
    ck_assert_int_eq(fp_counter_get(g_vals[i], &v), 0);
    ck_assert_int_eq(v, olds[i]);
  }
  fp_pool *p = pool_n(1);
  ck_assert_msg(fp_pool_apply(p, t_set_values, NULL, NULL) == 0, "%s",
                fp_last_error());
  const int64_t news[3] = {24234, 234, (int64_t)1 << 34};
  for (int i = 0; i < 3; i++) {
    int64_t v;
    ck_assert_int_eq(fp_counter_get(g_vals[i], &v), 0);
    ck_assert_int_eq(v, news[i]);
  }
  ck_assert(*(double *)fp_array_data(g_dbl) == -4.25);
  fp_pool_free(p);
}
END_TEST

static int t_prefix_sums(fp_reader *args, fp_writer *out) {
  int32_t *s = fp_array_data(g_arr);
  size_t n = fp_array_size(g_arr) / sizeof *s;
  for (size_t i = 1; i < n; i++)
    s[i] += s[i - 1];
  return 0;
}

/* A shared int array: len, item, slice, slice assignment, then a worker's
 * in-place prefix sums are seen by the parent.
 * CPython: _TestArray.test_array. */
START_TEST(test_array) {
  int32_t seq[10] = {680, 626, 934, 821, 150, 233, 548, 982, 714, 831};
  ck_assert_int_eq(fp_array_new(g_mgr, sizeof seq, &g_arr), 0);
  int32_t *a = fp_array_data(g_arr);
  memcpy(a, seq, sizeof seq);
  ck_assert_uint_eq(fp_array_size(g_arr) / sizeof *a, 10);
  ck_assert_int_eq(a[3], seq[3]);
  for (int i = 4; i < 8; i++)
    a[i] = seq[i] = i - 3;
  ck_assert_int_eq(memcmp(a, seq, sizeof seq), 0);
  for (int i = 1; i < 10; i++)
    seq[i] += seq[i - 1];
  fp_pool *p = pool_n(1);
  ck_assert_msg(fp_pool_apply(p, t_prefix_sums, NULL, NULL) == 0, "%s",
                fp_last_error());
  ck_assert_int_eq(memcmp(a, seq, sizeof seq), 0);
  fp_pool_free(p);
}
END_TEST

/* Array('i', 10) is zero-filled, also when it reuses the memory of an
 * array that was written and destroyed (issue #11675).
 * CPython: _TestArray.test_array_from_size. */
START_TEST(test_array_from_size) {
  for (int round = 0; round < 3; round++) {
    fp_array *arr;
    ck_assert_int_eq(fp_array_new(g_mgr, 10 * sizeof(int32_t), &arr), 0);
    int32_t *a = fp_array_data(arr);
    ck_assert_uint_eq(fp_array_size(arr), 10 * sizeof(int32_t));
    for (int i = 0; i < 10; i++)
      ck_assert_int_eq(a[i], 0);
    for (int i = 0; i < 10; i++)
      a[i] = i + 1;
    ck_assert_int_eq(fp_array_destroy(arr), 0);
  }
}
END_TEST

/* ---- suite --------------------------------------------------------------- */

Suite *cpython_suite(void) {
  Suite *s = suite_create("cpython");
  TCase *tc = tcase_create("pool");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_apply);
  tcase_add_test(tc, test_map);
  tcase_add_test(tc, test_starmap);
  tcase_add_test(tc, test_starmap_async);
  tcase_add_test(tc, test_map_async);
  tcase_add_test(tc, test_map_async_callbacks);
  tcase_add_test(tc, test_map_unplicklable);
  tcase_add_test(tc, test_map_chunksize);
  tcase_add_test(tc, test_async);
  tcase_add_test(tc, test_async_timeout);
  tcase_add_test(tc, test_imap);
  tcase_add_test(tc, test_imap_handle_iterable_exception);
  tcase_add_test(tc, test_imap_handle_iterable_exception_default_readahead);
  tcase_add_test(tc, test_imap_unordered);
  tcase_add_test(tc, test_imap_unordered_handle_iterable_exception);
  tcase_add_test(tc, test_make_pool);
  tcase_add_test(tc, test_terminate);
  tcase_add_test(tc, test_empty_iterable);
  tcase_add_test(tc, test_context);
  tcase_add_test(tc, test_traceback);
  tcase_add_test(tc, test_wrapped_exception);
  tcase_add_test(tc, test_map_no_failfast);
  tcase_add_test(tc, test_join_and_close_rules);
  tcase_add_test(tc, test_worker_crash);
  tcase_add_test(tc, test_map_async_empty_callback);
  tcase_add_test(tc, test_map_async_error_callback);
  tcase_add_test(tc, test_terminate_keeps_finished_results);
  tcase_add_test(tc, test_imap_then_close);
  tcase_add_test(tc, test_imap_terminate);
  tcase_add_test(tc, test_pool_broken_by_initializer);
  suite_add_tcase(s, tc);

  tc = tcase_create("pool_workers");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_async_error_callback);
  tcase_add_test(tc, test_unpickleable_result);
  tcase_add_test(tc, test_pool_worker_lifetime);
  tcase_add_test(tc, test_pool_worker_lifetime_early_close);
  tcase_add_test(tc, test_pool_maxtasksperchild_invalid);
  suite_add_tcase(s, tc);

  tc = tcase_create("manager");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_list);
  tcase_add_test(tc, test_list_iter);
  tcase_add_test(tc, test_list_proxy_in_list);
  tcase_add_test(tc, test_list_negative_index);
  tcase_add_test(tc, test_dict);
  tcase_add_test(tc, test_dict_iter);
  tcase_add_test(tc, test_dict_proxy_nested);
  tcase_add_test(tc, test_sync_list);
  tcase_add_test(tc, test_sync_dict);
  tcase_add_test(tc, test_sync_value);
  tcase_add_test(tc, test_sync_lock);
  tcase_add_test(tc, test_lock);
  tcase_add_test(tc, test_value);
  tcase_add_test(tc, test_array);
  tcase_add_test(tc, test_array_from_size);
  suite_add_tcase(s, tc);
  return s;
}
