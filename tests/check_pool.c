/* SPDX-License-Identifier: MIT */
/* check_pool.c - the pool's calls on their success and error paths.
 *
 * Every test creates its own pool and frees it; the checked teardown then
 * asserts that no child process is left. Waits are bounded (Check timeouts,
 * fp_result_get timeouts); nothing sleeps to synchronise: where a test needs
 * a task to be running, the task writes to a pipe the test reads.
 */
#include "forkpool.h"
#include "testutil.h"
#include "child.h"

#include <check.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
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

/* ---- task functions -------------------------------------------------------
 */

static int t_square(const void *in, void *out) {
  int64_t v = *(const int64_t *)in;
  *(int64_t *)out = v * v;
  return 0;
}

static int t_fail_odd(const void *in, void *out) {
  int64_t v = *(const int64_t *)in;
  if (v % 2 == 1 && v > 10)
    return fp_task_fail("odd value %lld", (long long)v);
  *(int64_t *)out = -v;
  return 0;
}

static int t_returns_7(const void *in, void *out) {
  (void)in;
  (void)out;
  return 7; /* not an error code */
}

static int t_add(fp_reader *args, fp_writer *out) {
  int64_t a, b;
  int rc = fp_unpack(args, "i i", &a, &b);
  if (rc != 0)
    return rc;
  return fp_write_int(out, a + b);
}

static int t_ident(fp_reader *args, fp_writer *out) {
  return fp_copy_value(out, args);
}

static int t_upper(fp_reader *args, fp_writer *out) {
  const char *s;
  size_t n;
  int rc = fp_read_str(args, &s, &n);
  if (rc != 0)
    return rc;
  char buf[256];
  if (n >= sizeof(buf))
    return fp_task_fail("string too long");
  for (size_t i = 0; i < n; i++)
    buf[i] = (char)(s[i] >= 'a' && s[i] <= 'z' ? s[i] - 32 : s[i]);
  return fp_write_strn(out, buf, n);
}

static int t_pid(fp_reader *args, fp_writer *out) {
  (void)args;
  return fp_write_int(out, (int64_t)getpid());
}

static int t_index_worker(fp_reader *args, fp_writer *out) {
  (void)args;
  return fp_pack(out, "[ i i ]", fp_task_index(), (int64_t)fp_task_worker_id());
}

static int t_sleep_ms(fp_reader *args, fp_writer *out) {
  int64_t ms;
  int rc = fp_unpack(args, "i", &ms);
  if (rc != 0)
    return rc;
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return fp_write_int(out, ms);
}

static int t_noisy(fp_reader *args, fp_writer *out) {
  int64_t v;
  fp_unpack(args, "i", &v);
  printf("noise %lld\n", (long long)v);
  fprintf(stderr, "more noise %lld\n", (long long)v);
  fflush(stdout);
  return fp_write_int(out, v);
}

static int t_two_values(fp_reader *args, fp_writer *out) {
  (void)args;
  fp_write_int(out, 1);
  return fp_write_int(out, 2);
}

static int t_nothing(fp_reader *args, fp_writer *out) {
  (void)args;
  (void)out;
  return 0;
}

/* A global set before the pool exists: workers see it (fork inheritance). */
static int64_t g_loaded_before_pool;
static int t_read_global(fp_reader *args, fp_writer *out) {
  (void)args;
  return fp_write_int(out, g_loaded_before_pool);
}

static int64_t g_init_value;
static int init_set(void *arg) {
  g_init_value = *(int64_t *)arg;
  return 0;
}
static int t_read_init(fp_reader *args, fp_writer *out) {
  (void)args;
  return fp_write_int(out, g_init_value);
}

/* ---- fixtures ----------------------------------------------------------- */

static void teardown(void) {
  fp_test_no_children();
}

/* ---- lifecycle --------------------------------------------------------------
 */

START_TEST(pool_new_and_free_leaves_nothing) {
  /* The first libuv loop of a process opens libuv's process-wide signal
   * pipe, which lives as long as the process: count after one pool. */
  fp_pool_free(new_pool(1));
  int fds = fp_test_count_fds();
  fp_pool *p = new_pool(2);
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i i", (int64_t)1, (int64_t)2);
  ck_assert_int_eq(fp_pool_apply(p, t_add, &a, NULL), 0);
  fp_writer_free(&a);
  ck_assert_int_eq(fp_pool_size(p), 2);
  fp_pool_free(p);
  ck_assert_int_eq(fp_test_count_fds(), fds);
}
END_TEST

START_TEST(pool_new_rejects_bad_options) {
  fp_pool *p = (fp_pool *)1;
  fp_pool_opts o = {0};
  ck_assert_int_eq(fp_pool_new(NULL, NULL), FP_EINVAL);
  o.processes = -1;
  ck_assert_int_eq(fp_pool_new(&p, &o), FP_EINVAL);
  ck_assert_ptr_null(p);
  o.processes = 1;
  o.task_timeout = NAN; /* negative is FP_FOREVER: no limit */
  ck_assert_int_eq(fp_pool_new(&p, &o), FP_EINVAL);
  o.task_timeout = 0;
  o.inflight = 1000;
  ck_assert_int_eq(fp_pool_new(&p, &o), FP_EINVAL);
  o.inflight = 0;
  o.max_frame = 10;
  ck_assert_int_eq(fp_pool_new(&p, &o), FP_EINVAL);
  ck_assert_int_eq(fp_pool_size(NULL), FP_EINVAL);
}
END_TEST

/* fp_last_error() names the option out of range, one at a time. */
START_TEST(pool_new_names_the_bad_option) {
  const char *names[] = {"processes", "task_timeout", "kill_grace",
                         "retries",   "max_restarts", "restart_window",
                         "inflight",  "on_crash",     "progress",
                         "max_frame", "pin"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    fp_pool_opts o = {0};
    fp_pool *p = (fp_pool *)1;
    switch (i) {
    case 0: o.processes = 5000; break;
    case 1: o.task_timeout = NAN; break;
    case 2: o.kill_grace = 4000; break;
    case 3: o.retries = -1; break;
    case 4: o.max_restarts = -1; break;
    case 5: o.restart_window = -2; break;
    case 6: o.inflight = 17; break;
    case 7: o.on_crash = (fp_crash_policy)99; break;
    case 8: o.progress = (fp_progress_mode)99; break;
    case 9:
      o.max_frame = 100;
      break;
    default:
      o.pin = (fp_pin_policy)99;
      break;
    }
    ck_assert_int_eq(fp_pool_new(&p, &o), FP_EINVAL);
    ck_assert_ptr_null(p);
    ck_assert_msg(strstr(fp_last_error(), names[i]) != NULL,
                  "option %s: message '%s'", names[i], fp_last_error());
  }
}
END_TEST

/* inflight takes 1 to 16 (FP__LINK_MAX_BATCH); the deepest queue runs a
 * map of short items correctly. */
START_TEST(inflight_accepts_1_to_16) {
  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  o.processes = 2;
  o.inflight = 17;
  ck_assert_int_eq(fp_pool_new(&p, &o), FP_EINVAL);
  ck_assert_ptr_null(p);
  o.inflight = -1;
  ck_assert_int_eq(fp_pool_new(&p, &o), FP_EINVAL);
  o.inflight = 16;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  enum { N = 5000 };
  static int64_t in[N], out[N];
  for (int i = 0; i < N; i++)
    in[i] = i;
  fp_call_opts co = {0};
  co.chunksize = 1;
  ck_assert_int_eq(fp_pool_map(p, t_square, in, N, 8, out, 8, &co), 0);
  for (int i = 0; i < N; i++)
    ck_assert_int_eq(out[i], (int64_t)i * i);
  fp_pool_free(p);
}
END_TEST

/* Hundreds of workers: the fork server answers each SPAWN with a message
 * carrying a socket, and before the pool's loop reads any of them both
 * directions of the control socket fill up (about 280 workers here). The
 * requests that do not fit wait in order and go out as the loop drains
 * the answers; terminate's many KILLs take the same path. */
START_TEST(hundreds_of_workers_start_work_and_terminate) {
  enum { MAXW = 512 };
  int n = fp_test_under_valgrind() ? 16 : MAXW;
  fp_pool_free(new_pool(1)); /* libuv's process-wide pipe, see above */
  int fds = fp_test_count_fds();
  fp_pool_opts o = {0};
  o.processes = n;
  fp_pool *p = NULL;
  ck_assert_msg(fp_pool_new(&p, &o) == 0, "%d workers: %s", n, fp_last_error());
  ck_assert_int_eq(fp_pool_size(p), n);
  static int64_t in[4 * MAXW], out[4 * MAXW];
  for (int i = 0; i < 4 * n; i++)
    in[i] = i;
  fp_call_opts co = {0};
  co.chunksize = 1;
  ck_assert_int_eq(
      fp_pool_map(p, t_square, in, (size_t)(4 * n), 8, out, 8, &co), 0);
  for (int i = 0; i < 4 * n; i++)
    ck_assert_int_eq(out[i], (int64_t)i * i);
  static fp_result *rs[MAXW];
  fp_writer a;
  fp_writer_init(&a);
  ck_assert_int_eq(fp_pack(&a, "i", (int64_t)60000), 0);
  for (int i = 0; i < n; i++)
    ck_assert_int_eq(fp_pool_apply_async(p, t_sleep_ms, &a, NULL, &rs[i]), 0);
  fp_writer_free(&a);
  ck_assert_int_eq(fp_pool_terminate(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  for (int i = 0; i < n; i++) {
    ck_assert_int_eq(fp_result_get(rs[i], 0), FP_ECANCELED);
    fp_result_free(rs[i]);
  }
  fp_pool_free(p);
  fp_test_no_children();
  ck_assert_int_eq(fp_test_count_fds(), fds);
}
END_TEST

START_TEST(pool_default_processes_is_cpu_count) {
  fp_pool *p = NULL;
  ck_assert_int_eq(fp_pool_new(&p, NULL), 0);
  ck_assert_int_eq(fp_pool_size(p), fp_cpu_count());
  fp_pool_free(p);
}
END_TEST

START_TEST(join_before_close_fails) {
  fp_pool *p = new_pool(1);
  ck_assert_int_eq(fp_pool_join(p), FP_EINVAL);
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_close(p), 0); /* harmless twice */
  ck_assert_int_eq(fp_pool_join(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  ck_assert_int_eq(fp_pool_terminate(p), 0); /* harmless after join */
  fp_pool_free(p);
  ck_assert_int_eq(fp_pool_close(NULL), FP_EINVAL);
  ck_assert_int_eq(fp_pool_join(NULL), FP_EINVAL);
  ck_assert_int_eq(fp_pool_terminate(NULL), FP_EINVAL);
  fp_pool_free(NULL);
}
END_TEST

START_TEST(apply_after_close_fails) {
  fp_pool *p = new_pool(1);
  fp_writer a, o;
  fp_writer_init(&a);
  fp_writer_init(&o);
  fp_pack(&a, "i i", (int64_t)1, (int64_t)2);
  fp_pool_close(p);
  ck_assert_int_eq(fp_pool_apply(p, t_add, &a, &o), FP_ECLOSED);
  fp_result *r = (fp_result *)1;
  ck_assert_int_eq(fp_pool_apply_async(p, t_add, &a, NULL, &r), FP_ECLOSED);
  ck_assert_ptr_null(r);
  int64_t x = 1, y;
  ck_assert_int_eq(fp_pool_map(p, t_square, &x, 1, 8, &y, 8, NULL), FP_ECLOSED);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_pool_free(p);
  fp_writer_free(&a);
  fp_writer_free(&o);
}
END_TEST

START_TEST(terminate_twice_is_harmless) {
  fp_pool *p = new_pool(2);
  ck_assert_int_eq(fp_pool_terminate(p), 0);
  ck_assert_int_eq(fp_pool_terminate(p), 0);
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_pool_free(p);
}
END_TEST

START_TEST(terminate_during_long_tasks_returns_fast) {
  fp_pool *p = new_pool(2);
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i", (int64_t)60000);
  fp_result *r[3];
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(fp_pool_apply_async(p, t_sleep_ms, &a, NULL, &r[i]), 0);
  /* Make sure the tasks are running: the first get times out. */
  ck_assert_int_eq(fp_result_get(r[0], 0.1), FP_ETIMEDOUT);
  double t0 = now_s();
  ck_assert_int_eq(fp_pool_terminate(p), 0);
  double took = now_s() - t0;
  ck_assert_msg(took < 1.0, "terminate took %.3fs", took);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(fp_result_get(r[i], 5), FP_ECANCELED);
    fp_result_free(r[i]);
  }
  fp_pool_join(p);
  fp_pool_free(p);
  fp_writer_free(&a);
}
END_TEST

/* An iterator whose pool is terminated ends with FP_ECANCELED once, and
 * fp_iter_index then says -1 (no item), not the last item returned. */
START_TEST(terminated_iterator_reports_no_item_index) {
  fp_pool *p = new_pool(2);
  fp_writer items;
  fp_writer_init(&items);
  fp_write_int(&items, 0);
  fp_write_int(&items, 60000);
  fp_write_int(&items, 60000);
  fp_call_opts co = {0};
  co.chunksize = 1;
  fp_iter *it;
  fp_reader rd;
  ck_assert_int_eq(fp_pool_imap(p, t_sleep_ms, &items, &co, &it), 0);
  ck_assert_int_eq(fp_iter_next(it, &rd, 10), 0);
  ck_assert_int_eq(fp_iter_index(it), 0);
  ck_assert_int_eq(fp_pool_terminate(p), 0);
  ck_assert_int_eq(fp_iter_next(it, &rd, 10), FP_ECANCELED);
  ck_assert_int_eq(fp_iter_index(it), -1);
  ck_assert_int_eq(fp_iter_next(it, &rd, 10), FP_EOF);
  fp_iter_free(it);
  fp_pool_free(p);
  fp_writer_free(&items);
}
END_TEST

START_TEST(free_while_running_cancels_results) {
  fp_pool *p = new_pool(1);
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i", (int64_t)60000);
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, t_sleep_ms, &a, NULL, &r), 0);
  fp_pool_free(p); /* like leaving Python's with-block */
  ck_assert_int_eq(fp_result_get(r, 5), FP_ECANCELED);
  ck_assert_int_eq(fp_result_ready(r), 1);
  ck_assert_int_eq(fp_result_successful(r), 0);
  ck_assert_ptr_nonnull(fp_result_error(r));
  fp_result_free(r);
  fp_writer_free(&a);
}
END_TEST

/* ---- apply --------------------------------------------------------------- */

START_TEST(apply_returns_value) {
  fp_pool *p = new_pool(2);
  fp_writer a, o;
  fp_reader rd;
  int64_t v = 0;
  fp_writer_init(&a);
  fp_writer_init(&o);
  fp_pack(&a, "i i", (int64_t)40, (int64_t)2);
  ck_assert_int_eq(fp_pool_apply(p, t_add, &a, &o), 0);
  fp_reader_init(&rd, o.data, o.len);
  ck_assert_int_eq(fp_read_int(&rd, &v), 0);
  ck_assert_int_eq(v, 42);
  /* No args, NULL out. */
  ck_assert_int_eq(fp_pool_apply(p, t_pid, NULL, NULL), 0);
  /* A task that writes nothing yields nil. */
  fp_writer_reset(&o);
  ck_assert_int_eq(fp_pool_apply(p, t_nothing, NULL, &o), 0);
  fp_reader_init(&rd, o.data, o.len);
  ck_assert_int_eq(fp_read_nil(&rd), 0);
  fp_pool_free(p);
  fp_writer_free(&a);
  fp_writer_free(&o);
}
END_TEST

START_TEST(apply_task_failure_reports_message) {
  fp_pool *p = new_pool(1);
  fp_writer a, o;
  fp_writer_init(&a);
  fp_writer_init(&o);
  fp_pack(&a, "s", "not an int");
  ck_assert_int_eq(fp_pool_apply(p, t_add, &a, &o), FP_ETYPE);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "FP_ETYPE"));
  ck_assert_int_eq(o.len, 0);
  ck_assert_int_eq(fp_pool_apply(p, t_two_values, NULL, &o), FP_EPROTO);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "expected one"));
  ck_assert_int_eq(fp_pool_apply(p, NULL, NULL, &o), FP_EINVAL);
  ck_assert_int_eq(fp_pool_apply(NULL, t_add, &a, &o), FP_EINVAL);
  /* A writer with an open list is not a valid argument buffer. */
  fp_writer_reset(&a);
  fp_write_list_begin(&a);
  ck_assert_int_eq(fp_pool_apply(p, t_add, &a, &o), FP_EINVAL);
  fp_pool_free(p);
  fp_writer_free(&a);
  fp_writer_free(&o);
}
END_TEST

static atomic_int g_cb_ok, g_cb_err;
static void cb_ok(fp_result *r, void *arg) {
  (void)arg;
  /* Inside its own callback a result is readable. */
  ck_assert_int_eq(fp_result_get(r, FP_FOREVER), 0);
  atomic_fetch_add(&g_cb_ok, 1);
}
static void cb_err(fp_result *r, void *arg) {
  (void)r;
  atomic_fetch_add((atomic_int *)arg, 1);
  atomic_fetch_add(&g_cb_err, 1);
}

START_TEST(apply_async_callbacks_run_exactly_once) {
  fp_pool *p = new_pool(2);
  enum { N = 1000 };
  fp_result *r[N];
  fp_writer a;
  atomic_int mine = 0;
  fp_writer_init(&a);
  fp_pack(&a, "i i", (int64_t)1, (int64_t)2);
  fp_call_opts co = {0};
  co.callback = cb_ok;
  co.error_callback = cb_err;
  co.arg = &mine;
  for (int i = 0; i < N; i++)
    ck_assert_int_eq(fp_pool_apply_async(p, t_add, &a, &co, &r[i]), 0);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(fp_result_get(r[i], 30), 0);
    fp_reader rd;
    int64_t v;
    ck_assert_int_eq(fp_result_value(r[i], &rd), 0);
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, 3);
    fp_result_free(r[i]);
  }
  ck_assert_int_eq(atomic_load(&g_cb_ok), N);
  ck_assert_int_eq(atomic_load(&g_cb_err), 0);
  /* Failures go to error_callback, once each. */
  fp_writer_reset(&a);
  fp_pack(&a, "s", "x");
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(fp_pool_apply_async(p, t_add, &a, &co, &r[i]), 0);
  for (int i = 0; i < 10; i++) {
    ck_assert_int_eq(fp_result_get(r[i], 30), FP_ETYPE);
    ck_assert_int_eq(fp_result_successful(r[i]), 0);
    fp_result_free(r[i]);
  }
  ck_assert_int_eq(atomic_load(&mine), 10);
  ck_assert_int_eq(atomic_load(&g_cb_ok), N);
  fp_pool_free(p);
  fp_writer_free(&a);
}
END_TEST

static fp_pool *g_cb_pool;
static atomic_int g_nested_rc;
static void cb_blocking(fp_result *r, void *arg) {
  (void)r;
  (void)arg;
  atomic_store(&g_nested_rc, fp_pool_apply(g_cb_pool, t_pid, NULL, NULL));
}

START_TEST(blocking_call_from_callback_fails) {
  fp_pool *p = new_pool(1);
  g_cb_pool = p;
  atomic_store(&g_nested_rc, 1);
  fp_call_opts co = {0};
  co.callback = cb_blocking;
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, t_pid, NULL, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  ck_assert_int_eq(atomic_load(&g_nested_rc), FP_EINVAL);
  fp_result_free(r);
  fp_pool_free(p);
}
END_TEST

START_TEST(result_get_timeout_then_success) {
  fp_pool *p = new_pool(1);
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i", (int64_t)300);
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, t_sleep_ms, &a, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 0.02), FP_ETIMEDOUT);
  ck_assert_int_eq(fp_result_wait(r, 0), FP_ETIMEDOUT);
  ck_assert_int_eq(fp_result_ready(r), 0);
  ck_assert_int_eq(fp_result_successful(r), FP_EINVAL);
  fp_reader rd;
  ck_assert_int_eq(fp_result_value(r, &rd), FP_EINVAL);
  ck_assert_ptr_null(fp_result_error(r));
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  ck_assert_int_eq(fp_result_ready(r), 1);
  ck_assert_int_eq(fp_result_successful(r), 1);
  ck_assert_int_eq(fp_result_error_index(r), -1);
  ck_assert_int_eq(fp_result_cancel(r), FP_EINVAL); /* already ready */
  fp_result_free(r);
  ck_assert_int_eq(fp_result_get(NULL, 0), FP_EINVAL);
  ck_assert_int_eq(fp_result_ready(NULL), FP_EINVAL);
  ck_assert_int_eq(fp_result_cancel(NULL), FP_EINVAL);
  fp_result_free(NULL);
  fp_pool_free(p);
  fp_writer_free(&a);
}
END_TEST

START_TEST(cancel_queued_task) {
  fp_pool *p = new_pool(1);
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i", (int64_t)300);
  fp_result *busy, *queued;
  atomic_int errs = 0;
  fp_call_opts co = {0};
  co.error_callback = cb_err;
  co.arg = &errs;
  ck_assert_int_eq(fp_pool_apply_async(p, t_sleep_ms, &a, NULL, &busy), 0);
  ck_assert_int_eq(fp_pool_apply_async(p, t_sleep_ms, &a, &co, &queued), 0);
  ck_assert_int_eq(fp_result_cancel(queued), 0);
  ck_assert_int_eq(fp_result_get(queued, 30), FP_ECANCELED);
  ck_assert_int_eq(atomic_load(&errs), 1);
  ck_assert_int_eq(fp_result_get(busy, 30), 0);
  fp_result_free(busy);
  fp_result_free(queued);
  fp_pool_free(p);
  fp_writer_free(&a);
}
END_TEST

START_TEST(cancel_running_task_replaces_worker) {
  fp_pool *p = new_pool(1);
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i", (int64_t)60000);
  fp_result *r;
  fp_worker_info wi;
  ck_assert_int_eq(fp_pool_worker_info(p, 0, &wi), 0);
  pid_t before = wi.pid;
  ck_assert_int_eq(fp_pool_apply_async(p, t_sleep_ms, &a, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 0.1), FP_ETIMEDOUT);
  ck_assert_int_eq(fp_result_cancel(r), 0);
  ck_assert_int_eq(fp_result_get(r, 10), FP_ECANCELED);
  fp_result_free(r);
  /* The pool keeps serving on a replacement worker. */
  fp_writer o;
  fp_writer_init(&o);
  ck_assert_int_eq(fp_pool_apply(p, t_pid, NULL, &o), 0);
  fp_reader rd;
  int64_t pid;
  fp_reader_init(&rd, o.data, o.len);
  fp_read_int(&rd, &pid);
  ck_assert_int_ne(pid, before);
  fp_pool_free(p);
  fp_writer_free(&a);
  fp_writer_free(&o);
}
END_TEST

/* Tasks that run until the test opens the gate: a pipe made before the
 * pool, which every worker inherits; each gated task takes one byte. */
static int g_gate[2] = {-1, -1};

static int t_gated(fp_reader *args, fp_writer *out) {
  struct pollfd pfd = {g_gate[0], POLLIN, 0};
  char c;
  if (poll(&pfd, 1, 60000) != 1 || read(g_gate[0], &c, 1) != 1)
    return fp_task_fail("the gate never opened");
  if (c == 'k')
    abort(); /* its worker dies with placeholders in its queue */
  return fp_write_int(out, 1);
}

/* Counts its runs in memory shared with the test (item i: runs[i]). */
static _Atomic int *g_runs;

static int t_count_run(fp_reader *args, fp_writer *out) {
  int64_t i;
  int rc = fp_read_int(args, &i);
  if (rc != 0)
    return rc;
  atomic_fetch_add(&g_runs[i], 1);
  return fp_write_int(out, i);
}

/* A pool made with o that has run 300 one-item chunks: chunks measured
 * short, its workers' queues run deep. */
static fp_pool *pool_measuring_short_chunks(const fp_pool_opts *o) {
  fp_pool *p = NULL;
  ck_assert_int_eq(fp_pool_new(&p, o), 0);
  int64_t in[300], out[300];
  for (int i = 0; i < 300; i++)
    in[i] = i;
  fp_call_opts co = {0};
  co.chunksize = 1;
  ck_assert_int_eq(fp_pool_map(p, t_square, in, 300, 8, out, 8, &co), 0);
  return p;
}

/* Runs the scenario on a pool of three workers made with po (NULL: the
 * defaults), the long calls with long_co: returns the pool, the long
 * calls still running. */
static fp_pool *queue_behind_long_tasks(const fp_pool_opts *po,
                                        const fp_call_opts *long_co,
                                        fp_result **longs, int nshort,
                                        fp_result **shorts) {
  ck_assert_int_eq(pipe(g_gate), 0);
  g_runs = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                -1, 0);
  ck_assert_ptr_ne(g_runs, MAP_FAILED);
  fp_pool_opts o = po != NULL ? *po : (fp_pool_opts){0};
  o.processes = 3;
  fp_pool *p = pool_measuring_short_chunks(&o);
  for (int k = 0; k < 2; k++)
    ck_assert_int_eq(fp_pool_apply_async(p, t_gated, NULL, long_co, &longs[k]),
                     0);
  fp_writer a;
  fp_writer_init(&a);
  for (int i = 0; i < nshort; i++) {
    fp_writer_reset(&a);
    fp_write_int(&a, i);
    ck_assert_int_eq(fp_pool_apply_async(p, t_count_run, &a, NULL, &shorts[i]),
                     0);
  }
  fp_writer_free(&a);
  for (int i = 0; i < nshort; i++) {
    int rc = fp_result_get(shorts[i], 20);
    ck_assert_msg(rc == 0, "call %d: %s (%s): still queued behind a long task",
                  i, fp_err_name(rc), fp_result_error(shorts[i]));
  }
  ck_assert_int_eq(fp_result_ready(longs[0]) + fp_result_ready(longs[1]), 0);
  return p;
}

/* Lets the long calls end (gate: the two bytes for the gate, or NULL to
 * wait for their time limit) and checks each ended with want. */
static void end_long_calls(fp_result **longs, const char *gate, int want) {
  if (gate != NULL)
    ck_assert_int_eq(write(g_gate[1], gate, 2), 2);
  for (int k = 0; k < 2; k++) {
    int rc = fp_result_get(longs[k], 60);
    ck_assert_msg(rc == want, "long call %d: %s (%s)", k, fp_err_name(rc),
                  fp_result_error(longs[k]));
    fp_result_free(longs[k]);
  }
}

/* Ends the scenario: every short call ran exactly once. */
static void check_ran_once_and_free(fp_pool *p, int nshort,
                                    fp_result **shorts) {
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  for (int i = 0; i < nshort; i++) {
    ck_assert_int_eq(atomic_load(&g_runs[i]), 1);
    fp_result_free(shorts[i]);
  }
  fp_pool_free(p);
  munmap(g_runs, 4096);
  close(g_gate[0]);
  close(g_gate[1]);
}

/* Three workers, two tasks that last until the test lets them end, then
 * short calls: the adaptive queue depth spreads those over every worker,
 * behind the long ones too. They must all finish while the long ones
 * still run - the idle worker takes back what waits behind them - and
 * none may run twice, neither then nor when the long ones end and their
 * workers reach the frames they no longer own. */
enum { SHORT = 12 };

/* The whole scenario: the long calls end through gate (end_long_calls)
 * with want, and every short call ran once. */
static void move_calls_and_check(const fp_pool_opts *po,
                                 const fp_call_opts *long_co, const char *gate,
                                 int want) {
  fp_result *longs[2], *shorts[SHORT];
  fp_pool *p = queue_behind_long_tasks(po, long_co, longs, SHORT, shorts);
  end_long_calls(longs, gate, want);
  check_ran_once_and_free(p, SHORT, shorts);
}

START_TEST(calls_queued_behind_long_tasks_move_to_an_idle_worker) {
  move_calls_and_check(NULL, NULL, "xx", 0);
}
END_TEST

/* With maxtasksperchild, a worker counts the frames it answers without
 * running them as tasks, as the master counts them sent: the moved calls
 * cost no protocol violation ("RETIRE before maxtasksperchild") and no
 * lost call, through many replacements. */
START_TEST(moved_calls_count_towards_maxtasksperchild_on_both_sides) {
  fp_pool_opts po = {0};
  po.maxtasksperchild = 40;
  move_calls_and_check(&po, NULL, "xx", 0);
}
END_TEST

/* The long calls end by their time limit instead: they fail with
 * FP_ETIMEDOUT as any call over its limit, their workers are replaced,
 * and the calls moved off them ran once. */
START_TEST(moved_calls_run_once_when_the_long_ones_time_out) {
  fp_call_opts co = {0};
  co.timeout = 6; /* past the moves, even when valgrind runs the master */
  move_calls_and_check(NULL, &co, NULL, FP_ETIMEDOUT);
}
END_TEST

/* The same, and then the workers that held the moved calls die instead
 * of reaching them: the long calls fail with FP_EWORKER, the moved ones
 * have run once and only once, and the pool still serves. */
START_TEST(moved_calls_run_once_when_the_workers_they_left_die) {
  fp_result *longs[2], *shorts[SHORT];
  fp_pool *p = queue_behind_long_tasks(NULL, NULL, longs, SHORT, shorts);
  end_long_calls(longs, "kk", FP_EWORKER);
  fp_writer o;
  fp_writer_init(&o);
  ck_assert_int_eq(fp_pool_apply(p, t_pid, NULL, &o), 0);
  fp_writer_free(&o);
  check_ran_once_and_free(p, SHORT, shorts);
}
END_TEST

/* Runs for the milliseconds it is given: a chunk of known length. */
static int t_for_ms(fp_reader *args, fp_writer *out) {
  int64_t ms;
  int rc = fp_read_int(args, &ms);
  if (rc != 0)
    return rc;
  struct timespec ts = {0, (long)ms * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
  return fp_write_int(out, ms);
}

/* A callback that tells the test, through a pipe, that the pool thread
 * has taken its call's result in. */
static void note_taken(fp_result *res, void *arg) {
  (void)res;
  if (write(*(int *)arg, "t", 1) != 1)
    abort(); /* the test's pipe: cannot fill up */
}

/* A worker with chunks queued behind the one it runs lets that one's
 * result wait in its ring for the pool thread to look (pool.md 7); when
 * the next chunk is a long one, the pool thread must still look soon:
 * the result must not wait for the long chunk, nor for the pool's slow
 * 100 ms look. One worker: a gated call it runs first, then a 5 ms call
 * whose result is watched (its callback runs when the pool thread takes
 * it), then a gated call and another one queued behind it. Nobody polls
 * meanwhile: the test thread sleeps in poll() on the callback's pipe. */
START_TEST(a_result_does_not_wait_for_the_long_chunk_after_it) {
  enum { ROUNDS = 8 };
  int note[2];
  ck_assert_int_eq(pipe(g_gate), 0);
  ck_assert_int_eq(pipe(note), 0);
  fp_pool_opts o = {0};
  o.processes = 1;
  o.inflight = 16;
  fp_pool *p = pool_measuring_short_chunks(&o);
  fp_call_opts watched = {0};
  watched.callback = note_taken;
  watched.arg = &note[1];
  fp_writer five;
  fp_writer_init(&five);
  fp_write_int(&five, 5);
  for (int r = 0; r < ROUNDS; r++) {
    fp_result *rs[4];
    ck_assert_int_eq(fp_pool_apply_async(p, t_gated, NULL, NULL, &rs[0]), 0);
    ck_assert_int_eq(fp_pool_apply_async(p, t_for_ms, &five, &watched, &rs[1]),
                     0);
    ck_assert_int_eq(fp_pool_apply_async(p, t_gated, NULL, NULL, &rs[2]), 0);
    ck_assert_int_eq(fp_pool_apply_async(p, t_for_ms, &five, NULL, &rs[3]), 0);
    double t0 = now_s();
    ck_assert_int_eq(write(g_gate[1], "x", 1), 1); /* the first one ends */
    struct pollfd pfd = {note[0], POLLIN, 0};
    ck_assert_int_eq(poll(&pfd, 1, 60000), 1);
    double waited = now_s() - t0;
    char c;
    ck_assert_int_eq(read(note[0], &c, 1), 1);
    ck_assert_int_eq(fp_result_ready(rs[2]), 0); /* the long one still runs */
    /* 5 ms of work, then a look every 2 ms; valgrind slows everything. */
    if (!fp_test_under_valgrind())
      ck_assert_msg(waited < 0.030,
                    "round %d: the 5 ms call's result "
                    "was taken in after %.1f ms",
                    r, waited * 1e3);
    ck_assert_int_eq(write(g_gate[1], "x", 1), 1);
    for (int k = 0; k < 4; k++) {
      ck_assert_int_eq(fp_result_get(rs[k], 60), 0);
      fp_result_free(rs[k]);
    }
  }
  fp_writer_free(&five);
  fp_pool_free(p);
  close(note[0]);
  close(note[1]);
  close(g_gate[0]);
  close(g_gate[1]);
}
END_TEST

/* ---- map ----------------------------------------------------------------- */

START_TEST(map_million_int64_correct) {
  size_t n = fp_test_under_valgrind() ? 20000 : 1000000;
  int64_t *in = malloc(n * sizeof(*in)), *out = calloc(n, sizeof(*out));
  for (size_t i = 0; i < n; i++)
    in[i] = (int64_t)i - 500;
  fp_pool *p = new_pool(2);
  ck_assert_int_eq(fp_pool_map(p, t_square, in, n, 8, out, 8, NULL), 0);
  for (size_t i = 0; i < n; i++)
    ck_assert_int_eq(out[i], in[i] * in[i]);
  /* Explicit chunk sizes, including 1 and larger than n. */
  size_t sizes[] = {1, 7, n + 5};
  for (int k = 0; k < 3; k++) {
    size_t m = k == 0 ? 2000 : n;
    fp_call_opts co = {0};
    co.chunksize = sizes[k];
    memset(out, 0, n * sizeof(*out));
    ck_assert_int_eq(fp_pool_map(p, t_square, in, m, 8, out, 8, &co), 0);
    for (size_t i = 0; i < m; i++)
      ck_assert_int_eq(out[i], in[i] * in[i]);
  }
  fp_pool_free(p);
  free(in);
  free(out);
}
END_TEST

START_TEST(map_empty_input_sends_nothing) {
  fp_pool *p = new_pool(1);
  ck_assert_int_eq(fp_pool_map(p, t_square, NULL, 0, 8, NULL, 8, NULL), 0);
  fp_result *r;
  ck_assert_int_eq(
      fp_pool_map_async(p, t_square, NULL, 0, 8, NULL, 8, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 10), 0);
  fp_result_free(r);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  ck_assert_int_eq(fp_pool_map_values(p, t_ident, &items, &out, NULL), 0);
  ck_assert_int_eq(out.len, 0);
  ck_assert_int_eq(fp_pool_map_values(p, t_ident, NULL, &out, NULL), 0);
  ck_assert_int_eq(fp_pool_starmap(p, t_ident, NULL, &out, NULL), 0);
  ck_assert_int_eq(out.len, 0);
  fp_worker_info wi;
  fp_pool_worker_info(p, 0, &wi);
  ck_assert_int_eq(wi.tasks, 0);
  fp_pool_free(p);
  fp_writer_free(&items);
  fp_writer_free(&out);
}
END_TEST

/* in_size or out_size 0: fn has nothing to read, or nothing to write. */
static int t_write_42(const void *in, void *out) {
  (void)in;
  *(int64_t *)out = 42;
  return 0;
}

static int t_check_42(const void *in, void *out) {
  (void)out;
  return *(const int64_t *)in == 42 ? 0 : fp_task_fail("not 42");
}

START_TEST(map_with_zero_sized_input_or_output) {
  fp_pool *p = new_pool(2);
  int64_t out[100], in[100];
  for (int i = 0; i < 100; i++)
    out[i] = -1, in[i] = 42;
  ck_assert_int_eq(fp_pool_map(p, t_write_42, NULL, 100, 0, out, 8, NULL), 0);
  for (int i = 0; i < 100; i++)
    ck_assert_int_eq(out[i], 42);
  ck_assert_int_eq(fp_pool_map(p, t_check_42, in, 100, 8, NULL, 0, NULL), 0);
  in[57] = 0;
  ck_assert_int_eq(fp_pool_map(p, t_check_42, in, 100, 8, NULL, 0, NULL),
                   FP_ETASK);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "item 57"));
  fp_pool_free(p);
}
END_TEST

START_TEST(map_failure_names_lowest_item_and_completes_others) {
  enum { N = 1000 };
  int64_t in[N], out[N];
  for (int i = 0; i < N; i++) {
    in[i] = i;
    out[i] = 12345;
  }
  fp_pool *p = new_pool(2);
  fp_call_opts co = {0};
  co.chunksize = 10;
  ck_assert_int_eq(fp_pool_map(p, t_fail_odd, in, N, 8, out, 8, &co), FP_ETASK);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "item 11"));
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "odd value 11"));
  for (int i = 0; i < N; i++)
    if (!(i % 2 == 1 && i > 10))
      ck_assert_int_eq(out[i], -i);
  fp_result *r;
  ck_assert_int_eq(fp_pool_map_async(p, t_fail_odd, in, N, 8, out, 8, &co, &r),
                   0);
  ck_assert_int_eq(fp_result_get(r, 30), FP_ETASK);
  ck_assert_int_eq(fp_result_error_index(r), 11);
  fp_result_free(r);
  /* A positive return is FP_ETASK, and the message says what it was. */
  ck_assert_int_eq(fp_pool_map(p, t_returns_7, in, 1, 8, out, 8, NULL),
                   FP_ETASK);
  ck_assert_msg(strstr(fp_last_error(), "item 0: task returned 7") != NULL,
                "%s", fp_last_error());
  fp_pool_free(p);
}
END_TEST

START_TEST(map_rejects_bad_arguments) {
  fp_pool *p = new_pool(1);
  int64_t x = 0, y = 0;
  fp_result *r;
  ck_assert_int_eq(fp_pool_map(p, NULL, &x, 1, 8, &y, 8, NULL), FP_EINVAL);
  ck_assert_int_eq(fp_pool_map(p, t_square, NULL, 1, 8, &y, 8, NULL),
                   FP_EINVAL);
  ck_assert_int_eq(fp_pool_map(p, t_square, &x, 1, 8, NULL, 8, NULL),
                   FP_EINVAL);
  ck_assert_int_eq(
      fp_pool_map(p, t_square, &x, 1, (size_t)1 << 40, &y, 8, NULL), FP_EINVAL);
  ck_assert_int_eq(fp_pool_map_async(p, t_square, &x, 1, 8, &y, 8, NULL, NULL),
                   FP_EINVAL);
  fp_call_opts co = {0};
  co.on_crash = 99;
  ck_assert_int_eq(fp_pool_map_async(p, t_square, &x, 1, 8, &y, 8, &co, &r),
                   FP_EINVAL);
  fp_pool_free(p);
}
END_TEST

START_TEST(map_values_keeps_order) {
  fp_pool *p = new_pool(2);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  const char *words[] = {"alpha", "beta", "", "gamma delta", "z"};
  for (int k = 0; k < 200; k++)
    for (int i = 0; i < 5; i++)
      fp_write_str(&items, words[i]);
  ck_assert_int_eq(fp_pool_map_values(p, t_upper, &items, &out, NULL), 0);
  fp_reader rd;
  fp_reader_init(&rd, out.data, out.len);
  const char *upper[] = {"ALPHA", "BETA", "", "GAMMA DELTA", "Z"};
  for (int k = 0; k < 200; k++)
    for (int i = 0; i < 5; i++) {
      const char *s;
      ck_assert_int_eq(fp_read_str(&rd, &s, NULL), 0);
      ck_assert_str_eq(s, upper[i]);
    }
  ck_assert_int_eq(fp_reader_at_end(&rd), 1);
  /* Async form: items are copied at the call. */
  fp_result *r;
  ck_assert_int_eq(fp_pool_map_values_async(p, t_upper, &items, NULL, &r), 0);
  fp_writer_free(&items);
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  ck_assert_int_eq(fp_result_value(r, &rd), 0);
  size_t n = 0;
  while (!fp_reader_at_end(&rd)) {
    ck_assert_int_eq(fp_read_skip(&rd), 0);
    n++;
  }
  ck_assert_int_eq(n, 1000);
  fp_result_free(r);
  /* Malformed input is rejected before any work is sent. */
  fp_writer_reset(&out);
  fp_writer bad = {0};
  unsigned char junk[] = {0x42, 1, 2};
  bad.data = junk;
  bad.len = sizeof(junk);
  ck_assert_int_eq(fp_pool_map_values(p, t_upper, &bad, &out, NULL), FP_EPROTO);
  fp_pool_free(p);
  fp_writer_free(&out);
}
END_TEST

/* Large values take the buffer-stealing path in the master (results of
 * 64 KiB and more); mix them with small ones in one stream. */
START_TEST(large_payloads_round_trip) {
  fp_pool *p = new_pool(2);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  size_t sizes[] = {1 << 20, 10, 70000, 3, (size_t)1 << 20, 65536, 0, 200000};
  enum { K = sizeof(sizes) / sizeof(sizes[0]) };
  for (int rep = 0; rep < 3; rep++)
    for (int k = 0; k < K; k++) {
      void *dst;
      ck_assert_int_eq(fp_write_bytes_begin(&items, sizes[k], &dst), 0);
      memset(dst, 'a' + k, sizes[k]);
    }
  fp_call_opts co = {0};
  co.chunksize = 1;
  for (int mode = 0; mode < 3; mode++) {
    fp_reader rd;
    fp_iter *it = NULL;
    fp_result *r = NULL;
    fp_writer_reset(&out);
    if (mode == 0) {
      ck_assert_int_eq(fp_pool_map_values(p, t_ident, &items, &out, &co), 0);
      fp_reader_init(&rd, out.data, out.len);
    } else if (mode == 1) {
      ck_assert_int_eq(fp_pool_map_values_async(p, t_ident, &items, NULL, &r),
                       0);
      ck_assert_int_eq(fp_result_get(r, 60), 0);
      ck_assert_int_eq(fp_result_value(r, &rd), 0);
    } else {
      ck_assert_int_eq(fp_pool_imap(p, t_ident, &items, NULL, &it), 0);
    }
    for (int rep = 0; rep < 3; rep++)
      for (int k = 0; k < K; k++) {
        const void *v;
        size_t n;
        if (mode == 2)
          ck_assert_int_eq(fp_iter_next(it, &rd, 60), 0);
        ck_assert_int_eq(fp_read_bytes(&rd, &v, &n), 0);
        ck_assert_uint_eq(n, sizes[k]);
        for (size_t i = 0; i < n; i += 4093)
          ck_assert_int_eq(((const char *)v)[i], 'a' + k);
      }
    fp_iter_free(it);
    fp_result_free(r);
  }
  /* Many large results back to back: a result frame that takes its read
   * buffer often has the next frame's first bytes behind it, which must
   * be saved before the blocking call frees the buffer (a use-after-free
   * that ASan reports, caught by the benchmark first). */
  fp_writer_reset(&items);
  for (int k = 0; k < 96; k++) {
    void *d;
    ck_assert_int_eq(fp_write_bytes_begin(&items, 70000 + 4093 * (size_t)k, &d),
                     0);
    memset(d, k, 70000 + 4093 * (size_t)k);
  }
  for (int rep = 0; rep < 3; rep++) {
    fp_writer_reset(&out);
    ck_assert_int_eq(fp_pool_map_values(p, t_ident, &items, &out, &co), 0);
    ck_assert_uint_eq(out.len, items.len);
    ck_assert_int_eq(memcmp(out.data, items.data, out.len), 0);
  }
  /* One 16 MiB value through apply. */
  fp_writer_reset(&items);
  void *dst;
  ck_assert_int_eq(fp_write_bytes_begin(&items, (size_t)16 << 20, &dst), 0);
  memset(dst, 'z', (size_t)16 << 20);
  fp_writer_reset(&out);
  ck_assert_int_eq(fp_pool_apply(p, t_ident, &items, &out), 0);
  ck_assert_uint_eq(out.len, items.len);
  ck_assert_int_eq(memcmp(out.data, items.data, out.len), 0);
  fp_pool_free(p);
  fp_writer_free(&items);
  fp_writer_free(&out);
}
END_TEST

START_TEST(starmap_over_packed_tuples) {
  fp_pool *p = new_pool(2);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  enum { N = 10000 };
  for (int i = 0; i < N; i++)
    fp_pack(&items, "[ i i ]", (int64_t)i, (int64_t)(2 * i));
  ck_assert_int_eq(fp_pool_starmap(p, t_add, &items, &out, NULL), 0);
  fp_reader rd;
  fp_reader_init(&rd, out.data, out.len);
  for (int i = 0; i < N; i++) {
    int64_t v;
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, 3 * i);
  }
  fp_result *r;
  ck_assert_int_eq(fp_pool_starmap_async(p, t_add, &items, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  fp_result_free(r);
  /* A non-tuple item: FP_ETYPE before any work. */
  fp_write_int(&items, 5);
  ck_assert_int_eq(fp_pool_starmap(p, t_add, &items, &out, NULL), FP_ETYPE);
  fp_pool_free(p);
  fp_writer_free(&items);
  fp_writer_free(&out);
}
END_TEST

START_TEST(task_sees_index_and_worker_id) {
  ck_assert_int_eq(fp_task_index(), -1);
  ck_assert_int_eq(fp_task_worker_id(), -1);
  fp_pool *p = new_pool(2);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  for (int i = 0; i < 100; i++)
    fp_write_nil(&items);
  ck_assert_int_eq(fp_pool_map_values(p, t_index_worker, &items, &out, NULL),
                   0);
  fp_reader rd;
  fp_reader_init(&rd, out.data, out.len);
  for (int i = 0; i < 100; i++) {
    int64_t idx, wid;
    ck_assert_int_eq(fp_unpack(&rd, "[ i i ]", &idx, &wid), 0);
    ck_assert_int_eq(idx, i);
    ck_assert(wid == 0 || wid == 1);
  }
  fp_pool_free(p);
  fp_writer_free(&items);
  fp_writer_free(&out);
}
END_TEST

/* ---- imap ---------------------------------------------------------------- */

START_TEST(imap_in_order) {
  fp_pool *p = new_pool(2);
  fp_writer items;
  fp_writer_init(&items);
  int n = fp_test_under_valgrind() ? 2000 : 100000;
  for (int i = 0; i < n; i++)
    fp_write_int(&items, i);
  fp_iter *it;
  fp_call_opts co = {0};
  co.chunksize = 16;
  ck_assert_int_eq(fp_pool_imap(p, t_ident, &items, &co, &it), 0);
  fp_writer_free(&items); /* copied */
  fp_reader rd;
  for (int i = 0; i < n; i++) {
    int64_t v;
    ck_assert_int_eq(fp_iter_next(it, &rd, 30), 0);
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, i);
    ck_assert_int_eq(fp_iter_index(it), i);
  }
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  fp_iter_free(it);
  fp_pool_free(p);
}
END_TEST

START_TEST(imap_unordered_exactly_once) {
  fp_pool *p = new_pool(2);
  fp_writer items;
  fp_writer_init(&items);
  int n = fp_test_under_valgrind() ? 2000 : 100000;
  for (int i = 0; i < n; i++)
    fp_write_int(&items, i);
  fp_iter *it;
  ck_assert_int_eq(fp_pool_imap_unordered(p, t_ident, &items, NULL, &it), 0);
  char *seen = calloc((size_t)n, 1);
  fp_reader rd;
  int count = 0, rc;
  while ((rc = fp_iter_next(it, &rd, 30)) == 0) {
    int64_t v;
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert(v >= 0 && v < n);
    ck_assert_int_eq(seen[v], 0);
    ck_assert_int_eq(fp_iter_index(it), v);
    seen[v] = 1;
    count++;
  }
  ck_assert_int_eq(rc, FP_EOF);
  ck_assert_int_eq(count, n);
  free(seen);
  fp_iter_free(it);
  fp_pool_free(p);
  fp_writer_free(&items);
}
END_TEST

START_TEST(imap_item_failure_continues) {
  fp_pool *p = new_pool(2);
  fp_writer items;
  fp_writer_init(&items);
  for (int i = 0; i < 10; i++) {
    if (i == 4)
      fp_write_str(&items, "bad");
    else
      fp_pack(&items, "[ i i ]", (int64_t)i, (int64_t)i);
  }
  fp_iter *it;
  ck_assert_int_eq(fp_pool_imap(p, t_ident, &items, NULL, &it), 0);
  fp_iter_free(it); /* freeing early cancels the rest */
  fp_writer_reset(&items);
  for (int i = 0; i < 10; i++)
    fp_write_int(&items, i == 4 ? -1 : i);
  /* t_add needs two ints in one args reader: single ints fail. Use a
   * starmap-like task through imap over lists instead. */
  fp_writer_reset(&items);
  for (int i = 0; i < 10; i++) {
    if (i == 4)
      fp_write_str(&items, "bad");
    else
      fp_write_int(&items, i);
  }
  ck_assert_int_eq(fp_pool_imap(p, t_upper, &items, NULL, &it), 0);
  fp_reader rd;
  for (int i = 0; i < 10; i++) {
    int rc = fp_iter_next(it, &rd, 30);
    if (i == 4) {
      ck_assert_int_eq(rc, 0); /* "bad" is a string: fine */
    } else {
      ck_assert_int_eq(rc, FP_ETYPE);
      ck_assert_ptr_nonnull(strstr(fp_iter_error(it), "item"));
    }
  }
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  fp_iter_free(it);
  ck_assert_int_eq(fp_iter_next(NULL, &rd, 0), FP_EINVAL);
  fp_iter_free(NULL);
  fp_pool_free(p);
  fp_writer_free(&items);
}
END_TEST

typedef struct counter_src {
  int64_t next, end;
} counter_src;

static int produce(void *arg, fp_writer *w) {
  counter_src *s = arg;
  if (s->next >= s->end)
    return 0;
  fp_write_int(w, s->next++);
  return 1;
}

static int produce_fail(void *arg, fp_writer *w) {
  counter_src *s = arg;
  if (s->next == 50)
    return FP_EPROTO;
  fp_write_int(w, s->next++);
  return 1;
}

static long vm_hwm_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (f && fgets(line, sizeof(line), f))
    if (sscanf(line, "VmHWM: %ld", &kb) == 1)
      break;
  if (f)
    fclose(f);
  return kb;
}

START_TEST(imap_producer_bounded_memory) {
  int64_t n = fp_test_under_valgrind()    ? 20000
              : fp_test_under_sanitizer() ? 1000000
                                          : 5000000;
  fp_pool *p = new_pool(2);
  counter_src src = {0, n};
  fp_call_opts co = {0};
  co.chunksize = 1024;
  fp_iter *it;
  long before = vm_hwm_kb();
  ck_assert_int_eq(fp_pool_imap_producer(p, t_ident, produce, &src, &co, &it),
                   0);
  fp_reader rd;
  int64_t i = 0, v;
  int rc;
  while ((rc = fp_iter_next(it, &rd, 60)) == 0) {
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, i);
    i++;
  }
  ck_assert_int_eq(rc, FP_EOF);
  ck_assert_int_eq(i, n);
  long after = vm_hwm_kb();
  /* 5 M items are ~45 MB encoded, more than the bound below (10 M took
   * 95 s of its 120 s limit on a loaded machine); bounded read-ahead
   * keeps the peak within a few MB of where it started. */
  if (!fp_test_under_sanitizer()) /* ASan's quarantine holds freed memory */
    ck_assert_msg(after - before < 32 * 1024, "peak RSS grew by %ld kB",
                  after - before);
  fp_iter_free(it);
  /* A producer error ends the iteration with its code. */
  counter_src bad = {0, 1000};
  ck_assert_int_eq(fp_pool_imap_unordered_producer(p, t_ident, produce_fail,
                                                   &bad, NULL, &it),
                   0);
  int got = 0;
  while ((rc = fp_iter_next(it, &rd, 30)) == 0)
    got++;
  ck_assert_int_eq(rc, FP_EPROTO);
  ck_assert_int_le(got, 50);
  fp_iter_free(it);
  ck_assert_int_eq(fp_pool_imap_producer(p, t_ident, NULL, &src, NULL, &it),
                   FP_EINVAL);
  fp_pool_free(p);
}
END_TEST

/* A map whose every item fails reports one message (the lowest item's):
 * the master keeps no copy of the others' (it used to, for the whole
 * call: ~1 GB for 2 M items with 400-byte messages). item_status keeps
 * codes only. */
static int e_fail_long(const void *in, void *out) {
  (void)in;
  (void)out;
  return fp_task_fail("%0400d", 7);
}

START_TEST(failing_items_keep_no_message_but_the_first) {
  size_t n = fp_test_under_valgrind() ? 20000 : 1000000;
  int64_t *in = calloc(n, sizeof(*in)), *out = calloc(n, sizeof(*out));
  int *status = calloc(n, sizeof(*status));
  ck_assert(in != NULL && out != NULL && status != NULL);
  memset(out, 1, n * sizeof(*out)); /* touched before the measure */
  memset(status, 1, n * sizeof(*status));
  fp_pool *p = new_pool(2);
  long before = vm_hwm_kb();
  fp_assert_says(
      fp_pool_map(p, e_fail_long, in, n, sizeof(*in), out, sizeof(*out), NULL),
      FP_ETASK, "item 0: 0000");
  fp_call_opts co = {.item_status = status};
  ck_assert_int_eq(
      fp_pool_map(p, e_fail_long, in, n, sizeof(*in), out, sizeof(*out), &co),
      0);
  for (size_t i = 0; i < n; i++)
    ck_assert_int_eq(status[i], FP_ETASK);
  long after = vm_hwm_kb();
  /* 1 M messages of 400 bytes would be 400 MB; chunk records and result
   * buffers in flight take a few MB. */
  if (!fp_test_under_sanitizer() && !fp_test_under_valgrind())
    ck_assert_msg(after - before < 64 * 1024, "peak RSS grew by %ld kB",
                  after - before);
  fp_pool_free(p);
  free(in);
  free(out);
  free(status);
}
END_TEST

/* fp_pool_join after close reads the rest of a producer imap's input on
 * its own thread while another thread still consumes the iterator: every
 * item arrives once, in order, and (under TSan) nothing races. */
typedef struct slow_src {
  atomic_long next;
  long end;
} slow_src;

static int produce_slowly(void *arg, fp_writer *w) {
  slow_src *s = arg;
  fp_test_spin_us(100); /* a producer that takes a little while per item */
  long i = atomic_load(&s->next);
  if (i >= s->end)
    return 0;
  atomic_store(&s->next, i + 1);
  return fp_write_int(w, i) == 0 ? 1 : -1;
}

typedef struct consumer_arg {
  fp_iter *it;
  atomic_long taken;
  long bad;
  int rc;
} consumer_arg;

static void *consume_all(void *arg) {
  consumer_arg *c = arg;
  fp_reader rd;
  int64_t v;
  while ((c->rc = fp_iter_next(c->it, &rd, 60)) == 0) {
    long k = atomic_load(&c->taken);
    c->bad += fp_read_int(&rd, &v) != 0 || v != k;
    atomic_store(&c->taken, k + 1);
  }
  return NULL;
}

START_TEST(imap_producer_consumed_while_join_reads_the_rest) {
  fp_pool *p = new_pool(2);
  slow_src src = {0, 400};
  fp_call_opts co = {0};
  co.readahead = 2;
  consumer_arg c = {0};
  ck_assert_int_eq(
      fp_pool_imap_producer(p, t_ident, produce_slowly, &src, &co, &c.it), 0);
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, consume_all, &c), 0);
  /* Close once the consumer is under way (bounded wait on its count). */
  for (int k = 0; k < 20000 && atomic_load(&c.taken) < 10; k++)
    sched_yield();
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  pthread_join(t, NULL);
  ck_assert_int_eq(c.rc, FP_EOF);
  ck_assert_int_eq(atomic_load(&c.taken), 400);
  ck_assert_int_eq(c.bad, 0);
  fp_iter_free(c.it);
  fp_pool_free(p);
}
END_TEST

/* A producer that writes a value and then says "end", or writes two
 * values, breaks the chunk: the iteration ends with FP_EPROTO, and no
 * worker ever sees the broken chunk (sent, it killed worker after
 * worker). One that resets its writer first is fine: `item` is its own,
 * empty at each call, so nothing it does reaches the chunk's earlier
 * items (before, a reset and a longer write replaced one unnoticed). */
static int produce_then_end(void *arg, fp_writer *w) {
  counter_src *s = arg;
  fp_write_int(w, s->next++);
  return s->next <= s->end;
}

static int produce_two(void *arg, fp_writer *w) {
  counter_src *s = arg;
  fp_write_int(w, s->next++);
  fp_write_int(w, s->next++);
  return 1;
}

static int produce_and_reset(void *arg, fp_writer *w) {
  counter_src *s = arg;
  if (s->next >= s->end)
    return 0;
  fp_writer_reset(w);
  fp_write_int(w, 10000); /* "overwrites" an earlier item, if it could */
  fp_writer_reset(w);
  fp_write_int(w, s->next++);
  return 1;
}

START_TEST(imap_producer_protocol_breaches_end_with_eproto) {
  fp_pool *p = new_pool(2);
  fp_producer_fn bad[] = {produce_then_end, produce_two};
  for (int k = 0; k < 2; k++) {
    counter_src src = {0, 5};
    fp_call_opts co = {0};
    co.chunksize = 4;
    fp_iter *it;
    fp_reader rd;
    ck_assert_int_eq(fp_pool_imap_producer(p, t_ident, bad[k], &src, &co, &it),
                     0);
    int rc, got = 0;
    while ((rc = fp_iter_next(it, &rd, 30)) == 0)
      got++;
    ck_assert_int_eq(rc, FP_EPROTO);
    ck_assert_ptr_nonnull(strstr(fp_iter_error(it), "producer"));
    ck_assert_int_le(got, 4);
    fp_iter_free(it);
  }
  for (int w = 0; w < 2; w++) {
    fp_worker_info wi;
    ck_assert_int_eq(fp_pool_worker_info(p, w, &wi), 0);
    ck_assert_uint_eq(wi.restarts, 0);
  }
  /* Resets of its own item change nothing else: items in order. */
  {
    counter_src src = {0, 20};
    fp_call_opts co = {0};
    co.chunksize = 8;
    fp_iter *it;
    fp_reader rd;
    int64_t v;
    ck_assert_int_eq(
        fp_pool_imap_producer(p, t_ident, produce_and_reset, &src, &co, &it),
        0);
    for (int64_t i = 0; i < 20; i++) {
      ck_assert_int_eq(fp_iter_next(it, &rd, 30), 0);
      ck_assert_int_eq(fp_read_int(&rd, &v), 0);
      ck_assert_int_eq(v, i);
    }
    ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
    fp_iter_free(it);
  }
  /* SIZE_MAX read-ahead is no bound (it was a negative one). */
  counter_src src = {0, 100};
  fp_call_opts co = {0};
  co.readahead = SIZE_MAX;
  fp_iter *it;
  fp_reader rd;
  ck_assert_int_eq(fp_pool_imap_producer(p, t_ident, produce, &src, &co, &it),
                   0);
  int rc, got = 0;
  while ((rc = fp_iter_next(it, &rd, 30)) == 0)
    got++;
  ck_assert_int_eq(rc, FP_EOF);
  ck_assert_int_eq(got, 100);
  fp_iter_free(it);
  fp_pool_free(p);
}
END_TEST

/* ---- progress callbacks ---------------------------------------------- */

/* About half a millisecond of work per item, so a job of a few hundred
 * items spans several of the reporter's 0.1 s ticks. */
static int e_work(const void *in, void *out) {
  fp_test_spin_us(500);
  *(int64_t *)out = *(const int64_t *)in * 2;
  return 0;
}

typedef struct probe {
  fp_pool *pool;
  pthread_t caller;
  int calls, on_caller, info_rc, async_rc, blocking_rc;
  int64_t last_done, last_total;
} probe;

/* Calls the pool from the hook: it runs without the pool's lock held. */
static void on_progress(int64_t done, int64_t total, double elapsed,
                        void *arg) {
  probe *pp = arg;
  (void)elapsed;
  pp->calls++;
  pp->on_caller += pthread_equal(pthread_self(), pp->caller) != 0;
  fp_worker_info wi;
  pp->info_rc = fp_pool_worker_info(pp->pool, 0, &wi);
  fp_result *r;
  fp_writer args;
  fp_writer_init(&args);
  fp_write_int(&args, 7);
  pp->async_rc = fp_pool_apply_async(pp->pool, t_ident, &args, NULL, &r);
  if (pp->async_rc == 0)
    fp_result_free(r);
  fp_writer_free(&args);
  int64_t x = 1;
  pp->blocking_rc = fp_pool_map(pp->pool, t_square, &x, 1, 8, &x, 8, NULL);
  pp->last_done = done;
  pp->last_total = total;
}

START_TEST(progress_callback_runs_on_the_pool_thread_and_may_call_it) {
  probe pp = {.caller = pthread_self()};
  fp_pool_opts o = {0};
  o.processes = 2;
  o.progress_cb = on_progress;
  o.progress_arg = &pp;
  ck_assert_int_eq(fp_pool_new(&pp.pool, &o), 0);
  enum { N = 400 };
  static int64_t in[N], out[N];
  for (int i = 0; i < N; i++)
    in[i] = i;
  fp_call_opts co = {0};
  co.progress = FP_PROGRESS_CALLBACK;
  co.chunksize = 4;
  /* Blocking, async, and async while the caller takes results in. */
  for (int round = 0; round < 3; round++) {
    pp.calls = pp.on_caller = 0;
    pp.last_done = -1;
    if (round == 0) {
      ck_assert_int_eq(fp_pool_map(pp.pool, e_work, in, N, 8, out, 8, &co), 0);
    } else {
      fp_result *r;
      ck_assert_int_eq(
          fp_pool_map_async(pp.pool, e_work, in, N, 8, out, 8, &co, &r), 0);
      ck_assert_int_eq(fp_result_get(r, round == 1 ? 60 : FP_FOREVER), 0);
      fp_result_free(r);
    }
    /* The last call came before the result was ready. */
    ck_assert_int_eq(pp.last_done, N);
    ck_assert_int_eq(pp.last_total, N);
    ck_assert_int_ge(pp.calls, 2);
    ck_assert_int_eq(pp.on_caller, 0);
    ck_assert_int_eq(pp.info_rc, 0);
    ck_assert_int_eq(pp.async_rc, 0);
    ck_assert_int_eq(pp.blocking_rc, FP_EINVAL);
    ck_assert_int_eq(out[N - 1], 2 * (N - 1));
  }
  fp_pool_free(pp.pool);
}
END_TEST

/* Final progress calls of jobs that end off the pool thread without a
 * result: an empty imap (done at submission) and a producer-fed imap
 * whose producer ends at once. */
static pthread_mutex_t final_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t final_cv = PTHREAD_COND_INITIALIZER;
static int final_calls;

static void count_final(int64_t done, int64_t total, double elapsed,
                        void *arg) {
  (void)done, (void)total, (void)elapsed, (void)arg;
  pthread_mutex_lock(&final_mu);
  final_calls++;
  pthread_cond_broadcast(&final_cv);
  pthread_mutex_unlock(&final_mu);
}

/* Waits up to 10 s for the final_calls-th call. */
static int final_call_came(int want) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 10;
  pthread_mutex_lock(&final_mu);
  while (final_calls < want &&
         pthread_cond_timedwait(&final_cv, &final_mu, &until) == 0)
    ;
  int came = final_calls >= want;
  pthread_mutex_unlock(&final_mu);
  return came;
}

static int no_items(void *arg, fp_writer *item) {
  (void)arg, (void)item;
  return 0;
}

/* An imap that ends before any item (empty input, or a producer that
 * ends at once) still gets its final progress call, on the pool thread,
 * while the pool goes on idle: nothing else was due to wake that thread,
 * and the call waited for the next job or for close + join. */
/* A pool of one worker whose jobs report progress as `mode` says, to cb. */
static fp_pool *progress_pool(fp_progress_mode mode, fp_progress_fn cb) {
  fp_pool_opts o = {0};
  o.processes = 1;
  o.progress = mode;
  o.progress_cb = cb;
  fp_pool *p;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  return p;
}

START_TEST(empty_imap_gets_its_final_progress_call_promptly) {
  fp_pool *p = progress_pool(FP_PROGRESS_CALLBACK, count_final);
  fp_writer none;
  fp_writer_init(&none);
  fp_reader rd;
  for (int k = 0; k < 2; k++) {
    fp_iter *it;
    if (k == 0)
      ck_assert_int_eq(fp_pool_imap(p, t_ident, &none, NULL, &it), 0);
    else
      ck_assert_int_eq(
          fp_pool_imap_producer(p, t_ident, no_items, NULL, NULL, &it), 0);
    ck_assert_int_eq(fp_iter_next(it, &rd, 10), FP_EOF);
    ck_assert_msg(final_call_came(k + 1), "imap %d: no final progress call", k);
    fp_iter_free(it);
  }
  fp_writer_free(&none);
  fp_pool_free(p);
}
END_TEST

/* A refused call has no job: no progress line, no progress callback
 * (which ran on the caller's thread before, and recursed until the stack
 * overflowed when it submitted again). */
static int refused_cb_calls;
static void count_progress(int64_t done, int64_t total, double elapsed,
                           void *arg) {
  (void)done, (void)total, (void)elapsed, (void)arg;
  refused_cb_calls++;
}

START_TEST(refused_calls_report_no_progress) {
  fp_pool *p = progress_pool(FP_PROGRESS_LINES, count_progress);
  ck_assert_int_eq(fp_pool_close(p), 0);
  int fds[2];
  ck_assert_int_eq(pipe(fds), 0);
  int saved = dup(STDERR_FILENO);
  ck_assert_int_ge(saved, 0);
  ck_assert_int_eq(dup2(fds[1], STDERR_FILENO), STDERR_FILENO);
  close(fds[1]);
  fp_writer args;
  fp_writer_init(&args);
  fp_write_int(&args, 7);
  fp_result *r = NULL;
  int64_t x = 1;
  int rc_async = fp_pool_apply_async(p, t_ident, &args, NULL, &r);
  int rc_apply = fp_pool_apply(p, t_ident, &args, NULL);
  int rc_map = fp_pool_map(p, t_square, &x, 1, 8, &x, 8, NULL);
  dup2(saved, STDERR_FILENO);
  close(saved);
  fp_writer_free(&args);
  char buf[256];
  ck_assert_int_eq(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
  ssize_t n = read(fds[0], buf, sizeof(buf));
  close(fds[0]);
  ck_assert_int_eq(rc_async, FP_ECLOSED);
  ck_assert_ptr_null(r);
  ck_assert_int_eq(rc_apply, FP_ECLOSED);
  ck_assert_int_eq(rc_map, FP_ECLOSED);
  ck_assert_msg(n <= 0, "printed: %.*s", (int)n, buf);
  ck_assert_int_eq(refused_cb_calls, 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  fp_pool_free(p);
}
END_TEST

/* Progress lines to a stderr whose reader is gone: the write fails with
 * EPIPE, and SIGPIPE (raised on whichever thread writes, the caller's
 * too) must not kill the program. */
/* Runs n small maps with progress lines on a new pool, each bounded to
 * 10 s (FP_ETIMEDOUT: the pool blocked); returns the first error, and in
 * *k how many maps ran. */
static int maps_with_progress_lines(int n, int *k) {
  fp_pool *p = new_pool(2);
  int64_t in[16] = {0}, out[16];
  fp_call_opts co = {0};
  co.progress = FP_PROGRESS_LINES;
  fp_result *r = NULL;
  int rc = 0;
  for (*k = 0; *k < n && rc == 0; (*k)++) {
    rc = fp_pool_map_async(p, t_square, in, 16, 8, out, 8, &co, &r);
    if (rc == 0)
      rc = fp_result_get(r, 10);
    fp_result_free(r);
  }
  fp_pool_free(p);
  return rc;
}

/* A stderr pipe nobody reads fills up: the progress lines that find no
 * room are dropped, and the pool never blocks on it (the writer holds the
 * pool's lock: every call stopped once 4 KiB of lines were written). */
START_TEST(progress_lines_to_a_full_pipe_never_block) {
  int fds[2];
  ck_assert_int_eq(pipe(fds), 0);
  fcntl(fds[1], F_SETPIPE_SZ, 4096); /* the smallest; fine if refused */
  int saved = dup(STDERR_FILENO);
  ck_assert_int_ge(saved, 0);
  ck_assert_int_eq(dup2(fds[1], STDERR_FILENO), STDERR_FILENO);
  close(fds[1]);
  /* Each map prints its final line (about 60 bytes); 2000 of them are
   * over 100 KiB, far more than the pipe holds. */
  int k, rc = maps_with_progress_lines(2000, &k);
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(fds[0]);
  ck_assert_msg(rc == 0, "map %d: %s", k, fp_err_name(rc));
}
END_TEST

/* The same with a terminal nobody reads (a pty whose master is never
 * read): a terminal says "writable" while it has any room, and a blocking
 * write then waits for every byte. */
/* A new pseudo-terminal: returns its master, *slave its other end. */
static int open_pty(int *slave) {
  int master = posix_openpt(O_RDWR | O_NOCTTY);
  ck_assert_int_ge(master, 0);
  ck_assert_int_eq(grantpt(master), 0);
  ck_assert_int_eq(unlockpt(master), 0);
  *slave = open(ptsname(master), O_RDWR | O_NOCTTY);
  ck_assert_int_ge(*slave, 0);
  return master;
}

START_TEST(progress_lines_to_an_unread_terminal_never_block) {
  int slave, master = open_pty(&slave);
  int saved = dup(STDERR_FILENO);
  ck_assert_int_ge(saved, 0);
  ck_assert_int_eq(dup2(slave, STDERR_FILENO), STDERR_FILENO);
  close(slave);
  int k, rc = maps_with_progress_lines(5000, &k); /* ~300 KiB of lines */
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(master);
  ck_assert_msg(rc == 0, "map %d: %s", k, fp_err_name(rc));
}
END_TEST

/* The same with a terminal the process cannot open afresh: a root-owned
 * pty after the process became another user (the reopen through
 * /proc/self/fd/2 fails with EACCES). A blocking write could wait for
 * ever there; the lines are dropped instead. Needs root to switch users
 * (the CI runs as root); as another user the test has nothing to try. */
START_TEST(progress_lines_to_a_terminal_of_another_user_never_block) {
  if (geteuid() != 0)
    return;
  int slave, master = open_pty(&slave);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    int k;
    if (dup2(slave, STDERR_FILENO) != STDERR_FILENO || setgid(65534) != 0 ||
        setuid(65534) != 0)
      _exit(2);
    _exit(maps_with_progress_lines(5000, &k) == 0 ? 0 : 1);
  }
  close(slave);
  int st;
  ck_assert_int_eq(fp_test_wait_child(pid, 40, &st), 0);
  close(master);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "child status %d (1: a map failed or blocked, 2: setup)",
                WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
}
END_TEST

START_TEST(progress_lines_to_a_broken_pipe_do_not_kill) {
  int fds[2];
  ck_assert_int_eq(pipe(fds), 0);
  close(fds[0]);
  int saved = dup(STDERR_FILENO);
  ck_assert_int_ge(saved, 0);
  ck_assert_int_eq(dup2(fds[1], STDERR_FILENO), STDERR_FILENO);
  close(fds[1]);
  fp_pool *p = new_pool(2);
  /* Small quick items: the calling thread takes most results in itself,
   * and writes the lines. */
  enum { N = 100000 };
  static int64_t in[N], out[N];
  fp_call_opts co = {0};
  co.progress = FP_PROGRESS_LINES;
  int rc = 0;
  for (int k = 0; k < 5 && rc == 0; k++)
    rc = fp_pool_map(p, t_square, in, N, 8, out, 8, &co);
  fp_pool_free(p);
  dup2(saved, STDERR_FILENO);
  close(saved);
  ck_assert_int_eq(rc, 0);
  sigset_t pending;
  sigpending(&pending);
  ck_assert_int_eq(sigismember(&pending, SIGPIPE), 0);
}
END_TEST

START_TEST(async_and_stream_calls_reject_bad_arguments) {
  fp_pool *p = new_pool(1);
  fp_writer items;
  fp_writer_init(&items);
  fp_write_int(&items, 1);
  fp_result *r = (fp_result *)1;
  fp_iter *it = (fp_iter *)1;
  counter_src src = {0, 1};
  /* NULL out-parameters and NULL functions. */
  ck_assert_int_eq(fp_pool_apply_async(p, t_pid, NULL, NULL, NULL), FP_EINVAL);
  ck_assert_int_eq(fp_pool_apply_async(p, NULL, NULL, NULL, &r), FP_EINVAL);
  ck_assert_ptr_null(r);
  ck_assert_int_eq(fp_pool_map_values_async(p, t_ident, &items, NULL, NULL),
                   FP_EINVAL);
  ck_assert_int_eq(fp_pool_starmap_async(p, NULL, &items, NULL, &r), FP_EINVAL);
  ck_assert_int_eq(fp_pool_imap(p, t_ident, &items, NULL, NULL), FP_EINVAL);
  ck_assert_int_eq(fp_pool_imap_unordered(p, NULL, &items, NULL, &it),
                   FP_EINVAL);
  ck_assert_ptr_null(it);
  ck_assert_int_eq(
      fp_pool_imap_unordered_producer(p, t_ident, produce, &src, NULL, NULL),
      FP_EINVAL);
  /* After close every submission is refused with FP_ECLOSED. */
  fp_pool_close(p);
  ck_assert_int_eq(fp_pool_map_values_async(p, t_ident, &items, NULL, &r),
                   FP_ECLOSED);
  fp_writer tuples;
  fp_writer_init(&tuples);
  fp_pack(&tuples, "[ i i ]", (int64_t)1, (int64_t)2);
  ck_assert_int_eq(fp_pool_starmap(p, t_add, &tuples, NULL, NULL), FP_ECLOSED);
  fp_writer_free(&tuples);
  ck_assert_int_eq(fp_pool_imap(p, t_ident, &items, NULL, &it), FP_ECLOSED);
  ck_assert_int_eq(fp_pool_imap_producer(p, t_ident, produce, &src, NULL, &it),
                   FP_ECLOSED);
  ck_assert_int_eq(fp_iter_index(NULL), -1);
  ck_assert_str_eq(fp_iter_error(NULL), "");
  ck_assert_int_eq(fp_result_error_index(NULL), -1);
  ck_assert_ptr_null(fp_result_error(NULL));
  fp_pool_join(p);
  fp_pool_free(p);
  fp_writer_free(&items);
}
END_TEST

/* ---- workers ------------------------------------------------------------- */

START_TEST(initializer_effects_visible) {
  int64_t v = 777;
  fp_pool_opts o = {0};
  o.processes = 2;
  o.initializer = init_set;
  o.initarg = &v;
  fp_pool *p;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  fp_writer out;
  fp_writer_init(&out);
  ck_assert_int_eq(fp_pool_apply(p, t_read_init, NULL, &out), 0);
  fp_reader rd;
  int64_t got;
  fp_reader_init(&rd, out.data, out.len);
  fp_read_int(&rd, &got);
  ck_assert_int_eq(got, 777);
  ck_assert_int_eq(g_init_value, 0); /* the master never ran it */
  fp_pool_free(p);
  fp_writer_free(&out);
}
END_TEST

START_TEST(maxtasksperchild_one_gives_fresh_pids) {
  fp_pool_opts o = {0};
  o.processes = 2;
  o.maxtasksperchild = 1;
  fp_pool *p;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  enum { N = 12 };
  int64_t pids[N];
  fp_writer out;
  fp_writer_init(&out);
  for (int i = 0; i < N; i++) {
    fp_writer_reset(&out);
    ck_assert_int_eq(fp_pool_apply(p, t_pid, NULL, &out), 0);
    fp_reader rd;
    fp_reader_init(&rd, out.data, out.len);
    fp_read_int(&rd, &pids[i]);
    for (int k = 0; k < i; k++)
      ck_assert_int_ne(pids[k], pids[i]);
  }
  fp_pool_free(p);
  fp_writer_free(&out);
}
END_TEST

START_TEST(fork_inheritance_of_global) {
  g_loaded_before_pool = 123456789;
  fp_pool *p = new_pool(2);
  g_loaded_before_pool = 1; /* after the pool: workers do not see it */
  fp_writer out;
  fp_writer_init(&out);
  ck_assert_int_eq(fp_pool_apply(p, t_read_global, NULL, &out), 0);
  fp_reader rd;
  int64_t got;
  fp_reader_init(&rd, out.data, out.len);
  fp_read_int(&rd, &got);
  ck_assert_int_eq(got, 123456789);
  fp_pool_free(p);
  fp_writer_free(&out);
}
END_TEST

START_TEST(task_output_does_not_corrupt_channels) {
  fp_pool *p = new_pool(2);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  for (int i = 0; i < 200; i++)
    fp_write_int(&items, i);
  /* Send the noise to /dev/null for this test's children only. */
  fflush(stdout);
  int saved_out = dup(1), saved_err = dup(2);
  FILE *devnull = fopen("/dev/null", "w");
  dup2(fileno(devnull), 1);
  dup2(fileno(devnull), 2);
  fp_pool *q = new_pool(2);
  dup2(saved_out, 1);
  dup2(saved_err, 2);
  close(saved_out);
  close(saved_err);
  fclose(devnull);
  ck_assert_int_eq(fp_pool_map_values(q, t_noisy, &items, &out, NULL), 0);
  fp_reader rd;
  fp_reader_init(&rd, out.data, out.len);
  for (int i = 0; i < 200; i++) {
    int64_t v;
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    ck_assert_int_eq(v, i);
  }
  fp_pool_free(q);
  fp_pool_free(p);
  fp_writer_free(&items);
  fp_writer_free(&out);
}
END_TEST

typedef struct thr_arg {
  fp_pool *p;
  int base;
  int ok;
} thr_arg;

static void *submitter(void *arg) {
  thr_arg *ta = arg;
  fp_writer a, o;
  fp_writer_init(&a);
  fp_writer_init(&o);
  ta->ok = 1;
  for (int i = 0; i < 300 && ta->ok; i++) {
    fp_writer_reset(&a);
    fp_writer_reset(&o);
    fp_pack(&a, "i i", (int64_t)ta->base, (int64_t)i);
    if (fp_pool_apply(ta->p, t_add, &a, &o) != 0)
      ta->ok = 0;
    fp_reader rd;
    int64_t v = -1;
    fp_reader_init(&rd, o.data, o.len);
    fp_read_int(&rd, &v);
    if (v != ta->base + i)
      ta->ok = 0;
    int64_t x = i, y = 0;
    if (fp_pool_map(ta->p, t_square, &x, 1, 8, &y, 8, NULL) != 0 || y != x * x)
      ta->ok = 0;
  }
  fp_writer_free(&a);
  fp_writer_free(&o);
  return NULL;
}

START_TEST(several_threads_submit_at_once) {
  fp_pool *p = new_pool(2);
  pthread_t th[4];
  thr_arg ta[4];
  for (int i = 0; i < 4; i++) {
    ta[i].p = p;
    ta[i].base = i * 100000;
    pthread_create(&th[i], NULL, submitter, &ta[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    ck_assert_int_eq(ta[i].ok, 1);
  }
  fp_pool_free(p);
}
END_TEST

START_TEST(worker_info_reports_slots) {
  fp_pool *p = new_pool(2);
  fp_worker_info wi;
  ck_assert_int_eq(fp_pool_worker_info(p, 0, &wi), 0);
  ck_assert_int_gt(wi.pid, 0);
  ck_assert_int_eq(wi.cpu, -1);
  ck_assert_int_eq(wi.last_cpu, -1);
  ck_assert_int_eq(fp_pool_worker_info(p, 2, &wi), FP_EINVAL);
  ck_assert_int_eq(fp_pool_worker_info(p, -1, &wi), FP_EINVAL);
  ck_assert_int_eq(fp_pool_worker_info(p, 0, NULL), FP_EINVAL);
  ck_assert_int_eq(fp_pool_apply(p, t_pid, NULL, NULL), 0);
  int tasks = 0;
  for (int i = 0; i < 2; i++) {
    fp_pool_worker_info(p, i, &wi);
    tasks += (int)wi.tasks;
  }
  ck_assert_int_eq(tasks, 1);
  fp_pool_free(p);
}
END_TEST

/* ---- affinity of workers ------------------------------------------------- */

static int t_affinity(fp_reader *args, fp_writer *out) {
  (void)args;
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof(set), &set);
  int only = -1, count = CPU_COUNT(&set);
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &set)) {
      only = c;
      break;
    }
  return fp_pack(out, "[ i i i ]", (int64_t)fp_task_worker_id(), (int64_t)count,
                 (int64_t)only);
}

START_TEST(compact_pinning_sets_exact_masks) {
  fp_pool_opts o = {0};
  o.processes = 2;
  o.pin = FP_PIN_COMPACT;
  fp_pool *p;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  for (int i = 0; i < 40; i++)
    fp_write_nil(&items);
  fp_call_opts co = {0};
  co.chunksize = 1;
  ck_assert_int_eq(fp_pool_map_values(p, t_affinity, &items, &out, &co), 0);
  fp_reader rd;
  fp_reader_init(&rd, out.data, out.len);
  fp_cpuset allowed;
  fp_affinity_get(&allowed);
  for (int i = 0; i < 40; i++) {
    int64_t wid, count, only;
    ck_assert_int_eq(fp_unpack(&rd, "[ i i i ]", &wid, &count, &only), 0);
    fp_worker_info wi;
    fp_pool_worker_info(p, (int)wid, &wi);
    ck_assert_int_eq(count, 1);
    ck_assert_int_eq(only, wi.cpu);
    ck_assert_int_eq(
        wi.cpu, fp_cpuset_nth(&allowed, (int)wid % fp_cpuset_count(&allowed)));
  }
  /* A replaced worker keeps its predecessor's CPU. */
  fp_worker_info before, after;
  fp_pool_worker_info(p, 0, &before);
  kill(before.pid, SIGKILL);
  /* Bounded by time, not by a count of round trips: a round trip can be
   * a few microseconds, far shorter than noticing a death on a busy
   * machine. */
  double until = now_s() + 30;
  do {
    fp_pool_worker_info(p, 0, &after);
    if (after.pid != 0 && after.pid != before.pid)
      break;
    fp_pool_apply(p, t_pid, NULL, NULL); /* paces the loop */
  } while (now_s() < until);
  ck_assert_int_ne(after.pid, before.pid);
  ck_assert_int_eq(after.cpu, before.cpu);
  fp_writer_reset(&out);
  ck_assert_int_eq(fp_pool_map_values(p, t_affinity, &items, &out, &co), 0);
  fp_reader_init(&rd, out.data, out.len);
  for (int i = 0; i < 40; i++) {
    int64_t wid, count, only;
    fp_unpack(&rd, "[ i i i ]", &wid, &count, &only);
    fp_worker_info wi;
    fp_pool_worker_info(p, (int)wid, &wi);
    ck_assert_int_eq(only, wi.cpu);
  }
  fp_pool_free(p);
  fp_writer_free(&items);
  fp_writer_free(&out);
}
END_TEST

/* [ the CPU the task runs on, how many CPUs its mask allows ] */
static int t_cpu_mask(fp_reader *args, fp_writer *out) {
  (void)args;
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof(set), &set);
  return fp_pack(out, "[ i i ]", (int64_t)sched_getcpu(),
                 (int64_t)CPU_COUNT(&set));
}

/* Runs n applies of t_cpu_mask from a thread pinned to `cpu` (the pool's
 * feeder: a worker waiting for tasks on that CPU moves off it, spin.h),
 * checking that every task saw `want_count` CPUs in its mask and, when
 * want_cpu >= 0, ran on want_cpu. */
static void applies_from_cpu(fp_pool *p, int cpu, int n, int64_t want_count,
                             int want_cpu) {
  cpu_set_t mine, one;
  pthread_getaffinity_np(pthread_self(), sizeof(mine), &mine);
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  ck_assert_int_eq(pthread_setaffinity_np(pthread_self(), sizeof(one), &one),
                   0);
  fp_writer out;
  fp_writer_init(&out);
  for (int i = 0; i < n; i++) {
    int64_t ran_on, count;
    fp_writer_reset(&out);
    ck_assert_int_eq(fp_pool_apply(p, t_cpu_mask, NULL, &out), 0);
    fp_reader rd;
    fp_reader_init(&rd, out.data, out.len);
    ck_assert_int_eq(fp_unpack(&rd, "[ i i ]", &ran_on, &count), 0);
    ck_assert_int_eq(count, want_count);
    if (want_cpu >= 0)
      ck_assert_int_eq(ran_on, want_cpu);
  }
  fp_writer_free(&out);
  pthread_setaffinity_np(pthread_self(), sizeof(mine), &mine);
}

static int first_allowed_cpu(int *count) {
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof(set), &set);
  *count = CPU_COUNT(&set);
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &set))
      return c;
  return -1;
}

/* A worker that moves off its feeder's CPU does it by narrowing its mask
 * for a moment: its tasks must never see anything but the whole mask. */
START_TEST(worker_moving_off_the_feeders_cpu_keeps_its_mask) {
  int n, cpu = first_allowed_cpu(&n);
  if (n < 2)
    return; /* one CPU: nothing to share or move to */
  fp_pool_opts o = {0};
  o.processes = 1;
  fp_pool *p;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  applies_from_cpu(p, cpu, 2000, n, -1);
  fp_pool_free(p);
}
END_TEST

/* A worker pinned (by the pool) to its feeder's CPU stays there. */
START_TEST(pinned_worker_on_the_feeders_cpu_stays) {
  int n, cpu = first_allowed_cpu(&n);
  fp_pool_opts o = {0};
  o.processes = 1;
  o.pin = FP_PIN_LIST;
  o.pin_cpus = &cpu;
  o.pin_ncpus = 1;
  fp_pool *p;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  applies_from_cpu(p, cpu, 2000, 1, cpu);
  fp_pool_free(p);
}
END_TEST

START_TEST(pin_list_outside_allowed_set_fails) {
  fp_pool_opts o = {0};
  int cpus[] = {0, FP_CPU_MAX - 1};
  o.processes = 2;
  o.pin = FP_PIN_LIST;
  o.pin_cpus = cpus;
  o.pin_ncpus = 2;
  fp_pool *p = NULL;
  int rc = fp_pool_new(&p, &o);
  ck_assert_int_eq(rc, FP_EINVAL);
  ck_assert_ptr_null(p);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "1023"));
}
END_TEST

START_TEST(narrowed_mask_defaults_to_one_worker) {
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof(set), &set);
  int first = -1;
  for (int c = 0; c < CPU_SETSIZE && first < 0; c++)
    if (CPU_ISSET(c, &set))
      first = c;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ck_assert_int_eq(sched_setaffinity(0, sizeof(one), &one), 0);
  fp_pool *p = NULL;
  ck_assert_int_eq(fp_pool_new(&p, NULL), 0);
  ck_assert_int_eq(fp_pool_size(p), 1);
  fp_pool_free(p);
  sched_setaffinity(0, sizeof(set), &set);
}
END_TEST

Suite *pool_suite(void) {
  Suite *s = suite_create("pool");
  TCase *tc = tcase_create("lifecycle");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, pool_new_and_free_leaves_nothing);
  tcase_add_test(tc, pool_new_rejects_bad_options);
  tcase_add_test(tc, pool_new_names_the_bad_option);
  tcase_add_test(tc, inflight_accepts_1_to_16);
  tcase_add_test(tc, hundreds_of_workers_start_work_and_terminate);
  tcase_add_test(tc, pool_default_processes_is_cpu_count);
  tcase_add_test(tc, join_before_close_fails);
  tcase_add_test(tc, apply_after_close_fails);
  tcase_add_test(tc, terminate_twice_is_harmless);
  tcase_add_test(tc, terminate_during_long_tasks_returns_fast);
  tcase_add_test(tc, terminated_iterator_reports_no_item_index);
  tcase_add_test(tc, free_while_running_cancels_results);
  suite_add_tcase(s, tc);

  tc = tcase_create("apply");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, apply_returns_value);
  tcase_add_test(tc, apply_task_failure_reports_message);
  tcase_add_test(tc, apply_async_callbacks_run_exactly_once);
  tcase_add_test(tc, blocking_call_from_callback_fails);
  tcase_add_test(tc, result_get_timeout_then_success);
  tcase_add_test(tc, cancel_queued_task);
  tcase_add_test(tc, cancel_running_task_replaces_worker);
  tcase_add_test(tc, calls_queued_behind_long_tasks_move_to_an_idle_worker);
  tcase_add_test(tc, a_result_does_not_wait_for_the_long_chunk_after_it);
  tcase_add_test(tc, moved_calls_run_once_when_the_workers_they_left_die);
  tcase_add_test(tc, moved_calls_count_towards_maxtasksperchild_on_both_sides);
  tcase_add_test(tc, moved_calls_run_once_when_the_long_ones_time_out);
  suite_add_tcase(s, tc);

  tc = tcase_create("map");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, map_million_int64_correct);
  tcase_add_test(tc, map_empty_input_sends_nothing);
  tcase_add_test(tc, map_with_zero_sized_input_or_output);
  tcase_add_test(tc, map_failure_names_lowest_item_and_completes_others);
  tcase_add_test(tc, map_rejects_bad_arguments);
  tcase_add_test(tc, map_values_keeps_order);
  tcase_add_test(tc, starmap_over_packed_tuples);
  tcase_add_test(tc, large_payloads_round_trip);
  tcase_add_test(tc, task_sees_index_and_worker_id);
  suite_add_tcase(s, tc);

  tc = tcase_create("imap");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, imap_in_order);
  tcase_add_test(tc, imap_unordered_exactly_once);
  tcase_add_test(tc, imap_item_failure_continues);
  tcase_add_test(tc, imap_producer_bounded_memory);
  tcase_add_test(tc, failing_items_keep_no_message_but_the_first);
  tcase_add_test(tc, imap_producer_protocol_breaches_end_with_eproto);
  tcase_add_test(tc, imap_producer_consumed_while_join_reads_the_rest);
  tcase_add_test(tc, async_and_stream_calls_reject_bad_arguments);
  suite_add_tcase(s, tc);

  tc = tcase_create("progress");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, progress_callback_runs_on_the_pool_thread_and_may_call_it);
  tcase_add_test(tc, progress_lines_to_a_broken_pipe_do_not_kill);
  tcase_add_test(tc, refused_calls_report_no_progress);
  tcase_add_test(tc, empty_imap_gets_its_final_progress_call_promptly);
  tcase_add_test(tc, progress_lines_to_a_full_pipe_never_block);
  tcase_add_test(tc, progress_lines_to_a_terminal_of_another_user_never_block);
  tcase_add_test(tc, progress_lines_to_an_unread_terminal_never_block);
  suite_add_tcase(s, tc);

  tc = tcase_create("workers");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, initializer_effects_visible);
  tcase_add_test(tc, maxtasksperchild_one_gives_fresh_pids);
  tcase_add_test(tc, fork_inheritance_of_global);
  tcase_add_test(tc, task_output_does_not_corrupt_channels);
  tcase_add_test(tc, several_threads_submit_at_once);
  tcase_add_test(tc, worker_info_reports_slots);
  tcase_add_test(tc, compact_pinning_sets_exact_masks);
  tcase_add_test(tc, pin_list_outside_allowed_set_fails);
  tcase_add_test(tc, narrowed_mask_defaults_to_one_worker);
  tcase_add_test(tc, worker_moving_off_the_feeders_cpu_keeps_its_mask);
  tcase_add_test(tc, pinned_worker_on_the_feeders_cpu_stays);
  suite_add_tcase(s, tc);
  return s;
}
