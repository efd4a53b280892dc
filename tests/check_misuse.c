/* SPDX-License-Identifier: MIT */
/* check_misuse.c - the pool called the way adversarial programs call it:
 * handles used after join, joins racing each other, blocking calls from a
 * callback, writers passed twice, a daemon's closed standard streams, a
 * pool joined before its producer-fed iterator was read. Each case once
 * crashed, hung or broke what the header promises.
 */
#include "child.h"
#include "forkpool.h"
#include "ipc/wire/error.h"
#include "testutil.h"

#include <check.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int e_ident(const void *in, void *out);

static int square(fp_reader *args, fp_writer *out) {
  int64_t x = 0;
  fp_read_int(args, &x);
  return fp_write_int(out, x * x);
}

static int fail_task(fp_reader *args, fp_writer *out) {
  (void)args;
  (void)out;
  return fp_task_fail("an old task failure");
}

/* Runs until its worker is killed. */
static int block_task(fp_reader *args, fp_writer *out) {
  (void)args;
  (void)out;
  for (;;)
    pause();
  return 0; /* never reached */
}

static fp_pool *new_pool(int n) {
  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  o.processes = n;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  return p;
}

static int e_nothing(const void *in, void *out) {
  (void)in;
  (void)out;
  return 0;
}

/* A map of more items than chunk records fit in memory (n up to
 * INT64_MAX is allowed, and zero-size elements need no array) fails at
 * once with FP_ENOMEM and says why, instead of allocating the records and
 * meeting the OOM killer; the pool serves on. */
START_TEST(map_of_too_many_chunks_fails_with_enomem) {
  fp_pool *p = new_pool(1);
  fp_call_opts co = {0};
  fp_result *r = NULL;
  co.chunksize = 1;
  const struct {
    size_t n;
    const fp_call_opts *o;
  } cases[] = {{(size_t)INT64_MAX, NULL}, {(size_t)1 << 40, &co}};
  for (int k = 0; k < 2; k++) {
    ck_assert_int_eq(fp_pool_map_async(p, e_nothing, NULL, cases[k].n, 0, NULL,
                                       0, cases[k].o, &r),
                     FP_ENOMEM);
    ck_assert_ptr_null(r);
    ck_assert_msg(strstr(fp_last_error(), "chunk records") != NULL, "'%s'",
                  fp_last_error());
    ck_assert_int_eq(
        fp_pool_map(p, e_nothing, NULL, cases[k].n, 0, NULL, 0, cases[k].o),
        FP_ENOMEM);
  }
  ck_assert_int_eq(fp_pool_map(p, e_nothing, NULL, 1000, 0, NULL, 0, &co), 0);
  fp_pool_free(p);
}
END_TEST

START_TEST(worker_info_after_join_is_safe) {
  fp_pool *p = new_pool(2);
  fp_writer a, out;
  fp_worker_info info;
  fp_writer_init(&a);
  fp_writer_init(&out);
  fp_write_int(&a, 3);
  ck_assert_int_eq(fp_pool_apply(p, square, &a, &out), 0);
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(fp_pool_worker_info(p, i, &info), 0);
    ck_assert_int_eq(info.pid, 0);
  }
  ck_assert_int_eq(fp_pool_worker_info(p, 2, &info), FP_EINVAL);
  fp_pool_free(p);
  fp_writer_free(&a);
  fp_writer_free(&out);
  fp_test_no_children();
}
END_TEST

static void *join_thread(void *arg) {
  return (void *)(intptr_t)fp_pool_join(arg);
}

/* Every fp_pool_* call but free may come from several threads at once:
 * joins racing each other all return 0, once the pool is gone. */
START_TEST(joins_from_several_threads_return_together) {
  for (int round = 0; round < 10; round++) {
    fp_pool *p = new_pool(2);
    pthread_t t[3];
    ck_assert_int_eq(fp_pool_close(p), 0);
    for (int i = 0; i < 3; i++)
      ck_assert_int_eq(pthread_create(&t[i], NULL, join_thread, p), 0);
    for (int i = 0; i < 3; i++) {
      void *rc;
      pthread_join(t[i], &rc);
      ck_assert_int_eq((int)(intptr_t)rc, 0);
    }
    fp_test_no_children();
    ck_assert_int_eq(fp_pool_join(p), 0);
    fp_pool_free(p);
  }
}
END_TEST

static fp_pool *g_pool;
static atomic_int g_cb_rc = 1;

static void iter_in_callback(fp_result *res, void *arg) {
  fp_writer items;
  fp_iter *it;
  fp_reader r;
  (void)res;
  (void)arg;
  fp_writer_init(&items);
  fp_write_int(&items, 5);
  if (fp_pool_imap(g_pool, square, &items, NULL, &it) != 0) {
    atomic_store(&g_cb_rc, -1);
  } else {
    atomic_store(&g_cb_rc, fp_iter_next(it, &r, FP_FOREVER));
    fp_iter_free(it);
  }
  fp_writer_free(&items);
}

/* The pool thread delivers the items: waiting for one there would wait
 * for itself. */
START_TEST(iter_next_in_a_callback_is_refused) {
  fp_call_opts co = {0};
  fp_result *r;
  g_pool = new_pool(2);
  co.callback = iter_in_callback;
  ck_assert_int_eq(fp_pool_apply_async(g_pool, square, NULL, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 20), 0);
  ck_assert_int_eq(atomic_load(&g_cb_rc), FP_EINVAL);
  fp_result_free(r);
  fp_pool_free(g_pool);
}
END_TEST

typedef struct counts {
  long produced, consumed, worst, total;
} counts;

static int count_producer(void *arg, fp_writer *w) {
  counts *c = arg;
  if (c->produced >= c->total)
    return 0;
  fp_write_int(w, c->produced++);
  if (c->produced - c->consumed > c->worst)
    c->worst = c->produced - c->consumed;
  return 1;
}

/* At most readahead items produced and not yet consumed, whatever the
 * chunk size: a chunk stops short rather than pass the bound. */
START_TEST(readahead_bounds_a_producer_with_big_chunks) {
  static const size_t cases[][2] = {{7, 10}, {16, 16}, {100, 1}, {1, 3}};
  fp_pool *p = new_pool(2);
  for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
    counts c = {0, 0, 0, 500};
    fp_call_opts co = {0};
    fp_iter *it;
    fp_reader r;
    int rc;
    co.chunksize = cases[k][0];
    co.readahead = cases[k][1];
    ck_assert_int_eq(
        fp_pool_imap_producer(p, square, count_producer, &c, &co, &it), 0);
    while ((rc = fp_iter_next(it, &r, 20)) == 0)
      c.consumed++;
    ck_assert_int_eq(rc, FP_EOF);
    ck_assert_int_eq(c.consumed, c.total);
    ck_assert_msg(c.worst <= (long)cases[k][1],
                  "chunksize %zu readahead %zu: %ld outstanding", cases[k][0],
                  cases[k][1], c.worst);
    fp_iter_free(it);
  }
  fp_pool_free(p);
}
END_TEST

/* A refused call says why: fp_last_error() never shows the message of an
 * earlier failure. */
START_TEST(refused_calls_replace_the_last_error) {
  fp_pool *p = new_pool(1);
  fp_writer a, out;
  fp_result *r;
  fp_iter *it;
  fp_writer_init(&a);
  fp_writer_init(&out);
  ck_assert_int_eq(fp_pool_apply(p, fail_task, &a, &out), FP_ETASK);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "an old task failure"));
#define REFUSED(call)                                                          \
  do {                                                                         \
    ck_assert_int_eq(fp_pool_apply(p, fail_task, &a, &out), FP_ETASK);         \
    ck_assert_int_eq((call), FP_EINVAL);                                       \
    ck_assert_msg(strstr(fp_last_error(), "old task") == NULL,                 \
                  "%s: stale message '%s'", #call, fp_last_error());          \
  } while (0)
  REFUSED(fp_pool_apply(NULL, square, &a, &out));
  REFUSED(fp_pool_map_values(NULL, square, &a, &out, NULL));
  REFUSED(fp_pool_apply_async(p, square, &a, NULL, NULL));
  REFUSED(fp_pool_imap(p, square, &a, NULL, NULL));
  REFUSED(fp_pool_join(NULL));
  REFUSED(fp_pool_close(NULL));
  REFUSED(fp_pool_terminate(NULL));
  REFUSED(fp_pool_new(NULL, NULL));
  fp_reader rd;
  REFUSED(fp_pool_size(NULL));
  REFUSED(fp_result_get(NULL, 0));
  REFUSED(fp_result_wait(NULL, FP_FOREVER));
  REFUSED(fp_result_ready(NULL));
  REFUSED(fp_result_successful(NULL));
  REFUSED(fp_result_value(NULL, &rd));
  REFUSED(fp_result_cancel(NULL));
  REFUSED(fp_iter_next(NULL, &rd, 0));
  ck_assert_int_eq(fp_pool_apply_async(p, square, &a, NULL, &r), 0);
  REFUSED(fp_result_get(r, NAN));
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  REFUSED(fp_result_cancel(r)); /* already ready */
  fp_result_free(r);
#undef REFUSED
  /* Refused submissions of every form say why: the pool is closed. */
  ck_assert_int_eq(fp_pool_close(p), 0);
  int64_t in = 1, o8;
#define CLOSED(call)                                                           \
  do {                                                                         \
    ck_assert_int_eq(fp_pool_apply(NULL, square, &a, &out), FP_EINVAL);        \
    ck_assert_int_eq((call), FP_ECLOSED);                                      \
    ck_assert_msg(strstr(fp_last_error(), "closed") != NULL,                   \
                  "%s: message '%s'", #call, fp_last_error());                \
  } while (0)
  CLOSED(fp_pool_apply(p, square, &a, &out));
  CLOSED(fp_pool_apply_async(p, square, &a, NULL, &r));
  CLOSED(fp_pool_map_values_async(p, square, &a, NULL, &r));
  CLOSED(fp_pool_map_async(p, e_ident, &in, 1, 8, &o8, 8, NULL, &r));
  CLOSED(fp_pool_map(p, e_ident, &in, 1, 8, &o8, 8, NULL));
  CLOSED(fp_pool_imap(p, square, &a, NULL, &it));
#undef CLOSED
  fp_pool_free(p);
  fp_writer_free(&a);
  fp_writer_free(&out);
}
END_TEST

/* The message of a refused call names what was wrong, not just "invalid
 * argument". */
START_TEST(refusals_name_the_bad_argument) {
  fp_pool *p = new_pool(1);
  int64_t in[2] = {1, 2}, out[2];
  fp_call_opts co = {0};
  fp_assert_says(fp_pool_map(p, NULL, in, 2, 8, out, 8, NULL), FP_EINVAL, "fn");
  fp_assert_says(fp_pool_map(p, e_ident, NULL, 2, 8, out, 8, NULL), FP_EINVAL,
                 "in");
  fp_assert_says(fp_pool_map(p, e_ident, in, 2, (size_t)1 << 33, out, 8, NULL),
                 FP_EINVAL, "in_size");
  co.timeout = NAN;
  fp_assert_says(fp_pool_map(p, e_ident, in, 2, 8, out, 8, &co), FP_EINVAL,
                 "timeout");
  co.timeout = 0;
  co.retries = -1;
  fp_assert_says(fp_pool_map(p, e_ident, in, 2, 8, out, 8, &co), FP_EINVAL,
                 "retries");
  co.retries = 0;
  co.progress = FP_PROGRESS_CALLBACK; /* the pool has no progress_cb */
  fp_assert_says(fp_pool_map(p, e_ident, in, 2, 8, out, 8, &co), FP_EINVAL,
                 "progress_cb");
  fp_pool_opts o = {0};
  fp_pool *q = NULL;
  o.processes = 1;
  o.max_frame = 4096;
  ck_assert_int_eq(fp_pool_new(&q, &o), 0);
  fp_writer big;
  fp_writer_init(&big);
  static char blob[8192];
  ck_assert_int_eq(fp_write_bytes(&big, blob, sizeof(blob)), 0);
  fp_assert_says(fp_pool_apply(q, square, &big, NULL), FP_EMSGSIZE, "frame");
  fp_assert_says(fp_pool_map(q, e_ident, blob, 1, 5000, blob, 8, NULL),
                 FP_EMSGSIZE, "frame");
  fp_writer_free(&big);
  fp_pool_free(q);
  q = NULL;
  o.max_frame = 0;
  o.progress = FP_PROGRESS_CALLBACK;
  fp_assert_says(fp_pool_new(&q, &o), FP_EINVAL, "progress_cb");
  ck_assert_ptr_null(q);
  fp_pool_free(p);
}
END_TEST

/* A result's and an iterator item's outcome set the last error as a
 * blocking call's does; a successful join clears it, fp_pool_free leaves
 * it as the caller's last call set it. */
START_TEST(waits_set_and_join_clears_the_last_error) {
  fp_pool *p = new_pool(1);
  fp_writer a;
  fp_reader rd;
  fp_result *r;
  fp_iter *it;
  fp_writer_init(&a);
  ck_assert_int_eq(fp_write_int(&a, 3), 0);
  ck_assert_int_eq(fp_pool_apply_async(p, fail_task, &a, NULL, &r), 0);
  fp__clear_last_error(); /* the message must come from the get */
  ck_assert_int_eq(fp_result_get(r, 30), FP_ETASK);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "an old task failure"));
  fp_result_free(r);
  ck_assert_int_eq(fp_pool_apply_async(p, square, &a, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  ck_assert_str_eq(fp_last_error(), "");
  fp_result_free(r);
  ck_assert_int_eq(fp_pool_imap(p, fail_task, &a, NULL, &it), 0);
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_ETASK);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "an old task failure"));
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  fp_iter_free(it);
  ck_assert_int_eq(fp_pool_imap(p, square, &a, NULL, &it), 0);
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), 0);
  ck_assert_str_eq(fp_last_error(), "");
  fp_iter_free(it);
  ck_assert_int_eq(fp_pool_join(p), FP_EINVAL); /* still running */
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  ck_assert_str_eq(fp_last_error(), "");
  fp_pool_free(p);
  p = new_pool(1);
  ck_assert_int_eq(fp_pool_apply(p, fail_task, &a, NULL), FP_ETASK);
  fp_pool_free(p); /* terminates and joins inside */
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "an old task failure"));
  fp_writer_free(&a);
}
END_TEST

/* A forked copy of the master cannot close, terminate, join or cancel on
 * the parent's pool: each is refused and says why, and the parent's
 * worker is left alone. */
START_TEST(forked_copy_cannot_stop_the_parents_pool) {
  fp_pool *p = new_pool(1);
  fp_worker_info wi;
  fp_result *r;
  fp_writer a;
  fp_writer_init(&a);
  ck_assert_int_eq(fp_pool_worker_info(p, 0, &wi), 0);
  ck_assert_int_eq(fp_pool_apply_async(p, block_task, &a, NULL, &r), 0);
  pid_t child = fork();
  ck_assert_int_ne(child, -1);
  if (child == 0) {
    int bad = 0;
    bad |= fp_pool_close(p) != FP_EINVAL;
    bad |= strstr(fp_last_error(), "forked copy") == NULL;
    bad |= (fp_pool_terminate(p) != FP_EINVAL) << 1;
    bad |= (fp_pool_join(p) != FP_EINVAL) << 2;
    bad |= (strstr(fp_last_error(), "fp_pool_join") == NULL) << 3;
    bad |= (fp_result_cancel(r) != FP_EINVAL) << 4;
    bad |= (strstr(fp_last_error(), "forked copy") == NULL) << 5;
    bad |= (kill(wi.pid, 0) != 0) << 6;
    _exit(bad);
  }
  int status;
  ck_assert_int_eq(fp_test_wait_child(child, 60, &status), 0);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                "child: status %#x", status);
  ck_assert_int_eq(fp_pool_worker_info(p, 0, &wi), 0);
  ck_assert_int_ne(wi.pid, 0);
  ck_assert_int_eq(fp_result_cancel(r), 0); /* the parent still can */
  ck_assert_int_eq(fp_result_get(r, 60), FP_ECANCELED);
  fp_result_free(r);
  fp_writer_free(&a);
  fp_pool_free(p);
}
END_TEST

/* A child made without the atfork handlers (_Fork(), the async-signal-safe
 * fork of crash handlers, or a raw fork system call) is a copy too: its
 * submissions and close are refused, its fp_pool_free returns (it used to
 * wait for a pool thread the child does not have), its Manager calls use
 * a heap of its own, and the parent's pool and dict serve on. */
static int copy_without_atfork_child(fp_pool *p, fp_dict *d) {
  int bad = 0;
  fp_result *r = NULL;
  bad |= fp_pool_apply_async(p, square, NULL, NULL, &r) != FP_EINVAL;
  bad |= (strstr(fp_last_error(), "forked copy") == NULL) << 1;
  bad |= (fp_pool_close(p) != FP_EINVAL) << 2;
  bad |= (fp_dict_add_int(d, "k", 1, 1, NULL) != 0) << 3;
  fp_pool_free(p);
  return bad;
}

/* The verdict of a forked child travels through a pipe, not its exit
 * status: under valgrind a copy's exit reports the parent's pending work
 * it cannot free (the header's FORKS note) as leaks, status 3. */
static int g_verdict[2] = {-1, -1};

static void child_says(int bad) {
  unsigned char b = (unsigned char)bad;
  if (write(g_verdict[1], &b, 1) != 1)
    _exit(120);
  _exit(0);
}

static void child_said_ok(pid_t child, const char *what) {
  int status;
  unsigned char b = 0xff;
  ck_assert_int_eq(fp_test_wait_child(child, 60, &status), 0);
  ck_assert_msg(WIFEXITED(status), "%s: status %#x", what, status);
  ck_assert_int_eq(read(g_verdict[0], &b, 1), 1);
  ck_assert_msg(b == 0, "%s: failed checks %#x", what, b);
}

START_TEST(copies_made_without_atfork_handlers_are_copies) {
  /* ThreadSanitizer's own fork handling is bypassed too: in such a child
   * its shadow state is the parent's, and it reports races that are not. */
  if (fp_test_under_tsan())
    return;
  fp_manager *m;
  fp_dict *d;
  ck_assert_int_eq(pipe(g_verdict), 0);
  ck_assert_int_eq(fp_manager_new(&m, NULL), 0);
  ck_assert_int_eq(fp_dict_new(m, &d), 0);
  ck_assert_int_eq(fp_dict_set_int(d, "k", 1, 0), 0);
  fp_pool *p = new_pool(2);
  for (int how = 0; how < 2; how++) {
    pid_t child = how == 0 ? _Fork() : (pid_t)syscall(SYS_fork);
    ck_assert_int_ne(child, -1);
    if (child == 0)
      child_says(copy_without_atfork_child(p, d));
    child_said_ok(child, how ? "child made by SYS_fork" : "child of _Fork");
    for (int i = 0; i < 50; i++)
      ck_assert_int_eq(fp_pool_apply(p, square, NULL, NULL), 0);
    ck_assert_int_eq(fp_dict_add_int(d, "k", 1, 1, NULL), 0);
  }
  int64_t v = -1;
  ck_assert_int_eq(fp_dict_get_int(d, "k", 1, &v), 0);
  ck_assert_int_eq(v, 4);
  fp_pool_free(p);
  fp_manager_free(m);
  close(g_verdict[0]);
  close(g_verdict[1]);
}
END_TEST

/* A child forked inside a result callback is not in a callback: it may
 * block on a pool of its own. */
static _Atomic pid_t g_cb_child;
static void fork_and_use_own_pool_cb(fp_result *res, void *arg) {
  (void)res;
  (void)arg;
  pid_t c = fork();
  if (c == 0) {
    fp_pool *own = NULL;
    fp_pool_opts o = {.processes = 1};
    int rc = fp_pool_new(&own, &o);
    if (rc == 0)
      rc = fp_pool_apply(own, square, NULL, NULL);
    if (rc == 0)
      fp_pool_free(own);
    child_says(rc != 0);
  }
  atomic_store(&g_cb_child, c);
}

START_TEST(child_forked_in_a_callback_may_block_on_its_own_pool) {
  if (fp_test_under_tsan())
    return; /* its child starts threads: fp_test_under_tsan */
  ck_assert_int_eq(pipe(g_verdict), 0);
  fp_pool *p = new_pool(1);
  fp_call_opts co = {.callback = fork_and_use_own_pool_cb};
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, square, NULL, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 60), 0);
  fp_result_free(r);
  pid_t c = atomic_load(&g_cb_child);
  ck_assert_int_gt(c, 0);
  child_said_ok(c, "child forked in a callback");
  fp_pool_free(p);
  close(g_verdict[0]);
  close(g_verdict[1]);
}
END_TEST

/* fp_result_cancel fails the job at once and returns without waiting for
 * the pool thread: the result is ready once its error callback ran, which
 * fp_result_get waits for. A caller may hold a lock that the callbacks
 * take while it cancels (a table of outstanding calls): no deadlock. */
static pthread_mutex_t g_table_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_outstanding;
static void count_down_cb(fp_result *r, void *arg) {
  (void)r;
  (void)arg;
  pthread_mutex_lock(&g_table_mu);
  g_outstanding--;
  pthread_mutex_unlock(&g_table_mu);
}

START_TEST(cancel_under_a_lock_the_callbacks_take) {
  fp_pool *p = new_pool(1);
  fp_call_opts co = {0};
  co.callback = co.error_callback = count_down_cb;
  fp_result *running, *queued;
  g_outstanding = 2;
  ck_assert_int_eq(fp_pool_apply_async(p, block_task, NULL, &co, &running), 0);
  ck_assert_int_eq(fp_pool_apply_async(p, block_task, NULL, &co, &queued), 0);
  pthread_mutex_lock(&g_table_mu);
  ck_assert_int_eq(fp_result_cancel(queued), 0);
  ck_assert_int_eq(fp_result_cancel(running), 0);
  pthread_mutex_unlock(&g_table_mu);
  ck_assert_int_eq(fp_result_get(queued, 30), FP_ECANCELED);
  ck_assert_int_eq(fp_result_get(running, 30), FP_ECANCELED);
  ck_assert_int_eq(fp_result_cancel(running), FP_EINVAL); /* finished */
  pthread_mutex_lock(&g_table_mu);
  ck_assert_int_eq(g_outstanding, 0);
  pthread_mutex_unlock(&g_table_mu);
  fp_result_free(queued);
  fp_result_free(running);
  fp_pool_free(p);
}
END_TEST

/* A job that finished before the cancel is not ready until its callback
 * returned: a cancel in that window returns FP_EINVAL at once, saying the
 * job already finished (it is not ready yet), without waiting for the
 * callback, which here blocks until the test releases it. */
static int g_cb_gate[2], g_cb_entered[2];
static void blocking_callback(fp_result *r, void *arg) {
  (void)r;
  (void)arg;
  char c = 1;
  ck_assert_int_eq(write(g_cb_entered[1], &c, 1), 1);
  ck_assert_int_eq(read(g_cb_gate[0], &c, 1), 1);
}

START_TEST(cancel_of_a_finished_job_is_refused_at_once) {
  fp_pool *p = new_pool(1);
  fp_writer a;
  fp_result *r;
  fp_writer_init(&a);
  ck_assert_int_eq(fp_write_int(&a, 2), 0);
  ck_assert_int_eq(pipe(g_cb_gate), 0);
  ck_assert_int_eq(pipe(g_cb_entered), 0);
  fp_call_opts co = {0};
  co.callback = blocking_callback;
  ck_assert_int_eq(fp_pool_apply_async(p, square, &a, &co, &r), 0);
  struct pollfd pf = {g_cb_entered[0], POLLIN, 0};
  ck_assert_int_eq(poll(&pf, 1, 30000), 1); /* the callback runs */
  ck_assert_int_eq(fp_result_cancel(r), FP_EINVAL);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "already finished"));
  ck_assert_int_eq(fp_result_ready(r), 0); /* its callback still runs */
  char x = 1;
  ck_assert_int_eq(write(g_cb_gate[1], &x, 1), 1);
  ck_assert_int_eq(fp_result_get(r, 30), 0);
  fp_result_free(r);
  fp_pool_free(p);
  fp_writer_free(&a);
  for (int i = 0; i < 2; i++) {
    close(g_cb_gate[i]);
    close(g_cb_entered[i]);
  }
}
END_TEST

/* An imap producer runs with its iterator's producer lock held, on the
 * consumer's thread (or a joining one): calls from it that would take that
 * lock again or wait for the input being produced are refused at once
 * instead of deadlocking, and the iteration still completes. */
static fp_pool *g_prod_pool;
static fp_iter *g_prod_it;
static int g_prod_n, g_prod_refusals;

static int reentrant_producer(void *arg, fp_writer *item) {
  (void)arg;
  if (g_prod_n == 6)
    return 0;
  if (g_prod_n == 3) {
    fp_reader rd;
    g_prod_refusals += fp_iter_next(g_prod_it, &rd, 1.0) == FP_EINVAL;
    fp_iter_free(g_prod_it); /* refused: nothing freed */
    g_prod_refusals += strstr(fp_last_error(), "own producer") != NULL;
    g_prod_refusals += fp_pool_join(g_prod_pool) == FP_EINVAL;
    fp_pool_free(g_prod_pool); /* refused: nothing freed */
    g_prod_refusals += strstr(fp_last_error(), "producer") != NULL;
  }
  return fp_write_int(item, g_prod_n++) == 0 ? 1 : -1;
}

START_TEST(producer_calls_into_its_own_iterator_are_refused) {
  g_prod_pool = new_pool(2);
  g_prod_n = g_prod_refusals = 0;
  fp_call_opts co = {0};
  co.readahead = 2;
  ck_assert_int_eq(fp_pool_imap_producer(g_prod_pool, square,
                                         reentrant_producer, NULL, &co,
                                         &g_prod_it),
                   0);
  fp_reader rd;
  int64_t v, sum = 0;
  int got = 0, rc;
  while ((rc = fp_iter_next(g_prod_it, &rd, 30)) == 0) {
    ck_assert_int_eq(fp_read_int(&rd, &v), 0);
    sum += v;
    got++;
  }
  ck_assert_int_eq(rc, FP_EOF);
  ck_assert_int_eq(got, 6);
  ck_assert_int_eq(sum, 0 + 1 + 4 + 9 + 16 + 25);
  ck_assert_int_eq(g_prod_refusals, 4);
  fp_iter_free(g_prod_it);
  fp_pool_free(g_prod_pool);
}
END_TEST

/* A producer may make, use, join and free a pool of its own: only the
 * pool of the iterator it feeds (and of any producer it runs inside) is
 * refused. The inner producer here runs nested inside the outer one (it
 * feeds an iterator the outer producer reads), and its calls on the OUTER
 * iterator and pool are refused too. */
static fp_pool *g_outer_pool;
static fp_iter *g_outer_it;
static int g_inner_n, g_outer_n, g_nested_refusals, g_helper_ok;

static int inner_producer(void *arg, fp_writer *item) {
  (void)arg;
  if (g_inner_n == 2)
    return 0;
  if (g_inner_n == 1) {
    fp_reader rd;
    g_nested_refusals += fp_iter_next(g_outer_it, &rd, 1.0) == FP_EINVAL;
    g_nested_refusals += fp_pool_join(g_outer_pool) == FP_EINVAL;
  }
  return fp_write_int(item, g_inner_n++) == 0 ? 1 : -1;
}

static int outer_producer(void *arg, fp_writer *item) {
  (void)arg;
  if (g_outer_n == 3)
    return 0;
  if (g_outer_n == 1) {
    /* a helper pool, made and ended here */
    fp_pool *helper = new_pool(1);
    fp_writer a, out;
    fp_writer_init(&a);
    fp_writer_init(&out);
    g_helper_ok = fp_write_int(&a, 7) == 0 &&
                  fp_pool_apply(helper, square, &a, &out) == 0 &&
                  fp_pool_close(helper) == 0 && fp_pool_join(helper) == 0;
    fp_pool_free(helper);
    fp_writer_free(&a);
    fp_writer_free(&out);
    /* an iterator of the same pool, whose producer runs nested */
    fp_iter *inner;
    fp_call_opts co = {0};
    co.readahead = 1;
    fp_reader rd;
    if (fp_pool_imap_producer(g_outer_pool, square, inner_producer, NULL, &co,
                              &inner) == 0) {
      while (fp_iter_next(inner, &rd, 30) == 0) {
      }
      fp_iter_free(inner);
    }
  }
  return fp_write_int(item, g_outer_n++) == 0 ? 1 : -1;
}

START_TEST(producers_may_use_other_pools_but_not_their_own_input) {
  g_outer_pool = new_pool(1);
  g_inner_n = g_outer_n = g_nested_refusals = g_helper_ok = 0;
  fp_call_opts co = {0};
  co.readahead = 1;
  ck_assert_int_eq(fp_pool_imap_producer(g_outer_pool, square, outer_producer,
                                         NULL, &co, &g_outer_it),
                   0);
  fp_reader rd;
  int got = 0, rc;
  while ((rc = fp_iter_next(g_outer_it, &rd, 30)) == 0)
    got++;
  ck_assert_int_eq(rc, FP_EOF);
  ck_assert_int_eq(got, 3);
  ck_assert_int_eq(g_inner_n, 2);
  ck_assert_msg(g_helper_ok, "the helper pool inside the producer failed");
  ck_assert_int_eq(g_nested_refusals, 2);
  fp_iter_free(g_outer_it);
  fp_pool_free(g_outer_pool);
  fp_test_no_children(); /* the helper pool's processes are gone too */
}
END_TEST

/* Two threads, each feeding an imap of its own pool, whose producers each
 * close and join the OTHER pool: each join would read the other's input,
 * whose producer lock the other thread holds while it waits in its own
 * join. At least one join is refused; nothing deadlocks. */
static pthread_barrier_t g_cross_barrier;
typedef struct cross {
  fp_pool *mine, *other;
  int n, join_rc;
} cross;

static int cross_producer(void *arg, fp_writer *item) {
  cross *c = arg;
  if (c->n == 3)
    return 0;
  if (c->n == 1) {
    pthread_barrier_wait(&g_cross_barrier);
    fp_pool_close(c->other);
    c->join_rc = fp_pool_join(c->other);
  }
  return fp_write_int(item, c->n++) == 0 ? 1 : -1;
}

static void *cross_thread(void *arg) {
  cross *c = arg;
  fp_call_opts co = {0};
  co.readahead = 1;
  fp_iter *it;
  fp_reader rd;
  if (fp_pool_imap_producer(c->mine, square, cross_producer, c, &co, &it) ==
      0) {
    while (fp_iter_next(it, &rd, 30) == 0) {
    }
    fp_iter_free(it);
  }
  return NULL;
}

START_TEST(producers_joining_each_others_pools_never_deadlock) {
  cross c[2] = {{0}};
  c[0].mine = c[1].other = new_pool(1);
  c[1].mine = c[0].other = new_pool(1);
  ck_assert_int_eq(pthread_barrier_init(&g_cross_barrier, NULL, 2), 0);
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(pthread_create(&t[i], NULL, cross_thread, &c[i]), 0);
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
  ck_assert_msg(c[0].join_rc == FP_EINVAL || c[1].join_rc == FP_EINVAL,
                "both joins returned %d and %d", c[0].join_rc, c[1].join_rc);
  pthread_barrier_destroy(&g_cross_barrier);
  fp_pool_free(c[0].mine);
  fp_pool_free(c[1].mine);
  fp_test_no_children();
}
END_TEST

/* fp_manager_free from an fp_dict_foreach callback would unmap the arena
 * the walk goes on in: it is refused (nothing freed) and the walk ends
 * normally. */
static fp_manager *g_walked;
static int free_manager_cb(const void *k, size_t kl, const void *v, size_t vl,
                           void *arg) {
  (void)k;
  (void)kl;
  (void)v;
  (void)vl;
  if ((*(int *)arg)++ == 0)
    fp_manager_free(g_walked);
  return 0;
}

START_TEST(manager_free_inside_its_foreach_is_refused) {
  fp_dict *d;
  ck_assert_int_eq(fp_manager_new(&g_walked, NULL), 0);
  ck_assert_int_eq(fp_dict_new(g_walked, &d), 0);
  for (int i = 0; i < 1000; i++) {
    char k[16];
    int n = snprintf(k, sizeof(k), "%d", i);
    ck_assert_int_eq(fp_dict_set_int(d, k, (size_t)n, i), 0);
  }
  int calls = 0;
  ck_assert_int_eq(fp_dict_foreach(d, free_manager_cb, &calls), 0);
  ck_assert_int_eq(calls, 1000);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "fp_dict_foreach"));
  ck_assert_int_eq(fp_dict_len(d), 1000); /* still mapped */
  fp_manager_free(g_walked);
}
END_TEST

/* The same writer as items and out: the results are appended after the
 * items, which are read before out moves. */
START_TEST(map_values_with_items_as_out) {
  fp_pool *p = new_pool(2);
  fp_writer w;
  fp_reader r;
  int64_t v;
  fp_writer_init(&w);
  for (int i = 0; i < 2000; i++)
    fp_write_int(&w, i);
  ck_assert_int_eq(fp_pool_map_values(p, square, &w, &w, NULL), 0);
  fp_reader_init(&r, w.data, w.len);
  for (int i = 0; i < 2000; i++) {
    ck_assert_int_eq(fp_read_int(&r, &v), 0);
    ck_assert_int_eq(v, i);
  }
  for (int i = 0; i < 2000; i++) {
    ck_assert_int_eq(fp_read_int(&r, &v), 0);
    ck_assert_int_eq(v, (int64_t)i * i);
  }
  ck_assert(fp_reader_at_end(&r));
  fp_writer_free(&w);
  fp_pool_free(p);
}
END_TEST

/* A daemon with 0-2 closed gets every pool it asks for, not just the
 * first: libuv's fork handler must not find a free standard slot in the
 * fork server or its workers. */
START_TEST(pools_one_after_another_with_stdio_closed) {
  if (fp_test_under_valgrind()) /* valgrind keeps low descriptors */
    return;
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(0);
    close(1);
    close(2);
    for (int round = 0; round < 3; round++) {
      fp_pool *p = NULL;
      fp_pool_opts o = {0};
      fp_writer a, out;
      o.processes = 2;
      if (fp_pool_new(&p, &o) != 0)
        _exit(10 + round);
      fp_writer_init(&a);
      fp_writer_init(&out);
      fp_write_int(&a, 4);
      if (fp_pool_apply(p, square, &a, &out) != 0)
        _exit(20 + round);
      fp_pool_free(p);
      fp_writer_free(&a);
      fp_writer_free(&out);
    }
    _exit(0);
  }
  int st;
  ck_assert_int_eq(fp_test_wait_child(pid, 30, &st), 0);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "child status %d (10+round: new failed, 20+round: apply)",
                WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
}
END_TEST

/* close + join while a producer-fed imap is half read: join reads the rest
 * of the input itself (as CPython's task handler exhausts imap's
 * generator), then every result is still there to read. */
START_TEST(join_reads_the_rest_of_a_producer_input) {
  fp_pool *p = new_pool(2);
  counts c = {0, 0, 0, 300};
  fp_call_opts co = {0};
  fp_iter *it;
  fp_reader r;
  int64_t v;
  int rc;
  co.readahead = 20;
  ck_assert_int_eq(
      fp_pool_imap_producer(p, square, count_producer, &c, &co, &it), 0);
  for (int i = 0; i < 5; i++) {
    ck_assert_int_eq(fp_iter_next(it, &r, 20), 0);
    c.consumed++;
  }
  ck_assert_int_eq(fp_pool_close(p), 0);
  ck_assert_int_eq(fp_pool_join(p), 0);
  ck_assert_int_eq(c.produced, c.total);
  while ((rc = fp_iter_next(it, &r, 20)) == 0) {
    ck_assert_int_eq(fp_read_int(&r, &v), 0);
    ck_assert_int_eq(v, c.consumed * c.consumed);
    c.consumed++;
  }
  ck_assert_int_eq(rc, FP_EOF);
  ck_assert_int_eq(c.consumed, c.total);
  fp_iter_free(it);
  fp_pool_free(p);
  fp_test_no_children();
}
END_TEST

static atomic_int g_free_seen = 1;

static void free_in_callback(fp_result *res, void *arg) {
  (void)res;
  fp_pool_free(arg); /* refused: this thread runs the pool's loop */
  atomic_store(&g_free_seen,
               strstr(fp_last_error(), "from a callback") != NULL ? 0 : -1);
}

/* fp_pool_free from a callback would free the loop running it: it frees
 * nothing, says so, and the pool goes on working. */
START_TEST(pool_free_in_a_callback_is_refused) {
  fp_pool *p = new_pool(1);
  fp_call_opts co = {0};
  fp_result *r;
  fp_writer a, out;
  co.callback = free_in_callback;
  co.arg = p;
  ck_assert_int_eq(fp_pool_apply_async(p, square, NULL, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 20), 0);
  ck_assert_int_eq(atomic_load(&g_free_seen), 0);
  fp_result_free(r);
  fp_writer_init(&a);
  fp_writer_init(&out);
  fp_write_int(&a, 7);
  ck_assert_int_eq(fp_pool_apply(p, square, &a, &out), 0);
  fp_writer_free(&a);
  fp_writer_free(&out);
  fp_pool_free(p);
  fp_test_no_children();
}
END_TEST

static int spin_task(fp_reader *args, fp_writer *out) {
  (void)args;
  (void)out;
  for (volatile int spin = 1; spin;) /* until the time limit kills it */
    ;
  return 0;
}

/* A positive time limit below a nanosecond is the shortest limit, not
 * "no limit". */
START_TEST(sub_nanosecond_time_limit_still_limits) {
  fp_pool *p = new_pool(1);
  fp_call_opts co = {0};
  fp_result *r;
  co.timeout = 1e-12;
  ck_assert_int_eq(fp_pool_apply_async(p, spin_task, NULL, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), FP_ETIMEDOUT);
  fp_result_free(r);
  fp_pool_free(p);
  fp_test_no_children();
}
END_TEST

/* A task whose result is `n` KiB of bytes (n its argument). */
static int kib_task(fp_reader *args, fp_writer *out) {
  int64_t n = 0;
  void *dst;
  fp_read_int(args, &n);
  int rc = fp_write_bytes_begin(out, (size_t)n * 1024, &dst);
  if (rc == 0)
    memset(dst, (int)(n & 0x7f), (size_t)n * 1024);
  return rc;
}

/* A chunk's results are not bound by max_frame, only each one is: past it
 * they travel in several frames (past the result ring too), whatever the
 * call. */
START_TEST(chunk_results_larger_than_max_frame) {
  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  fp_call_opts co = {0};
  fp_writer items, out;
  fp_reader r;
  fp_result *res;
  fp_iter *it;
  o.processes = 2;
  o.max_frame = 128 * 1024; /* above any one result, not their sum */
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  fp_writer_init(&items);
  fp_writer_init(&out);
  for (int i = 0; i < 40; i++)
    fp_write_int(&items, 40 + i % 60); /* 40-99 KiB each */
  co.chunksize = 20; /* about 1.4 MB of results a chunk */
  for (int round = 0; round < 3; round++) {
    fp_writer_reset(&out);
    if (round == 0) {
      ck_assert_int_eq(fp_pool_map_values(p, kib_task, &items, &out, &co), 0);
    } else if (round == 1) {
      ck_assert_int_eq(
          fp_pool_map_values_async(p, kib_task, &items, &co, &res), 0);
      ck_assert_int_eq(fp_result_get(res, 60), 0);
      ck_assert_int_eq(fp_result_value(res, &r), 0);
      while (!fp_reader_at_end(&r))
        ck_assert_int_eq(fp_copy_value(&out, &r), 0);
      fp_result_free(res);
    } else {
      ck_assert_int_eq(fp_pool_imap(p, kib_task, &items, &co, &it), 0);
      while (fp_iter_next(it, &r, 60) == 0)
        ck_assert_int_eq(fp_copy_value(&out, &r), 0);
      fp_iter_free(it);
    }
    fp_reader_init(&r, out.data, out.len);
    for (int i = 0; i < 40; i++) {
      const void *b;
      size_t n;
      int64_t k = 40 + i % 60;
      ck_assert_int_eq(fp_read_bytes(&r, &b, &n), 0);
      ck_assert_uint_eq(n, (size_t)k * 1024);
      ck_assert_int_eq(((const unsigned char *)b)[n - 1], (int)(k & 0x7f));
    }
    ck_assert(fp_reader_at_end(&r));
  }
  fp_writer_free(&items);
  fp_writer_free(&out);
  fp_pool_free(p);
  fp_test_no_children();
}
END_TEST

/* Every call that starts work, on a pool that was closed or terminated
 * and then joined (its link freed), returns FP_ECLOSED. A submitting
 * thread that also took in results read the freed link (SIGSEGV). */
static int e_ident(const void *in, void *out) {
  memcpy(out, in, 8);
  return 0;
}

/* A task may reset the writer it is given: with several items in a
 * chunk, that must not wipe the chunk's earlier results. */
static int t_reset_then_ten_x(fp_reader *args, fp_writer *out) {
  int64_t x = 0;
  int rc = fp_read_int(args, &x);
  if (rc != 0)
    return rc;
  fp_writer_reset(out);
  return fp_write_int(out, x * 10);
}

static int t_raw_garbage(fp_reader *args, fp_writer *out) {
  (void)args;
  static const unsigned char junk[3] = {9, 9, 9};
  return fp_writer_append(out, junk, sizeof(junk));
}

static int t_bytes_of(fp_reader *args, fp_writer *out) {
  int64_t n = 0;
  void *d;
  int rc = fp_read_int(args, &n);
  if (rc == 0 && (rc = fp_write_bytes_begin(out, (size_t)n, &d)) == 0)
    memset(d, 1, (size_t)n);
  return rc;
}

static int t_sigkill_self(fp_reader *args, fp_writer *out) {
  (void)args;
  (void)out;
  raise(SIGKILL);
  return 0;
}

static int g_left;
static int producer_returning_two(void *arg, fp_writer *item) {
  (void)arg;
  if (g_left == 0)
    return 0;
  fp_write_int(item, g_left--);
  return 2;
}

START_TEST(task_writer_resets_keep_the_chunks_other_results) {
  fp_pool *p = new_pool(1);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(fp_write_int(&items, i), 0);
  for (size_t cs = 1; cs <= 4; cs *= 2) {
    fp_call_opts co = {0};
    co.chunksize = cs;
    fp_writer_reset(&out);
    ck_assert_int_eq(
        fp_pool_map_values(p, t_reset_then_ten_x, &items, &out, &co), 0);
    fp_reader r;
    fp_reader_init(&r, out.data, out.len);
    for (int64_t i = 0; i < 4; i++) {
      int64_t v = -1;
      ck_assert_int_eq(fp_read_int(&r, &v), 0);
      ck_assert_int_eq(v, i * 10);
    }
    ck_assert(fp_reader_at_end(&r));
  }
  fp_writer_free(&items);
  fp_writer_free(&out);
  fp_pool_free(p);
}
END_TEST

/* Every refusal and item failure around values and frames says what was
 * wrong, not just the code's generic text. */
START_TEST(value_and_frame_failures_say_what) {
  fp_pool_opts o = {0};
  fp_pool *p = NULL;
  fp_writer a, out;
  fp_writer_init(&a);
  fp_writer_init(&out);
  o.processes = 1;
  o.max_frame = 4096;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  fp_assert_says(fp_pool_apply(p, t_raw_garbage, NULL, &out), FP_EPROTO,
                 "not well-formed");
  ck_assert_int_eq(fp_write_int(&a, 8000), 0);
  fp_assert_says(fp_pool_apply(p, t_bytes_of, &a, &out), FP_EMSGSIZE, "leaves");
  fp_writer_reset(&a);
  static char big[5000];
  ck_assert_int_eq(fp_write_int(&a, 1), 0);
  ck_assert_int_eq(fp_write_bytes(&a, big, sizeof(big)), 0);
  fp_assert_says(fp_pool_map_values(p, square, &a, &out, NULL), FP_EMSGSIZE,
                 "item 1 of 5005 bytes");
  fp_writer_reset(&a);
  ck_assert_int_eq(fp_pack(&a, "[i] i", (int64_t)1, (int64_t)2), 0);
  fp_assert_says(fp_pool_starmap(p, square, &a, &out, NULL), FP_ETYPE,
                 "item 1 of a starmap is not a list");
  fp_pool_free(p);

  /* A producer that returns neither 0, 1 nor a negative code. */
  fp_iter *it;
  fp_reader rd;
  int rc;
  p = new_pool(1);
  g_left = 3;
  ck_assert_int_eq(
      fp_pool_imap_producer(p, square, producer_returning_two, NULL, NULL, &it),
      0);
  while ((rc = fp_iter_next(it, &rd, 30)) == 0)
    ;
  ck_assert_int_eq(rc, FP_EPROTO);
  fp_iter_free(it);
  fp_pool_free(p);

  /* Under a memory_limit, a SIGKILL may be the worker running out. */
  o.max_frame = 0;
  o.memory_limit = (size_t)1 << 40;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  fp_assert_says(fp_pool_apply(p, t_sigkill_self, NULL, &out), FP_EWORKER,
                 "memory_limit");
  fp_pool_free(p);
  fp_writer_free(&a);
  fp_writer_free(&out);
}
END_TEST

START_TEST(calls_after_join_are_refused) {
  for (int terminate = 0; terminate < 2; terminate++) {
    fp_pool *p = new_pool(2);
    ck_assert_int_eq(fp_pool_apply(p, square, NULL, NULL), 0);
    ck_assert_int_eq(terminate ? fp_pool_terminate(p) : fp_pool_close(p), 0);
    ck_assert_int_eq(fp_pool_join(p), 0);
    fp_writer args, out;
    fp_writer_init(&args);
    fp_writer_init(&out);
    fp_write_int(&args, 3);
    int64_t in[4] = {1, 2, 3, 4}, res[4];
    fp_result *r = NULL;
    ck_assert_int_eq(fp_pool_apply_async(p, square, &args, NULL, &r),
                     FP_ECLOSED);
    ck_assert_ptr_null(r);
    ck_assert_int_eq(fp_pool_apply(p, square, &args, &out), FP_ECLOSED);
    ck_assert_int_eq(fp_pool_map_async(p, e_ident, in, 4, 8, res, 8, NULL, &r),
                     FP_ECLOSED);
    ck_assert_int_eq(fp_pool_map(p, e_ident, in, 4, 8, res, 8, NULL),
                     FP_ECLOSED);
    ck_assert_int_eq(fp_pool_map_values(p, square, &args, &out, NULL),
                     FP_ECLOSED);
    fp_writer_free(&args);
    fp_writer_free(&out);
    fp_pool_free(p);
  }
  fp_test_no_children();
}
END_TEST

/* A job canceled while one of its chunks waits in a busy worker's queue
 * (behind another job's running chunk): that chunk never runs. Short
 * tasks first, so that the worker's queue holds more than one chunk. */
static atomic_long *g_ran;   /* shared with the workers */
static atomic_int *g_release; /* lets the slow task end */

static int slow_until_released(fp_reader *args, fp_writer *out) {
  (void)args;
  while (!atomic_load(g_release))
    usleep(100); /* the test's pace only: the assertion waits on results */
  return fp_write_int(out, 1);
}

static int counts_runs(fp_reader *args, fp_writer *out) {
  (void)args;
  atomic_fetch_add(g_ran, 1);
  return fp_write_int(out, 2);
}

START_TEST(canceled_chunk_queued_on_a_busy_worker_never_runs) {
  void *shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(shm, MAP_FAILED);
  g_ran = shm;
  g_release = (atomic_int *)((char *)shm + 64);
  fp_pool *p = new_pool(1);
  for (int i = 0; i < 200; i++)
    ck_assert_int_eq(fp_pool_apply(p, square, NULL, NULL), 0);
  for (int round = 0; round < 20; round++) {
    fp_result *a, *b;
    atomic_store(g_release, 0);
    ck_assert_int_eq(fp_pool_apply_async(p, slow_until_released, NULL, NULL,
                                         &a),
                     0);
    ck_assert_int_eq(fp_pool_apply_async(p, counts_runs, NULL, NULL, &b), 0);
    ck_assert_int_eq(fp_result_cancel(b), 0);
    atomic_store(g_release, 1);
    ck_assert_int_eq(fp_result_get(a, 30), 0);
    ck_assert_int_eq(fp_result_get(b, 30), FP_ECANCELED);
    fp_result_free(a);
    fp_result_free(b);
  }
  /* Work after the skips still runs, on the same worker. */
  ck_assert_int_eq(fp_pool_apply(p, counts_runs, NULL, NULL), 0);
  ck_assert_int_eq(atomic_load(g_ran), 1);
  fp_pool_free(p);
  munmap(shm, 4096);
  fp_test_no_children();
}
END_TEST

/* A blocking call whose output writer already failed is refused before
 * any task runs (its results could not be kept), and malformed items are
 * named by index whether or not the call gives a chunksize. */
START_TEST(refusals_come_before_any_task_runs) {
  void *shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(shm, MAP_FAILED);
  g_ran = shm;
  fp_pool *p = new_pool(2);
  fp_writer items, bad_out, out;
  fp_writer_init(&items);
  fp_writer_init(&bad_out);
  fp_writer_init(&out);
  ck_assert_int_eq(fp_pack(&items, "i i i", (int64_t)1, (int64_t)2, (int64_t)3),
                   0);
  ck_assert_int_ne(fp_write_str(&bad_out, NULL), 0);
  fp_assert_says(fp_pool_apply(p, counts_runs, NULL, &bad_out), FP_EINVAL,
                 "output writer is in an error state");
  fp_assert_says(fp_pool_map_values(p, counts_runs, &items, &bad_out, NULL),
                 FP_EINVAL, "output writer is in an error state");
  fp_assert_says(fp_pool_starmap(p, counts_runs, &items, &bad_out, NULL),
                 FP_EINVAL, "output writer is in an error state");
  ck_assert_int_eq(atomic_load(g_ran), 0);

  /* Item 2 loses its last byte. */
  fp_writer_reset(&items);
  ck_assert_int_eq(fp_pack(&items, "i i i", (int64_t)1, (int64_t)2, (int64_t)3),
                   0);
  items.len--;
  fp_call_opts co = {.chunksize = 1};
  fp_assert_says(fp_pool_map_values(p, counts_runs, &items, &out, NULL),
                 FP_EPROTO, "item 2 of the input");
  fp_assert_says(fp_pool_map_values(p, counts_runs, &items, &out, &co),
                 FP_EPROTO, "item 2 of the input");
  fp_result *r = NULL;
  fp_assert_says(fp_pool_map_values_async(p, counts_runs, &items, NULL, &r),
                 FP_EPROTO, "item 2 of the input");
  ck_assert_ptr_null(r);
  ck_assert_int_eq(atomic_load(g_ran), 0);
  ck_assert_int_eq(out.len, 0);
  fp_writer_free(&items);
  fp_writer_free(&bad_out);
  fp_writer_free(&out);
  fp_pool_free(p);
  munmap(shm, 4096);
  fp_test_no_children();
}
END_TEST

/* Job A is canceled (or hits its time limit) while its worker finishes
 * it and starts job B's chunk: the SIGTERM meant for A must not kill B,
 * and B must never run twice (it counts its starts in shared memory). The
 * race is timing-dependent: 300 rounds at random offsets hit it a dozen
 * times on a 2-CPU machine with the kill unaimed. Under valgrind, which
 * checks memory here rather than the race, 20 rounds. */
static atomic_long *g_starts; /* one counter per round, shared */

static int spin_arg_us(fp_reader *args, fp_writer *out) {
  int64_t us = 0;
  fp_read_int(args, &us);
  fp_test_spin_us((long)us);
  return fp_write_nil(out);
}

static int counts_start(fp_reader *args, fp_writer *out) {
  int64_t round = 0;
  fp_read_int(args, &round);
  atomic_fetch_add(&g_starts[round], 1);
  fp_test_spin_us(3000);
  return fp_write_int(out, round);
}

START_TEST(kill_for_one_job_never_hits_the_next) {
  enum { ROUNDS = 300 };
  int rounds = fp_test_under_valgrind() ? 20 : ROUNDS;
  size_t bytes = ROUNDS * sizeof(*g_starts);
  g_starts = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(g_starts, MAP_FAILED);
  fp_pool_opts o = {0};
  o.processes = 1;
  o.inflight = 2;
  o.kill_grace = 0.05;
  fp_pool *p;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  unsigned seed = 1;
  int timed = _i; /* loop test: 0 cancel, 1 time limit */
  for (int64_t i = 0; i < rounds; i++) {
    fp_writer a, b;
    fp_writer_init(&a);
    fp_writer_init(&b);
    fp_write_int(&a, 500 + rand_r(&seed) % 1500);
    fp_write_int(&b, i);
    fp_call_opts ca = {0};
    if (timed)
      ca.timeout = 0.0015;
    fp_result *ra, *rb;
    ck_assert_int_eq(fp_pool_apply_async(p, spin_arg_us, &a, &ca, &ra), 0);
    ck_assert_int_eq(fp_pool_apply_async(p, counts_start, &b, NULL, &rb), 0);
    if (!timed) {
      fp_test_spin_us(rand_r(&seed) % 2500);
      fp_result_cancel(ra);
    }
    fp_result_get(ra, 30);
    ck_assert_msg(fp_result_get(rb, 30) == 0, "round %lld: job B: %s",
                  (long long)i, fp_result_error(rb));
    ck_assert_msg(atomic_load(&g_starts[i]) == 1,
                  "%s round %lld: job B started %ld times",
                  timed ? "time limit" : "cancel", (long long)i,
                  atomic_load(&g_starts[i]));
    fp_result_free(ra);
    fp_result_free(rb);
    fp_writer_free(&a);
    fp_writer_free(&b);
  }
  fp_pool_free(p);
  munmap(g_starts, bytes);
  fp_test_no_children();
}
END_TEST

/* A closed pool ends from its pool thread's loop. When a caller waiting
 * in fp_result_get took the last result in itself (the worker then sends
 * no kick), the pool thread slept on and fp_pool_join never returned
 * (about one round in 400 of this test's loop; 20 rounds under valgrind,
 * where a round takes a third of a second). */
static int busy_1ms(fp_reader *args, fp_writer *out) {
  (void)args;
  fp_test_spin_us(1000);
  return fp_write_int(out, 1);
}

static void *join_and_flag(void *arg) {
  fp_pool *p = arg;
  fp_pool_join(p);
  atomic_store(&g_cb_rc, 0);
  return NULL;
}

START_TEST(join_returns_when_a_waiter_took_the_last_result) {
  int rounds = fp_test_under_valgrind() ? 20 : 300;
  for (int round = 0; round < rounds; round++) {
    fp_pool *p = new_pool(1);
    fp_result *r;
    pthread_t t;
    ck_assert_int_eq(fp_pool_apply_async(p, busy_1ms, NULL, NULL, &r), 0);
    ck_assert_int_eq(fp_pool_close(p), 0);
    atomic_store(&g_cb_rc, 1);
    ck_assert_int_eq(pthread_create(&t, NULL, join_and_flag, p), 0);
    ck_assert_int_eq(fp_result_get(r, 30), 0);
    fp_result_free(r);
    /* Bounded: a join that never returns fails the round, and the test's
     * own timeout ends the process. */
    for (int i = 0; i < 10000 && atomic_load(&g_cb_rc) != 0; i++)
      usleep(1000);
    ck_assert_msg(atomic_load(&g_cb_rc) == 0,
                  "round %d: fp_pool_join still blocked 10 s after the last "
                  "result was taken in",
                  round);
    pthread_join(t, NULL);
    fp_pool_free(p);
  }
  fp_test_no_children();
}
END_TEST

Suite *misuse_suite(void) {
  Suite *s = suite_create("misuse");
  TCase *tc = tcase_create("pool");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, worker_info_after_join_is_safe);
  tcase_add_test(tc, map_of_too_many_chunks_fails_with_enomem);
  tcase_add_test(tc, joins_from_several_threads_return_together);
  tcase_add_test(tc, iter_next_in_a_callback_is_refused);
  tcase_add_test(tc, readahead_bounds_a_producer_with_big_chunks);
  tcase_add_test(tc, refused_calls_replace_the_last_error);
  tcase_add_test(tc, refusals_name_the_bad_argument);
  tcase_add_test(tc, waits_set_and_join_clears_the_last_error);
  tcase_add_test(tc, forked_copy_cannot_stop_the_parents_pool);
  tcase_add_test(tc, copies_made_without_atfork_handlers_are_copies);
  tcase_add_test(tc, child_forked_in_a_callback_may_block_on_its_own_pool);
  tcase_add_test(tc, cancel_under_a_lock_the_callbacks_take);
  tcase_add_test(tc, cancel_of_a_finished_job_is_refused_at_once);
  tcase_add_test(tc, producer_calls_into_its_own_iterator_are_refused);
  tcase_add_test(tc, producers_may_use_other_pools_but_not_their_own_input);
  tcase_add_test(tc, producers_joining_each_others_pools_never_deadlock);
  tcase_add_test(tc, manager_free_inside_its_foreach_is_refused);
  tcase_add_test(tc, map_values_with_items_as_out);
  tcase_add_test(tc, pools_one_after_another_with_stdio_closed);
  tcase_add_test(tc, join_reads_the_rest_of_a_producer_input);
  tcase_add_test(tc, pool_free_in_a_callback_is_refused);
  tcase_add_test(tc, sub_nanosecond_time_limit_still_limits);
  tcase_add_test(tc, chunk_results_larger_than_max_frame);
  tcase_add_test(tc, task_writer_resets_keep_the_chunks_other_results);
  tcase_add_test(tc, value_and_frame_failures_say_what);
  tcase_add_test(tc, calls_after_join_are_refused);
  tcase_add_test(tc, canceled_chunk_queued_on_a_busy_worker_never_runs);
  tcase_add_test(tc, refusals_come_before_any_task_runs);
  tcase_add_loop_test(tc, kill_for_one_job_never_hits_the_next, 0, 2);
  tcase_add_test(tc, join_returns_when_a_waiter_took_the_last_result);
  suite_add_tcase(s, tc);
  return s;
}
