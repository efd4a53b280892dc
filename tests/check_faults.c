/* SPDX-License-Identifier: MIT */
/* check_faults.c - a dead worker fails its task, never the pool.
 *
 * Crashes of every kind (NULL dereference, abort, exit, SIGKILL from
 * outside, time limits, memory limits, failing initializers) in apply, map,
 * imap and apply_async; the crash policies; terminate with workers that
 * ignore SIGTERM; no orphans when the master is SIGKILLed; no deadlock when
 * a replacement worker is forked while a user thread holds a lock. Each
 * case is bounded by a Check timeout, so a hang is a failure, and each ends
 * with no child process left.
 */
#include "forkpool.h"
#include "testutil.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static fp_pool *pool_with(int n, fp_crash_policy pol, int retries) {
  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  o.processes = n;
  o.on_crash = pol;
  o.retries = retries;
  int rc = fp_pool_new(&p, &o);
  ck_assert_msg(rc == 0, "fp_pool_new: %s", fp_err_name(rc));
  return p;
}

/* The pool still answers after a fault. */
static int t_pid(fp_reader *args, fp_writer *out) {
  (void)args;
  return fp_write_int(out, (int64_t)getpid());
}

static void assert_serving(fp_pool *p) {
  fp_writer o;
  fp_writer_init(&o);
  ck_assert_int_eq(fp_pool_apply(p, t_pid, NULL, &o), 0);
  fp_writer_free(&o);
}

/* ---- tasks that die ------------------------------------------------------ */

enum { CRASH_SEGV = 1, CRASH_ABORT, CRASH_EXIT3, CRASH_EXIT0, CRASH_SLEEP };

/* A real NULL store: UBSan would report it and exit(1) instead of letting
 * the worker die by SIGSEGV, which is the fault under test. */
__attribute__((no_sanitize("undefined"))) static void die(int how) {
  switch (how) {
  case CRASH_SEGV: {
    volatile int *p = NULL;
    *p = 1;
    break;
  }
  case CRASH_ABORT:
    abort();
  case CRASH_EXIT3:
    exit(3);
  case CRASH_EXIT0:
    exit(0);
  }
}

/* args: (how, index-to-crash) ; crashes when its item index matches, or
 * always for apply (index -1). */
static int t_crash(fp_reader *args, fp_writer *out) {
  int64_t how, at;
  fp_unpack(args, "i i", &how, &at);
  if (at < 0 || at == fp_task_index())
    die((int)how);
  return fp_write_int(out, fp_task_index());
}

static int e_crash_at_37(const void *in, void *out) {
  int64_t v = *(const int64_t *)in;
  if (v == 37)
    die(CRASH_SEGV);
  *(int64_t *)out = v + 1;
  return 0;
}

static int e_crash_low(const void *in, void *out) {
  int64_t v = *(const int64_t *)in;
  if (v < 2)
    die(CRASH_ABORT);
  *(int64_t *)out = v;
  return 0;
}

static void teardown(void) {
  fp_test_no_children();
}

static void apply_dies(int how, const char *expect) {
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  fp_writer a, o;
  fp_writer_init(&a);
  fp_writer_init(&o);
  fp_pack(&a, "i i", (int64_t)how, (int64_t)-1);
  ck_assert_int_eq(fp_pool_apply(p, t_crash, &a, &o), FP_EWORKER);
  ck_assert_msg(strstr(fp_last_error(), expect) != NULL, "message: %s",
                fp_last_error());
  ck_assert_msg(strstr(fp_last_error(), "item 0") != NULL, "message: %s",
                fp_last_error());
  ck_assert_int_eq(o.len, 0);
  assert_serving(p);
  fp_pool_free(p);
  fp_writer_free(&a);
  fp_writer_free(&o);
}

START_TEST(apply_null_dereference_fails_with_eworker) {
  apply_dies(CRASH_SEGV, "SIGSEGV");
}
END_TEST

START_TEST(apply_abort_fails_with_eworker) {
  apply_dies(CRASH_ABORT, "SIGABRT");
}
END_TEST

START_TEST(apply_exit3_fails_with_eworker) {
  apply_dies(CRASH_EXIT3, "exited with status 3");
}
END_TEST

START_TEST(apply_exit0_mid_task_is_a_failure) {
  apply_dies(CRASH_EXIT0, "exited with status 0");
}
END_TEST

/* Counts runs in shared memory, then breaks its worker's descriptors
 * (mode 0: closes every one from 3 up, the worker's socket among them;
 * mode 1: sets O_NONBLOCK on each) and returns a 1 MiB result, which
 * only the socket carries. */
static _Atomic int *g_runs;

static int t_break_fds_big_result(fp_reader *args, fp_writer *out) {
  int64_t mode;
  if (fp_unpack(args, "i", &mode) != 0)
    return fp_task_fail("bad args");
  atomic_fetch_add(g_runs, 1);
  for (int fd = 3; fd < 1024; fd++)
    if (mode == 0)
      close(fd);
    else if (fcntl(fd, F_GETFL) >= 0)
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  static unsigned char big[1 << 20];
  memset(big, 7, sizeof(big));
  return fp_write_bytes(out, big, sizeof(big));
}

/* A task whose result cannot be sent ran once and fails as such: the
 * worker used to clear its "running" word before the send failed, and
 * the master, taking the chunk for one never started, ran it again
 * (returning success). A non-blocking socket no longer fails the send. */
START_TEST(result_the_worker_cannot_send_never_reruns) {
  g_runs = mmap(NULL, sizeof(*g_runs), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(g_runs, MAP_FAILED);
  fp_pool *p = pool_with(1, FP_CRASH_DEFAULT, 0);
  for (int64_t mode = 0; mode < 2; mode++) {
    fp_writer a, o;
    fp_writer_init(&a);
    fp_writer_init(&o);
    atomic_store(g_runs, 0);
    ck_assert_int_eq(fp_pack(&a, "i", mode), 0);
    int rc = fp_pool_apply(p, t_break_fds_big_result, &a, &o);
    if (mode == 0) {
      ck_assert_int_eq(rc, FP_EWORKER);
      ck_assert_msg(strstr(fp_last_error(), "could not send its result"),
                    "message: %s", fp_last_error());
    } else {
      ck_assert_msg(rc == 0, "non-blocking socket: %s", fp_last_error());
      ck_assert_uint_eq(o.len, 5 + (1u << 20));
    }
    ck_assert_int_eq(atomic_load(g_runs), 1);
    fp_writer_free(&a);
    fp_writer_free(&o);
    assert_serving(p);
  }
  fp_pool_free(p);
  munmap(g_runs, sizeof(*g_runs));
}
END_TEST

static int e_ident(const void *in, void *out) {
  memcpy(out, in, 8);
  return 0;
}

/* Forks; the child returns from the task (into the worker's loop), the
 * parent waits for it and returns its exit status. */
static int t_fork_child_returns(fp_reader *args, fp_writer *out) {
  (void)args;
  pid_t pid = fork();
  if (pid < 0)
    return fp_task_fail("fork failed");
  if (pid == 0)
    return fp_write_int(out, -1); /* the child returns, as the parent */
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return fp_write_int(out, WIFEXITED(st) ? WEXITSTATUS(st) : 1000);
}

/* A child a task forked that returns from the task leaves at once (exit
 * status 0) instead of running on as a second copy of the worker, which
 * took ring entries and the socket from the real worker (an audit saw a
 * daemon()ing task break the next map). */
START_TEST(child_forked_by_a_task_does_not_become_a_worker) {
  fp_pool *p = pool_with(1, FP_CRASH_DEFAULT, 0);
  for (int i = 0; i < 3; i++) {
    fp_writer o;
    fp_writer_init(&o);
    ck_assert_int_eq(fp_pool_apply(p, t_fork_child_returns, NULL, &o), 0);
    fp_reader r;
    int64_t v;
    fp_reader_init(&r, o.data, o.len);
    ck_assert_int_eq(fp_read_int(&r, &v), 0);
    ck_assert_int_eq(v, 0);
    fp_writer_free(&o);
  }
  enum { N = 1000 };
  static int64_t in[N], out[N];
  for (int i = 0; i < N; i++)
    in[i] = i;
  fp_call_opts co = {0};
  co.chunksize = 3;
  ck_assert_int_eq(fp_pool_map(p, e_ident, in, N, 8, out, 8, &co), 0);
  for (int i = 0; i < N; i++)
    ck_assert_int_eq(out[i], i);
  fp_pool_free(p);
}
END_TEST

/* Runs a pool of its own (2 workers) over 100 items; returns their sum. */
static int t_nested_pool(fp_reader *args, fp_writer *out) {
  (void)args;
  fp_pool *q = NULL;
  fp_pool_opts o = {0};
  o.processes = 2;
  if (fp_pool_new(&q, &o) != 0)
    return fp_task_fail("nested fp_pool_new: %s", fp_last_error());
  int64_t in[100], res[100], sum = 0;
  for (int i = 0; i < 100; i++)
    in[i] = i;
  fp_call_opts co = {0};
  co.chunksize = 1;
  int rc = fp_pool_map(q, e_ident, in, 100, 8, res, 8, &co);
  fp_pool_free(q);
  if (rc != 0)
    return fp_task_fail("nested map: %s", fp_err_name(rc));
  for (int i = 0; i < 100; i++)
    sum += res[i];
  return fp_write_int(out, sum);
}

/* A task may start a pool of its own: its fork server is a child the task
 * forked, and its workers must not take themselves for such children. */
START_TEST(task_runs_a_pool_of_its_own) {
  fp_pool *p = pool_with(1, FP_CRASH_DEFAULT, 0);
  for (int i = 0; i < 2; i++) {
    fp_writer o;
    fp_writer_init(&o);
    ck_assert_msg(fp_pool_apply(p, t_nested_pool, NULL, &o) == 0, "%s",
                  fp_last_error());
    fp_reader r;
    int64_t v;
    fp_reader_init(&r, o.data, o.len);
    ck_assert_int_eq(fp_read_int(&r, &v), 0);
    ck_assert_int_eq(v, 4950);
    fp_writer_free(&o);
  }
  fp_pool_free(p);
}
END_TEST

START_TEST(map_crash_names_item_others_complete) {
  enum { N = 100 };
  int64_t in[N], out[N];
  for (int i = 0; i < N; i++) {
    in[i] = i;
    out[i] = -1;
  }
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  fp_call_opts co = {0};
  co.chunksize = 1;
  ck_assert_int_eq(fp_pool_map(p, e_crash_at_37, in, N, 8, out, 8, &co),
                   FP_EWORKER);
  ck_assert_msg(strstr(fp_last_error(), "item 37") != NULL, "%s",
                fp_last_error());
  for (int i = 0; i < N; i++)
    if (i != 37)
      ck_assert_int_eq(out[i], i + 1);
  /* Default chunking: the error still names the item that crashed. */
  fp_result *r;
  ck_assert_int_eq(
      fp_pool_map_async(p, e_crash_at_37, in, N, 8, out, 8, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 30), FP_EWORKER);
  ck_assert_int_eq(fp_result_error_index(r), 37);
  fp_result_free(r);
  assert_serving(p);
  fp_pool_free(p);
}
END_TEST

static int t_crash_item(fp_reader *args, fp_writer *out) {
  int64_t v;
  fp_read_int(args, &v);
  if (v == 7)
    die(CRASH_SEGV);
  return fp_write_int(out, v * 10);
}

START_TEST(imap_crash_item_reports_and_continues) {
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  fp_writer items;
  fp_writer_init(&items);
  for (int i = 0; i < 20; i++)
    fp_write_int(&items, i);
  fp_iter *it;
  ck_assert_int_eq(fp_pool_imap(p, t_crash_item, &items, NULL, &it), 0);
  fp_reader rd;
  for (int i = 0; i < 20; i++) {
    int rc = fp_iter_next(it, &rd, 30);
    if (i == 7) {
      ck_assert_int_eq(rc, FP_EWORKER);
      ck_assert_ptr_nonnull(strstr(fp_iter_error(it), "SIGSEGV"));
      ck_assert_ptr_nonnull(strstr(fp_iter_error(it), "item 7"));
    } else {
      int64_t v;
      ck_assert_int_eq(rc, 0);
      ck_assert_int_eq(fp_read_int(&rd, &v), 0);
      ck_assert_int_eq(v, i * 10);
    }
  }
  ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
  fp_iter_free(it);
  fp_writer_free(&items);
  fp_pool_free(p);
}
END_TEST

static atomic_int g_err_calls, g_ok_calls;
static void on_err(fp_result *r, void *arg) {
  (void)arg;
  ck_assert_int_eq(fp_result_get(r, 0), FP_EWORKER);
  atomic_fetch_add(&g_err_calls, 1);
}
static void on_ok(fp_result *r, void *arg) {
  (void)r;
  (void)arg;
  atomic_fetch_add(&g_ok_calls, 1);
}

START_TEST(apply_async_crash_calls_error_callback_once) {
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i i", (int64_t)CRASH_ABORT, (int64_t)-1);
  fp_call_opts co = {0};
  co.callback = on_ok;
  co.error_callback = on_err;
  fp_result *r[5];
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(fp_pool_apply_async(p, t_crash, &a, &co, &r[i]), 0);
  for (int i = 0; i < 5; i++) {
    ck_assert_int_eq(fp_result_get(r[i], 30), FP_EWORKER);
    ck_assert_ptr_nonnull(strstr(fp_result_error(r[i]), "SIGABRT"));
    fp_result_free(r[i]);
  }
  ck_assert_int_eq(atomic_load(&g_err_calls), 5);
  ck_assert_int_eq(atomic_load(&g_ok_calls), 0);
  assert_serving(p);
  fp_pool_free(p);
  fp_writer_free(&a);
}
END_TEST

START_TEST(both_workers_crash_at_once) {
  int64_t in[4] = {0, 1, 2, 3}, out[4] = {0};
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  fp_call_opts co = {0};
  co.chunksize = 1;
  for (int round = 0; round < 3; round++) {
    ck_assert_int_eq(fp_pool_map(p, e_crash_low, in, 4, 8, out, 8, &co),
                     FP_EWORKER);
    ck_assert_ptr_nonnull(strstr(fp_last_error(), "item 0"));
    ck_assert_int_eq(out[2], 2);
    ck_assert_int_eq(out[3], 3);
  }
  assert_serving(p);
  fp_pool_free(p);
}
END_TEST

/* Every item but the crashing one runs exactly once, even though results
 * of finished chunks may still sit in the dead worker's ring or socket. */
static _Atomic int *g_runs; /* per item, shared with the workers */

static int e_count_and_crash(const void *in, void *out) {
  int64_t v = *(const int64_t *)in;
  atomic_fetch_add(&g_runs[v], 1);
  if (v == 37 || v == 611)
    die(CRASH_SEGV);
  *(int64_t *)out = v * 3;
  return 0;
}

START_TEST(crash_runs_no_other_item_twice) {
  enum { N = 1000 };
  g_runs = mmap(NULL, N * sizeof(*g_runs), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(g_runs, MAP_FAILED);
  int64_t *in = malloc(N * sizeof(*in)), *out = calloc(N, sizeof(*out));
  for (int i = 0; i < N; i++)
    in[i] = i;
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  size_t sizes[] = {1, 3, 64};
  for (int k = 0; k < 3; k++) {
    memset((void *)g_runs, 0, N * sizeof(*g_runs));
    fp_call_opts co = {0};
    co.chunksize = sizes[k];
    ck_assert_int_eq(fp_pool_map(p, e_count_and_crash, in, N, 8, out, 8, &co),
                     FP_EWORKER);
    ck_assert_ptr_nonnull(strstr(fp_last_error(), "item 37"));
    for (int i = 0; i < N; i++) {
      /* Items after a crash in the same chunk never ran; the rest ran
       * exactly once. */
      int same_chunk_after =
          (i > 37 && i / (int)sizes[k] == 37 / (int)sizes[k]) ||
          (i > 611 && i / (int)sizes[k] == 611 / (int)sizes[k]);
      if (same_chunk_after)
        ck_assert_int_eq(atomic_load(&g_runs[i]), 0);
      else
        ck_assert_msg(atomic_load(&g_runs[i]) == 1, "item %d ran %d times", i,
                      atomic_load(&g_runs[i]));
    }
  }
  fp_pool_free(p);
  free(in);
  free(out);
  munmap((void *)g_runs, N * sizeof(*g_runs));
}
END_TEST

/* ---- every fault kind through every call form ---------------------------
 *
 * The item with index FAULT_AT misbehaves in the way the pool under test
 * was made for; the other items are fine. apply runs the faulty item only. */
enum { FK_SEGV, FK_ABORT, FK_EXIT, FK_KILL, FK_FOREVER, FK_HOG, FK_COUNT };
enum { FAULT_AT = 5, FAULT_N = 8 };
static int g_fault_kind;

static int fault_item(int64_t v) {
  if (v != FAULT_AT)
    return 0;
  switch (g_fault_kind) {
  case FK_SEGV:
    die(CRASH_SEGV);
    break;
  case FK_ABORT:
    die(CRASH_ABORT);
    break;
  case FK_EXIT:
    die(CRASH_EXIT3);
    break;
  case FK_KILL:
    raise(SIGKILL);
    break;
  case FK_FOREVER: {
    volatile uint64_t x = 0;
    double t0 = now_s();
    while (now_s() - t0 < 60)
      x++;
    break;
  }
  case FK_HOG: {
    size_t total = 0;
    for (;;) {
      char *blk = malloc((size_t)32 << 20);
      if (blk == NULL)
        return fp_task_fail("out of memory after %zu MiB", total >> 20);
      memset(blk, 1, (size_t)32 << 20);
      __asm__ volatile("" : : "r"(blk) : "memory"); /* no elision */
      total += (size_t)32 << 20;
    }
  }
  }
  return 0;
}

static int t_fault(fp_reader *args, fp_writer *out) {
  int64_t v = -1;
  fp_read_int(args, &v);
  int rc = fault_item(v);
  return rc != 0 ? rc : fp_write_int(out, v);
}

static int e_fault(const void *in, void *out) {
  int64_t v = *(const int64_t *)in;
  int rc = fault_item(v);
  *(int64_t *)out = v;
  return rc;
}

static atomic_int g_matrix_errcb;
static void matrix_errcb(fp_result *r, void *arg) {
  (void)r;
  (void)arg;
  atomic_fetch_add(&g_matrix_errcb, 1);
}

START_TEST(every_fault_in_every_call_form) {
  static const int want[FK_COUNT] = {FP_EWORKER, FP_EWORKER,   FP_EWORKER,
                                     FP_EWORKER, FP_ETIMEDOUT, FP_ETASK};
  for (int kind = 0; kind < FK_COUNT; kind++) {
    if (kind == FK_HOG &&
        (fp_test_under_valgrind() || fp_test_under_sanitizer()))
      continue; /* their own address-space reservations */
    g_fault_kind = kind;
    fp_pool_opts o = {0};
    o.processes = 2;
    o.task_timeout = kind == FK_FOREVER ? 0.2 : 0;
    o.memory_limit = kind == FK_HOG ? (size_t)512 << 20 : 0;
    fp_pool *p;
    ck_assert_int_eq(fp_pool_new(&p, &o), 0);
    fp_writer args, items, out;
    fp_writer_init(&args);
    fp_writer_init(&items);
    fp_writer_init(&out);
    fp_write_int(&args, FAULT_AT);
    for (int i = 0; i < FAULT_N; i++)
      fp_write_int(&items, i);
    fp_call_opts co = {0};
    co.chunksize = 1;
    co.error_callback = matrix_errcb;

    /* apply */
    ck_assert_msg(fp_pool_apply(p, t_fault, &args, NULL) == want[kind],
                  "kind %d apply: %s", kind, fp_last_error());
    ck_assert_ptr_nonnull(strstr(fp_last_error(), "item 0"));

    /* map: the error names the item, the other items complete */
    int64_t in[FAULT_N], res[FAULT_N];
    for (int i = 0; i < FAULT_N; i++) {
      in[i] = i;
      res[i] = -1;
    }
    ck_assert_msg(fp_pool_map(p, e_fault, in, FAULT_N, 8, res, 8, &co) ==
                      want[kind],
                  "kind %d map: %s", kind, fp_last_error());
    ck_assert_msg(strstr(fp_last_error(), "item 5") != NULL, "kind %d map: %s",
                  kind, fp_last_error());
    for (int i = 0; i < FAULT_N; i++)
      if (i != FAULT_AT)
        ck_assert_int_eq(res[i], i);

    /* imap: that item fails, the iteration goes on */
    fp_iter *it;
    fp_reader rd;
    ck_assert_int_eq(fp_pool_imap(p, t_fault, &items, &co, &it), 0);
    for (int i = 0; i < FAULT_N; i++) {
      int rc = fp_iter_next(it, &rd, 30);
      if (i == FAULT_AT) {
        ck_assert_msg(rc == want[kind], "kind %d imap: %s", kind,
                      fp_iter_error(it));
      } else {
        int64_t v;
        ck_assert_int_eq(rc, 0);
        ck_assert_int_eq(fp_read_int(&rd, &v), 0);
        ck_assert_int_eq(v, i);
      }
    }
    ck_assert_int_eq(fp_iter_next(it, &rd, 30), FP_EOF);
    fp_iter_free(it);

    /* apply_async: error_callback exactly once */
    atomic_store(&g_matrix_errcb, 0);
    fp_result *r;
    ck_assert_int_eq(fp_pool_apply_async(p, t_fault, &args, &co, &r), 0);
    ck_assert_int_eq(fp_result_get(r, 30), want[kind]);
    ck_assert_int_eq(atomic_load(&g_matrix_errcb), 1);
    fp_result_free(r);

    assert_serving(p);
    fp_pool_free(p);
    fp_writer_free(&args);
    fp_writer_free(&items);
    fp_writer_free(&out);
  }
}
END_TEST

/* ---- killed from outside ----------------------------------------------------
 */

static int g_pipe[2] = {-1, -1};

/* Reports its pid through the pipe, then waits (bounded) to be killed. */
static int t_report_and_wait(fp_reader *args, fp_writer *out) {
  (void)args;
  int32_t pid = getpid();
  if (write(g_pipe[1], &pid, sizeof(pid)) != sizeof(pid))
    return fp_task_fail("pipe write failed");
  struct timespec ts = {60, 0};
  nanosleep(&ts, NULL);
  return fp_write_int(out, 0);
}

static int t_ignore_term_and_wait(fp_reader *args, fp_writer *out) {
  signal(SIGTERM, SIG_IGN);
  return t_report_and_wait(args, out);
}

static pid_t read_pid(void) {
  struct pollfd pf = {g_pipe[0], POLLIN, 0};
  ck_assert_int_eq(poll(&pf, 1, 10000), 1);
  int32_t pid = 0;
  ck_assert_int_eq(read(g_pipe[0], &pid, sizeof(pid)), sizeof(pid));
  return pid;
}

START_TEST(sigkill_from_outside_fails_task) {
  ck_assert_int_eq(pipe(g_pipe), 0);
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, t_report_and_wait, NULL, NULL, &r),
                   0);
  pid_t pid = read_pid();
  double t0 = now_s();
  kill(pid, SIGKILL);
  ck_assert_int_eq(fp_result_get(r, 10), FP_EWORKER);
  ck_assert_msg(now_s() - t0 < 1.0, "death noticed after %.3fs", now_s() - t0);
  ck_assert_ptr_nonnull(strstr(fp_result_error(r), "SIGKILL"));
  fp_result_free(r);
  assert_serving(p);
  fp_pool_free(p);
  close(g_pipe[0]);
  close(g_pipe[1]);
}
END_TEST

START_TEST(terminate_kills_workers_ignoring_sigterm) {
  ck_assert_int_eq(pipe(g_pipe), 0);
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  fp_result *r[2];
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(
        fp_pool_apply_async(p, t_ignore_term_and_wait, NULL, NULL, &r[i]), 0);
  read_pid();
  read_pid();
  double t0 = now_s();
  ck_assert_int_eq(fp_pool_terminate(p), 0);
  ck_assert_msg(now_s() - t0 < 1.0, "terminate took %.3fs", now_s() - t0);
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(fp_result_get(r[i], 5), FP_ECANCELED);
    fp_result_free(r[i]);
  }
  fp_pool_join(p);
  fp_pool_free(p);
  close(g_pipe[0]);
  close(g_pipe[1]);
}
END_TEST

/* ---- time and memory limits ---------------------------------------------- */

static int t_forever(fp_reader *args, fp_writer *out) {
  (void)args;
  (void)out;
  volatile uint64_t x = 0;
  double t0 = now_s();
  while (now_s() - t0 < 60) /* bounded "forever" */
    x++;
  return 0;
}

START_TEST(task_over_time_limit_fails_with_etimedout) {
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  fp_call_opts co = {0};
  co.timeout = 0.2;
  fp_result *r;
  double t0 = now_s();
  ck_assert_int_eq(fp_pool_apply_async(p, t_forever, NULL, &co, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 10), FP_ETIMEDOUT);
  double took = now_s() - t0;
  ck_assert_msg(took >= 0.19 && took < 2.0, "took %.3fs", took);
  ck_assert_ptr_nonnull(strstr(fp_result_error(r), "time limit"));
  fp_result_free(r);
  /* A pool-wide limit applies to every call, fast tasks are unaffected. */
  fp_pool_free(p);
  fp_pool_opts o = {0};
  o.processes = 2;
  o.task_timeout = 0.2;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  assert_serving(p);
  ck_assert_int_eq(fp_pool_apply(p, t_forever, NULL, NULL), FP_ETIMEDOUT);
  assert_serving(p);
  fp_pool_free(p);
}
END_TEST

static int t_hog(fp_reader *args, fp_writer *out) {
  (void)args;
  size_t total = 0;
  for (;;) {
    char *blk = malloc((size_t)64 << 20);
    if (blk == NULL)
      return fp_task_fail("out of memory after %zu MiB", total >> 20);
    memset(blk, 1, (size_t)64 << 20);
    __asm__ volatile("" : : "r"(blk) : "memory"); /* no elision */
    total += (size_t)64 << 20;
    if (total > ((size_t)8 << 30))
      break; /* the limit did not work: report it */
  }
  return fp_write_int(out, (int64_t)total);
}

START_TEST(memory_limit_reported_clearly) {
  /* valgrind and ASan reserve address space of their own. */
  if (fp_test_under_valgrind() || fp_test_under_sanitizer())
    return;
  fp_pool_opts o = {0};
  o.processes = 1;
  o.memory_limit = (size_t)512 << 20;
  fp_pool *p;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  ck_assert_int_eq(fp_pool_apply(p, t_hog, NULL, NULL), FP_ETASK);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "out of memory"));
  assert_serving(p);
  fp_pool_free(p);
}
END_TEST

/* ---- start-up failures and policies -------------------------------------- */

static int init_crash(void *arg) {
  (void)arg;
  die(CRASH_SEGV);
  return 0;
}

static int init_fail(void *arg) {
  (void)arg;
  return 1;
}

START_TEST(initializer_crash_repeated_gives_estorm) {
  fp_pool_opts o = {0};
  o.processes = 2;
  o.initializer = init_crash;
  fp_pool *p = NULL;
  double t0 = now_s();
  ck_assert_int_eq(fp_pool_new(&p, &o), FP_ESTORM);
  ck_assert_ptr_null(p);
  ck_assert_msg(now_s() - t0 < 5, "storm detected after %.2fs", now_s() - t0);
  /* The message says what happened, not a list of guesses. */
  ck_assert_msg(strstr(fp_last_error(), "keep dying at start") &&
                    strstr(fp_last_error(), "killed by signal"),
                "%s", fp_last_error());
  /* ... and names the worker as crash messages do (over MPI: its rank). */
  ck_assert_msg(strstr(fp_last_error(), "(last: worker "), "%s",
                fp_last_error());
  o.initializer = init_fail;
  ck_assert_int_eq(fp_pool_new(&p, &o), FP_ESTORM);
  ck_assert_msg(strstr(fp_last_error(), "initializer failed"), "%s",
                fp_last_error());
}
END_TEST

static _Atomic int *g_attempts; /* shared with workers (MAP_SHARED) */

static int e_crash_first_try(const void *in, void *out) {
  if (atomic_fetch_add(g_attempts, 1) == 0)
    die(CRASH_SEGV);
  *(int64_t *)out = *(const int64_t *)in * 2;
  return 0;
}

START_TEST(retry_policy_reruns_crashed_task) {
  g_attempts = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ck_assert_ptr_ne(g_attempts, MAP_FAILED);
  fp_pool *p = pool_with(2, FP_CRASH_RETRY, 1);
  int64_t in = 21, out = 0;
  ck_assert_int_eq(fp_pool_map(p, e_crash_first_try, &in, 1, 8, &out, 8, NULL),
                   0);
  ck_assert_int_eq(out, 42);
  ck_assert_int_eq(atomic_load(g_attempts), 2);
  /* Per call: FAIL overrides the pool's RETRY. */
  atomic_store(g_attempts, 0);
  fp_call_opts co = {0};
  co.on_crash = FP_CRASH_FAIL;
  ck_assert_int_eq(fp_pool_map(p, e_crash_first_try, &in, 1, 8, &out, 8, &co),
                   FP_EWORKER);
  fp_pool_free(p);
  munmap(g_attempts, 4096);
}
END_TEST

static int e_slow_or_crash(const void *in, void *out) {
  int64_t v = *(const int64_t *)in;
  if (v == 0)
    die(CRASH_SEGV);
  struct timespec ts = {0, 20 * 1000000};
  nanosleep(&ts, NULL);
  *(int64_t *)out = v;
  return 0;
}

START_TEST(abort_policy_fails_whole_job_fast) {
  enum { N = 200 };
  int64_t in[N], out[N];
  for (int i = 0; i < N; i++)
    in[i] = i;
  fp_pool *p = pool_with(2, FP_CRASH_ABORT, 0);
  fp_call_opts co = {0};
  co.chunksize = 1;
  double t0 = now_s();
  ck_assert_int_eq(fp_pool_map(p, e_slow_or_crash, in, N, 8, out, 8, &co),
                   FP_EWORKER);
  /* 200 x 20 ms on 2 workers would take 2 s: ABORT stops at the crash. */
  ck_assert_msg(now_s() - t0 < 1.0, "took %.2fs", now_s() - t0);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "item 0"));
  assert_serving(p);
  fp_pool_free(p);
}
END_TEST

/* ---- no orphans ---------------------------------------------------------- */

static int proc_alive(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  char *rp = strrchr(buf, ')');
  return rp != NULL && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

/* Becomes user nobody (which clears the parent-death signal), then holds
 * its worker for a minute at most. */
static int t_setuid_and_hold(fp_reader *args, fp_writer *out) {
  (void)args;
  if (setgid(65534) != 0 || setuid(65534) != 0)
    return fp_task_fail("setuid: %s", strerror(errno));
  struct timespec ts = {60, 0};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return fp_write_int(out, 1);
}

static int t_parent(fp_reader *args, fp_writer *out) {
  (void)args;
  return fp_write_int(out, (int64_t)getppid());
}

/* A worker whose task changed its credentials has no parent-death signal
 * any more: when the fork server dies, the master kills it itself. It
 * used to live on (as nobody, reparented to init) after fp_pool_free and
 * the master's exit. Needs root, to setuid. */
START_TEST(setuid_worker_dies_with_its_fork_server) {
  if (geteuid() != 0 || fp_test_under_valgrind())
    return;
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  fp_result *held;
  ck_assert_int_eq(fp_pool_apply_async(p, t_setuid_and_hold, NULL, NULL, &held),
                   0);
  fp_writer o;
  fp_writer_init(&o);
  ck_assert_int_eq(fp_pool_apply(p, t_parent, NULL, &o), 0);
  fp_reader r;
  int64_t fs;
  fp_reader_init(&r, o.data, o.len);
  ck_assert_int_eq(fp_read_int(&r, &fs), 0);
  fp_writer_free(&o);
  pid_t pids[2];
  for (int i = 0; i < 2; i++) {
    fp_worker_info wi;
    ck_assert_int_eq(fp_pool_worker_info(p, i, &wi), 0);
    pids[i] = wi.pid;
  }
  ck_assert_int_eq(kill((pid_t)fs, SIGKILL), 0);
  ck_assert_int_eq(fp_result_get(held, 30), FP_EWORKER);
  fp_result_free(held);
  fp_pool_free(p);
  for (int i = 0; i < 2; i++)
    ck_assert_msg(!proc_alive(pids[i]), "worker %d (pid %d) still runs", i,
                  (int)pids[i]);
}
END_TEST

START_TEST(master_sigkill_leaves_no_orphans) {
  int pf[2];
  ck_assert_int_eq(pipe(pf), 0);
  pid_t master = fork();
  ck_assert_int_ge(master, 0);
  if (master == 0) {
    close(pf[0]);
    fp_pool *p;
    fp_pool_opts o = {0};
    o.processes = 2;
    if (fp_pool_new(&p, &o) != 0)
      _exit(1);
    int32_t pids[4] = {0};
    for (int i = 0; i < 2; i++) {
      fp_worker_info wi;
      fp_pool_worker_info(p, i, &wi);
      pids[i] = wi.pid;
    }
    /* The fork server is the master's only child. */
    char path[64], buf[64] = "";
    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)getpid(),
             (int)getpid());
    FILE *f = fopen(path, "r");
    if (f) {
      if (fgets(buf, sizeof(buf), f) == NULL)
        buf[0] = 0;
      fclose(f);
    }
    pids[2] = atoi(buf);
    if (write(pf[1], pids, sizeof(pids)) != sizeof(pids))
      _exit(1);
    for (;;)
      pause();
  }
  close(pf[1]);
  int32_t pids[4];
  struct pollfd pfd = {pf[0], POLLIN, 0};
  ck_assert_int_eq(poll(&pfd, 1, 10000), 1);
  ck_assert_int_eq(read(pf[0], pids, sizeof(pids)), sizeof(pids));
  close(pf[0]);
  for (int i = 0; i < 3; i++)
    ck_assert_int_gt(pids[i], 0);
  kill(master, SIGKILL);
  waitpid(master, NULL, 0);
  double t0 = now_s();
  int alive = 1;
  while (alive && now_s() - t0 < 1.0) {
    alive = 0;
    for (int i = 0; i < 3; i++)
      alive |= proc_alive(pids[i]);
    if (alive)
      sched_yield();
  }
  ck_assert_msg(!alive, "a worker or the fork server outlived the master");
}
END_TEST

/* ---- fork safety and the user's process state ---------------------------- */

static pthread_mutex_t g_user_lock = PTHREAD_MUTEX_INITIALIZER;

static int t_takes_user_lock(fp_reader *args, fp_writer *out) {
  (void)args;
  pthread_mutex_lock(&g_user_lock);
  pthread_mutex_unlock(&g_user_lock);
  return fp_write_int(out, 1);
}

typedef struct holder {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  int holding, release;
} holder;

static void *hold_user_lock(void *arg) {
  holder *h = arg;
  pthread_mutex_lock(&g_user_lock);
  pthread_mutex_lock(&h->mu);
  h->holding = 1;
  pthread_cond_broadcast(&h->cond);
  while (!h->release)
    pthread_cond_wait(&h->cond, &h->mu);
  pthread_mutex_unlock(&h->mu);
  pthread_mutex_unlock(&g_user_lock);
  return NULL;
}

START_TEST(replacement_worker_forked_while_user_thread_holds_lock) {
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  holder h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
  pthread_t th;
  pthread_create(&th, NULL, hold_user_lock, &h);
  pthread_mutex_lock(&h.mu);
  while (!h.holding)
    pthread_cond_wait(&h.cond, &h.mu);
  pthread_mutex_unlock(&h.mu);
  /* Kill both workers: their replacements are forked while the user
   * thread holds g_user_lock in the master. */
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i i", (int64_t)CRASH_SEGV, (int64_t)-1);
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(fp_pool_apply(p, t_crash, &a, NULL), FP_EWORKER);
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, t_takes_user_lock, NULL, NULL, &r),
                   0);
  ck_assert_int_eq(fp_result_get(r, 10), 0); /* no deadlock */
  fp_result_free(r);
  pthread_mutex_lock(&h.mu);
  h.release = 1;
  pthread_cond_broadcast(&h.cond);
  pthread_mutex_unlock(&h.mu);
  pthread_join(th, NULL);
  fp_pool_free(p);
  fp_writer_free(&a);
}
END_TEST

static void user_chld(int sig) {
  (void)sig;
}

START_TEST(user_signal_dispositions_untouched) {
  struct sigaction sa, old_chld, old_pipe, now_chld, now_pipe;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = user_chld;
  sigaction(SIGCHLD, &sa, &old_chld);
  sigaction(SIGPIPE, NULL, &old_pipe);
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i i", (int64_t)CRASH_SEGV, (int64_t)-1);
  ck_assert_int_eq(fp_pool_apply(p, t_crash, &a, NULL), FP_EWORKER);
  assert_serving(p);
  sigaction(SIGCHLD, NULL, &now_chld);
  sigaction(SIGPIPE, NULL, &now_pipe);
  ck_assert_ptr_eq((void *)now_chld.sa_handler, (void *)user_chld);
  ck_assert_ptr_eq((void *)now_pipe.sa_handler, (void *)old_pipe.sa_handler);
  fp_pool_free(p);
  sigaction(SIGCHLD, &old_chld, NULL);
  fp_writer_free(&a);
}
END_TEST

/* One signal-set line ("SigBlk", "SigIgn") of /proc/<pid>/status as a
 * bit mask (bit sig-1 for signal sig), or -1 when it cannot be read. */
static int64_t proc_sigset(pid_t pid, const char *field) {
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  int64_t set = -1;
  size_t flen = strlen(field);
  while (f != NULL && set < 0 && fgets(line, sizeof(line), f) != NULL)
    if (strncmp(line, field, flen) == 0 && line[flen] == ':')
      set = (int64_t)strtoull(line + flen + 1, NULL, 16);
  if (f != NULL)
    fclose(f);
  return set;
}

/* The blocked and ignored signals of the worker and of its fork server. */
static int t_signal_sets(fp_reader *args, fp_writer *out) {
  (void)args;
  return fp_pack(out, "[ i i i i ]", proc_sigset(getpid(), "SigBlk"),
                 proc_sigset(getpid(), "SigIgn"),
                 proc_sigset(getppid(), "SigBlk"),
                 proc_sigset(getppid(), "SigIgn"));
}

static int64_t sigbit(int sig) {
  return (int64_t)1 << (sig - 1);
}

/* The group signals (Ctrl-C and kin) are ignored and held blocked in the
 * fork server, so that one sent while a worker is being forked waits in
 * the new worker instead of being lost; the worker runs with the signal
 * mask of the thread that made the pool (SIGUSR2 blocked here) and none of
 * the four blocked or ignored (but those the program ignores). Making the
 * pool leaves the caller's mask as it was. */
START_TEST(group_signals_held_in_the_fork_server_not_in_workers) {
  sigset_t usr2, before, after;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  ck_assert_int_eq(pthread_sigmask(SIG_BLOCK, &usr2, &before), 0);
  ck_assert_int_eq(pthread_sigmask(SIG_SETMASK, NULL, &before), 0);
  fp_pool *p = pool_with(1, FP_CRASH_DEFAULT, 0);
  ck_assert_int_eq(pthread_sigmask(SIG_SETMASK, NULL, &after), 0);
  for (int sig = 1; sig < NSIG; sig++)
    ck_assert_int_eq(sigismember(&after, sig), sigismember(&before, sig));
  fp_writer o;
  fp_writer_init(&o);
  ck_assert_int_eq(fp_pool_apply(p, t_signal_sets, NULL, &o), 0);
  int64_t wblk, wign, sblk, sign;
  fp_reader r;
  fp_reader_init(&r, o.data, o.len);
  ck_assert_int_eq(fp_unpack(&r, "[ i i i i ]", &wblk, &wign, &sblk, &sign), 0);
  /* Those the program ignores (SIGHUP under nohup) stay ignored, and are
   * not the library's to block. */
  static const int group_sigs[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM};
  int64_t group = 0;
  for (int i = 0; i < 4; i++) {
    struct sigaction sa;
    ck_assert_int_eq(sigaction(group_sigs[i], NULL, &sa), 0);
    if ((sa.sa_flags & SA_SIGINFO) || sa.sa_handler != SIG_IGN)
      group |= sigbit(group_sigs[i]);
  }
  ck_assert_int_ge(wblk, 0);
  ck_assert_int_ge(sblk, 0);
  ck_assert_msg((wblk & sigbit(SIGUSR2)) != 0, "worker SigBlk %llx",
                (unsigned long long)wblk);
  ck_assert_msg((wblk & group) == 0 && (wign & group) == 0,
                "worker SigBlk %llx SigIgn %llx", (unsigned long long)wblk,
                (unsigned long long)wign);
  ck_assert_msg((sblk & group) == group && (sign & group) == group,
                "fork server SigBlk %llx SigIgn %llx", (unsigned long long)sblk,
                (unsigned long long)sign);
  fp_writer_free(&o);
  fp_pool_free(p);
  ck_assert_int_eq(pthread_sigmask(SIG_UNBLOCK, &usr2, NULL), 0);
}
END_TEST

/* A program whose SIGCHLD is SIG_DFL with SA_NOCLDWAIT (children reaped
 * by the kernel): the fork server inherits it and must still see its
 * workers' exit statuses -- a crash and a retirement each hung the pool
 * before (no exit report ever came). */
START_TEST(sigchld_nocldwait_in_the_program_keeps_deaths_reported) {
  struct sigaction sa, old_chld;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = SIG_DFL;
  sa.sa_flags = SA_NOCLDWAIT;
  sigemptyset(&sa.sa_mask);
  ck_assert_int_eq(sigaction(SIGCHLD, &sa, &old_chld), 0);
  fp_pool_opts o = {0};
  o.processes = 1;
  o.maxtasksperchild = 1;
  fp_pool *p;
  ck_assert_int_eq(fp_pool_new(&p, &o), 0);
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i i", (int64_t)CRASH_SEGV, (int64_t)-1);
  fp_result *r;
  ck_assert_int_eq(fp_pool_apply_async(p, t_crash, &a, NULL, &r), 0);
  ck_assert_int_eq(fp_result_get(r, 10), FP_EWORKER);
  fp_result_free(r);
  for (int i = 0; i < 3; i++) { /* each retires its worker */
    ck_assert_int_eq(fp_pool_apply_async(p, t_pid, NULL, NULL, &r), 0);
    ck_assert_int_eq(fp_result_get(r, 10), 0);
    fp_result_free(r);
  }
  fp_pool_free(p);
  sigaction(SIGCHLD, &old_chld, NULL);
  fp_writer_free(&a);
}
END_TEST

START_TEST(crashes_leak_no_descriptors) {
  fp_pool_free(pool_with(1, FP_CRASH_DEFAULT, 0)); /* libuv's global pipe */
  int fds = fp_test_count_fds();
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i i", (int64_t)CRASH_ABORT, (int64_t)-1);
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(fp_pool_apply(p, t_crash, &a, NULL), FP_EWORKER);
  fp_pool_free(p);
  fp_writer_free(&a);
  ck_assert_int_eq(fp_test_count_fds(), fds);
}
END_TEST

/* ---- regressions ------------------------------------------------------------
 */

static int t_sleep_ms(fp_reader *args, fp_writer *out) {
  int64_t ms = 0;
  fp_unpack(args, "i", &ms);
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return fp_write_int(out, ms);
}

START_TEST(cancel_spares_other_job_on_same_worker) {
  fp_pool *p = pool_with(1, FP_CRASH_DEFAULT, 0);
  /* Quick tasks first: the pool then queues two chunks per worker, so B
   * waits in the worker's socket behind A. */
  for (int i = 0; i < 200; i++)
    assert_serving(p);
  fp_writer a;
  fp_writer_init(&a);
  fp_pack(&a, "i", (int64_t)300);
  fp_result *ra, *rb;
  ck_assert_int_eq(fp_pool_apply_async(p, t_sleep_ms, &a, NULL, &ra), 0);
  ck_assert_int_eq(fp_pool_apply_async(p, t_sleep_ms, &a, NULL, &rb), 0);
  ck_assert_int_eq(fp_result_cancel(rb), 0);
  ck_assert_int_eq(fp_result_get(rb, 10), FP_ECANCELED);
  ck_assert_int_eq(fp_result_get(ra, 10), 0);
  fp_result_free(ra);
  fp_result_free(rb);
  fp_pool_free(p);
  fp_writer_free(&a);
}
END_TEST

START_TEST(imap_abort_policy_reports_crash) {
  fp_pool *p = pool_with(2, FP_CRASH_ABORT, 0);
  fp_writer items;
  fp_writer_init(&items);
  for (int i = 0; i < 20; i++)
    fp_write_int(&items, i);
  fp_iter *it;
  ck_assert_int_eq(fp_pool_imap(p, t_crash_item, &items, NULL, &it), 0);
  fp_reader rd;
  int rc, seen_crash = 0;
  for (int i = 0; i < 40 && (rc = fp_iter_next(it, &rd, 30)) != FP_EOF; i++)
    if (rc == FP_EWORKER) {
      seen_crash = 1;
      /* The job's failure names the crashing item, not the last item
       * returned before it (which succeeded). */
      ck_assert_int_eq(fp_iter_index(it), 7);
    }
  ck_assert_int_eq(seen_crash, 1);
  fp_iter_free(it);
  fp_writer_free(&items);
  assert_serving(p);
  fp_pool_free(p);
}
END_TEST

START_TEST(fork_server_death_breaks_pool_not_hangs) {
  fp_pool *p = pool_with(2, FP_CRASH_DEFAULT, 0);
  char path[96], buf[64] = "";
  snprintf(path, sizeof(path), "/proc/self/task/%d/children", (int)gettid());
  FILE *f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  ck_assert_ptr_nonnull(fgets(buf, sizeof(buf), f));
  fclose(f);
  pid_t fs = atoi(buf);
  ck_assert_int_gt(fs, 0);
  kill(fs, SIGKILL);
  fp_result *r = NULL;
  int rc = 0;
  /* Until the pool thread notices, a call may be accepted; either way it
   * must end with an error, never hang. */
  for (int i = 0; i < 1000 && rc == 0; i++) {
    rc = fp_pool_apply_async(p, t_pid, NULL, NULL, &r);
    if (rc == 0) {
      rc = fp_result_get(r, 10);
      ck_assert_int_ne(rc, FP_ETIMEDOUT);
      fp_result_free(r);
    }
  }
  ck_assert_int_eq(rc, FP_EWORKER);
  fp_pool_free(p);
}
END_TEST

Suite *faults_suite(void) {
  Suite *s = suite_create("faults");
  TCase *tc = tcase_create("crashes");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, apply_null_dereference_fails_with_eworker);
  tcase_add_test(tc, apply_abort_fails_with_eworker);
  tcase_add_test(tc, apply_exit3_fails_with_eworker);
  tcase_add_test(tc, apply_exit0_mid_task_is_a_failure);
  tcase_add_test(tc, result_the_worker_cannot_send_never_reruns);
  tcase_add_test(tc, child_forked_by_a_task_does_not_become_a_worker);
  tcase_add_test(tc, task_runs_a_pool_of_its_own);
  tcase_add_test(tc, setuid_worker_dies_with_its_fork_server);
  tcase_add_test(tc, map_crash_names_item_others_complete);
  tcase_add_test(tc, imap_crash_item_reports_and_continues);
  tcase_add_test(tc, apply_async_crash_calls_error_callback_once);
  tcase_add_test(tc, both_workers_crash_at_once);
  tcase_add_test(tc, crash_runs_no_other_item_twice);
  tcase_add_test(tc, every_fault_in_every_call_form);
  tcase_add_test(tc, sigkill_from_outside_fails_task);
  tcase_add_test(tc, terminate_kills_workers_ignoring_sigterm);
  suite_add_tcase(s, tc);

  tc = tcase_create("limits");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, task_over_time_limit_fails_with_etimedout);
  tcase_add_test(tc, memory_limit_reported_clearly);
  tcase_add_test(tc, initializer_crash_repeated_gives_estorm);
  tcase_add_test(tc, retry_policy_reruns_crashed_task);
  tcase_add_test(tc, abort_policy_fails_whole_job_fast);
  suite_add_tcase(s, tc);

  tc = tcase_create("process");
  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, master_sigkill_leaves_no_orphans);
  tcase_add_test(tc, replacement_worker_forked_while_user_thread_holds_lock);
  tcase_add_test(tc, user_signal_dispositions_untouched);
  tcase_add_test(tc, group_signals_held_in_the_fork_server_not_in_workers);
  tcase_add_test(tc, sigchld_nocldwait_in_the_program_keeps_deaths_reported);
  tcase_add_test(tc, crashes_leak_no_descriptors);
  tcase_add_test(tc, cancel_spares_other_job_on_same_worker);
  tcase_add_test(tc, imap_abort_policy_reports_crash);
  tcase_add_test(tc, fork_server_death_breaks_pool_not_hangs);
  suite_add_tcase(s, tc);
  return s;
}
