/* SPDX-License-Identifier: MIT */
/* calls.c - every Pool call across MPI ranks, with exact results.
 *
 * Run as `mpirun -n N calls` (N >= 2): rank 0 makes one FP_TRANSPORT_MPI
 * pool with one worker per worker rank and runs the cases below in order;
 * the other ranks serve inside fp_pool_new() and exit 0 when rank 0 frees
 * the pool, so mpirun's own exit status says whether every rank ended
 * cleanly. `calls --singleton` (mpirun -n 1) checks the error for a job
 * without worker ranks instead.
 *
 * Cases: map, map_values, starmap, apply, apply_async with callbacks and
 * get/wait/ready/successful, imap, imap_unordered, the producer-fed imap,
 * work reaching every worker rank, a SIGSEGV in a task (FP_EWORKER naming
 * the rank and the item; the other items complete; the pool serves on), a
 * time limit, and terminate during long tasks (last).
 */
#include "forkpool.h"
#include "mpitest.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static fp_pool *pool;
static int nranks;

/* ---- tasks (run in workers on the worker ranks) --------------------------- */

static int sq_elem(const void *in, void *out) {
  int64_t x;
  memcpy(&x, in, sizeof(x));
  x *= x;
  memcpy(out, &x, sizeof(x));
  return 0;
}

static int sq(fp_reader *args, fp_writer *out) {
  int64_t x;
  int rc = fp_read_int(args, &x);
  return rc ? rc : fp_write_int(out, x * x);
}

static int mul(fp_reader *args, fp_writer *out) {
  int64_t a, b;
  int rc = fp_unpack(args, "i i", &a, &b);
  return rc ? rc : fp_write_int(out, a * b);
}

/* The MPI rank of the worker's process (inherited from its rank). */
static int my_rank(fp_reader *args, fp_writer *out) {
  (void)args;
  const char *r = getenv("OMPI_COMM_WORLD_RANK");
  struct timespec ts = {0, 2000000}; /* long enough to spread the work */
  nanosleep(&ts, NULL);
  return fp_write_int(out, r ? atoi(r) : -1);
}

/* x: < 0 fails the item by message, 1000 crashes, 2000 runs for 60 s,
 * 3000 calls exit(3). */
__attribute__((no_sanitize("undefined"))) static int odd_task(
    fp_reader *args, fp_writer *out) {
  int64_t x;
  int rc = fp_read_int(args, &x);
  if (rc)
    return rc;
  if (x < 0)
    return fp_task_fail("negative input %lld", (long long)x);
  if (x == 1000) {
    volatile int *p = NULL;
    *p = 1;
  }
  if (x == 2000)
    sleep(60);
  if (x == 3000)
    exit(3); /* runs the atexit handlers the worker inherited */
  return fp_write_int(out, x + 1);
}

/* ---- cases ----------------------------------------------------------------- */

static void c_size(void *a) {
  (void)a;
  EXPECT(fp_pool_size(pool) == nranks - 1, "size %d for %d ranks",
         fp_pool_size(pool), nranks);
}

static void c_map(void *a) {
  (void)a;
  enum { N = 5000 };
  static int64_t in[N], out[N];
  for (int i = 0; i < N; i++)
    in[i] = i - 100;
  int rc = fp_pool_map(pool, sq_elem, in, N, 8, out, 8, NULL);
  EXPECT(rc == 0, "%s: %s", fp_err_name(rc), fp_last_error());
  int bad = 0;
  for (int i = 0; i < N; i++)
    bad += out[i] != in[i] * in[i];
  EXPECT(bad == 0, "%d wrong results", bad);
}

/* A map whose input cannot be read (a = NULL), or whose output cannot be
 * written (a != NULL), fails with -EFAULT; rank 0 does not crash, and the
 * pool goes on serving. */
static void c_map_bad_memory(void *a) {
  enum { N = 512 };
  static int64_t good[N];
  int64_t *bad = mmap(NULL, N * 8, a ? PROT_READ : PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  EXPECT(bad != MAP_FAILED, "mmap");
  if (bad == MAP_FAILED)
    return;
  fp_call_opts co = {.chunksize = 64};
  int rc = a ? fp_pool_map(pool, sq_elem, good, N, 8, bad, 8, &co)
             : fp_pool_map(pool, sq_elem, bad, N, 8, good, 8, &co);
  EXPECT(rc == -EFAULT, "%s: %s", fp_err_name(rc), fp_last_error());
  munmap(bad, N * 8);
  c_map(NULL);
}

/* Input the program can read but process_vm_readv cannot (memfd_secret)
 * maps like any other; skipped where the kernel has no secret memory. */
static void c_map_secret(void *a) {
  (void)a;
#ifdef __NR_memfd_secret
  enum { N = 512 };
  static int64_t out[N];
  int fd = (int)syscall(__NR_memfd_secret, 0);
  if (fd < 0 || ftruncate(fd, N * 8) != 0) {
    if (fd >= 0)
      close(fd);
    return;
  }
  int64_t *in = mmap(NULL, N * 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (in == MAP_FAILED)
    return;
  for (int i = 0; i < N; i++)
    in[i] = i;
  fp_call_opts co = {.chunksize = 64};
  int rc = fp_pool_map(pool, sq_elem, in, N, 8, out, 8, &co);
  EXPECT(rc == 0, "%s: %s", fp_err_name(rc), fp_last_error());
  int bad = 0;
  for (int i = 0; i < N; i++)
    bad += out[i] != (int64_t)i * i;
  EXPECT(bad == 0, "%d wrong results", bad);
  munmap(in, N * 8);
#endif
}

static void write_ints(fp_writer *w, int n) {
  fp_writer_init(w);
  for (int i = 0; i < n; i++)
    fp_write_int(w, i);
}

/* Reads n ints from rd and checks them against f(i). */
static int count_bad(fp_reader *rd, int n, int64_t (*f)(int64_t)) {
  int bad = 0;
  for (int i = 0; i < n; i++) {
    int64_t v = -1;
    bad += fp_read_int(rd, &v) != 0 || v != f(i);
  }
  return bad + !fp_reader_at_end(rd);
}

static int64_t f_sq(int64_t i) { return i * i; }
static int64_t f_mul(int64_t i) { return i * (i + 3); }

static void c_map_values(void *a) {
  (void)a;
  fp_writer in, out;
  fp_reader rd;
  write_ints(&in, 300);
  fp_writer_init(&out);
  int rc = fp_pool_map_values(pool, sq, &in, &out, NULL);
  EXPECT(rc == 0, "%s: %s", fp_err_name(rc), fp_last_error());
  fp_reader_init(&rd, out.data, out.len);
  EXPECT(count_bad(&rd, 300, f_sq) == 0, "wrong results");
  fp_writer_free(&in);
  fp_writer_free(&out);
}

static void c_starmap(void *a) {
  (void)a;
  fp_writer in, out;
  fp_reader rd;
  fp_writer_init(&in);
  fp_writer_init(&out);
  for (int64_t i = 0; i < 200; i++)
    fp_pack(&in, "[ i i ]", i, i + 3);
  int rc = fp_pool_starmap(pool, mul, &in, &out, NULL);
  EXPECT(rc == 0, "%s: %s", fp_err_name(rc), fp_last_error());
  fp_reader_init(&rd, out.data, out.len);
  EXPECT(count_bad(&rd, 200, f_mul) == 0, "wrong results");
  fp_writer_free(&in);
  fp_writer_free(&out);
}

static void c_apply(void *a) {
  (void)a;
  fp_writer args, out;
  fp_reader rd;
  int64_t v = 0;
  fp_writer_init(&args);
  fp_writer_init(&out);
  fp_write_int(&args, 12);
  int rc = fp_pool_apply(pool, sq, &args, &out);
  EXPECT(rc == 0, "%s: %s", fp_err_name(rc), fp_last_error());
  fp_reader_init(&rd, out.data, out.len);
  EXPECT(fp_read_int(&rd, &v) == 0 && v == 144, "got %lld", (long long)v);
  fp_writer_free(&args);
  fp_writer_free(&out);
}

static void c_every_rank(void *a) {
  (void)a;
  fp_writer in, out;
  fp_reader rd;
  fp_call_opts co = {.chunksize = 1};
  int seen[64] = {0}, nseen = 0;
  fp_writer_init(&in);
  fp_writer_init(&out);
  for (int i = 0; i < 40 * nranks; i++)
    fp_write_nil(&in);
  int rc = fp_pool_map_values(pool, my_rank, &in, &out, &co);
  EXPECT(rc == 0, "%s: %s", fp_err_name(rc), fp_last_error());
  fp_reader_init(&rd, out.data, out.len);
  int64_t r;
  while (!fp_reader_at_end(&rd) && fp_read_int(&rd, &r) == 0)
    if (r > 0 && r < 64 && !seen[r]++)
      nseen++;
  EXPECT(nseen == nranks - 1, "work reached %d of %d worker ranks", nseen,
         nranks - 1);
  fp_writer_free(&in);
  fp_writer_free(&out);
}

typedef struct cb_state {
  atomic_int ok, err;
  atomic_llong sum;
} cb_state;

static void on_ok(fp_result *r, void *arg) {
  cb_state *s = arg;
  fp_reader rd;
  int64_t v = 0;
  if (fp_result_value(r, &rd) == 0 && fp_read_int(&rd, &v) == 0)
    atomic_fetch_add(&s->sum, v);
  atomic_fetch_add(&s->ok, 1);
}

static void on_err(fp_result *r, void *arg) {
  cb_state *s = arg;
  if (strstr(fp_result_error(r), "negative input") != NULL)
    atomic_fetch_add(&s->err, 1);
}

static void c_apply_async(void *a) {
  (void)a;
  enum { N = 40 };
  static cb_state st;
  fp_result *res[N];
  fp_call_opts co = {.callback = on_ok, .error_callback = on_err, .arg = &st};
  int64_t want = 0;
  for (int i = 0; i < N; i++) {
    fp_writer args;
    fp_writer_init(&args);
    int64_t x = i % 10 == 9 ? -i : i; /* every tenth fails */
    fp_write_int(&args, x);
    want += x < 0 ? 0 : x + 1;
    EXPECT(fp_pool_apply_async(pool, odd_task, &args, &co, &res[i]) == 0,
           "submit %d", i);
    fp_writer_free(&args);
  }
  for (int i = 0; i < N; i++) {
    int rc = fp_result_get(res[i], 30);
    EXPECT(rc == (i % 10 == 9 ? FP_ETASK : 0), "item %d: %s", i,
           fp_err_name(rc));
    EXPECT(fp_result_ready(res[i]) == 1, "ready");
    EXPECT(fp_result_wait(res[i], 0) == 0, "wait");
    EXPECT(fp_result_successful(res[i]) == (i % 10 != 9), "successful");
    fp_result_free(res[i]);
  }
  EXPECT(atomic_load(&st.ok) == N - N / 10 && atomic_load(&st.err) == N / 10,
         "callbacks: %d ok, %d errors", atomic_load(&st.ok),
         atomic_load(&st.err));
  EXPECT(atomic_load(&st.sum) == want, "sum %lld, want %lld",
         (long long)atomic_load(&st.sum), (long long)want);
}

/* Iterates it to the end; ordered: values in order, else each index once. */
static void drain_iter(fp_iter *it, int n, int ordered) {
  char seen[1000] = {0};
  int got = 0, rc;
  fp_reader rd;
  while ((rc = fp_iter_next(it, &rd, 30)) == 0) {
    int64_t v = -1, i = fp_iter_index(it);
    fp_read_int(&rd, &v);
    EXPECT(i >= 0 && i < n && !seen[i] && v == i * i &&
               (!ordered || i == got),
           "index %lld value %lld after %d", (long long)i, (long long)v, got);
    if (i >= 0 && i < n)
      seen[i] = 1;
    got++;
  }
  EXPECT(rc == FP_EOF && got == n, "%s after %d of %d", fp_err_name(rc), got,
         n);
}

static void c_imap(void *ordered) {
  fp_writer in;
  fp_iter *it = NULL;
  write_ints(&in, 500);
  fp_call_opts co = {.chunksize = 7};
  int rc = ordered ? fp_pool_imap(pool, sq, &in, &co, &it)
                   : fp_pool_imap_unordered(pool, sq, &in, &co, &it);
  EXPECT(rc == 0, "%s", fp_err_name(rc));
  if (rc == 0)
    drain_iter(it, 500, ordered != NULL);
  fp_iter_free(it);
  fp_writer_free(&in);
}

static int produce(void *arg, fp_writer *item) {
  int *next = arg;
  if (*next >= 800)
    return 0;
  fp_write_int(item, (*next)++);
  return 1;
}

static void c_imap_producer(void *a) {
  (void)a;
  int next = 0;
  fp_iter *it = NULL;
  fp_call_opts co = {.chunksize = 4, .readahead = 32};
  int rc = fp_pool_imap_producer(pool, sq, produce, &next, &co, &it);
  EXPECT(rc == 0, "%s", fp_err_name(rc));
  if (rc == 0) {
    fp_reader rd;
    int got = 0;
    int64_t v;
    while ((rc = fp_iter_next(it, &rd, 30)) == 0 && fp_read_int(&rd, &v) == 0)
      got += v == (int64_t)got * got;
    EXPECT(rc == FP_EOF && got == 800, "%s after %d", fp_err_name(rc), got);
  }
  fp_iter_free(it);
}

static void c_crash(void *a) {
  (void)a;
  fp_writer in, out, args;
  int status[30];
  fp_call_opts co = {.chunksize = 1, .item_status = status};
  fp_writer_init(&in);
  fp_writer_init(&out);
  fp_writer_init(&args);
  for (int i = 0; i < 30; i++)
    fp_write_int(&in, i == 17 ? 1000 : i);
  int rc = fp_pool_map_values(pool, odd_task, &in, &out, &co);
  EXPECT(rc == 0, "%s: %s", fp_err_name(rc), fp_last_error());
  for (int i = 0; i < 30; i++)
    EXPECT(status[i] == (i == 17 ? FP_EWORKER : 0), "item %d: %s", i,
           fp_err_name(status[i]));
  fp_write_int(&args, 1000);
  rc = fp_pool_apply(pool, odd_task, &args, NULL);
  const char *msg = fp_last_error();
  EXPECT(rc == FP_EWORKER, "apply: %s", fp_err_name(rc));
  EXPECT(strstr(msg, "item 0") && strstr(msg, ", rank ") &&
             strstr(msg, " on ") && strstr(msg, "SIGSEGV"),
         "message: %s", msg);
  printf("  crash message: %s\n", msg);
  fp_writer_reset(&args);
  fp_write_int(&args, 5);
  EXPECT(fp_pool_apply(pool, odd_task, &args, NULL) == 0, "serves on");
  fp_writer_free(&in);
  fp_writer_free(&out);
  fp_writer_free(&args);
}

/* A task calling exit(): its item fails with FP_EWORKER and the pool
 * serves on (the MPI_Finalize registered at exit by the rank that
 * initialized MPI must not run in its forked workers: it would hang). */
static void c_task_exit(void *a) {
  (void)a;
  fp_writer args;
  fp_result *r = NULL;
  fp_writer_init(&args);
  fp_write_int(&args, 3000);
  EXPECT(fp_pool_apply_async(pool, odd_task, &args, NULL, &r) == 0, "submit");
  int rc = fp_result_get(r, 20);
  EXPECT(rc == FP_EWORKER, "%s: %s", fp_err_name(rc),
         rc && rc != FP_ETIMEDOUT ? fp_result_error(r) : "");
  if (rc == FP_EWORKER)
    EXPECT(strstr(fp_result_error(r), "status 3") != NULL, "message: %s",
           fp_result_error(r));
  fp_result_free(r);
  fp_writer_reset(&args);
  fp_write_int(&args, 5);
  EXPECT(fp_pool_apply(pool, odd_task, &args, NULL) == 0, "serves on");
  fp_writer_free(&args);
}

/* A process forked by rank 0 that exits ends at once: rank 0's exit
 * handlers (BYE to the ranks, MPI_Finalize) are not its to run. */
static void c_fork_exit(void *a) {
  (void)a;
  pid_t pid = fork();
  if (pid == 0)
    exit(0);
  int st = -1, waited = 0;
  for (int i = 0; i < 1000 && waited == 0; i++) { /* at most 10 s */
    waited = (int)waitpid(pid, &st, WNOHANG);
    if (waited == 0) {
      struct timespec ts = {0, 10000000};
      nanosleep(&ts, NULL);
    }
  }
  EXPECT(waited == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
         "the child did not exit (waitpid %d)", waited);
  if (waited == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
  }
  fp_writer args;
  fp_writer_init(&args);
  fp_write_int(&args, 5);
  EXPECT(fp_pool_apply(pool, odd_task, &args, NULL) == 0, "serves on");
  fp_writer_free(&args);
}

static void c_time_limit(void *a) {
  (void)a;
  fp_writer args;
  fp_result *r = NULL;
  fp_call_opts co = {.timeout = 0.3};
  fp_writer_init(&args);
  fp_write_int(&args, 2000);
  double t0 = mt_now();
  EXPECT(fp_pool_apply_async(pool, odd_task, &args, &co, &r) == 0, "submit");
  int rc = fp_result_get(r, 20);
  double took = mt_now() - t0;
  EXPECT(rc == FP_ETIMEDOUT && strstr(fp_result_error(r), "time limit"),
         "%s: %s", fp_err_name(rc), rc ? fp_result_error(r) : "");
  EXPECT(took > 0.25 && took < 5, "took %.3f s", took);
  fp_result_free(r);
  fp_writer_free(&args);
}

/* Last: every worker runs a 60 s task when terminate comes. */
static void c_terminate(void *a) {
  (void)a;
  int n = nranks - 1;
  fp_result *r[64];
  fp_writer args;
  fp_writer_init(&args);
  fp_write_int(&args, 2000);
  for (int i = 0; i < n && i < 64; i++)
    EXPECT(fp_pool_apply_async(pool, odd_task, &args, NULL, &r[i]) == 0,
           "submit");
  fp_writer_free(&args);
  /* Wait until the long tasks run: a quick apply queued behind them would
   * never finish, so watch the workers' task counters instead. */
  double t0 = mt_now();
  EXPECT(fp_pool_terminate(pool) == 0, "terminate");
  EXPECT(mt_now() - t0 < 10, "terminate took %.3f s", mt_now() - t0);
  for (int i = 0; i < n && i < 64; i++) {
    EXPECT(fp_result_get(r[i], 5) == FP_ECANCELED, "result %d", i);
    fp_result_free(r[i]);
  }
  EXPECT(fp_pool_join(pool) == 0, "join");
}

static void singleton(void) {
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1};
  fp_pool *p = NULL;
  int rc = fp_pool_new(&p, &o);
  EXPECT(rc == FP_ENOTSUP && p == NULL, "%s", fp_err_name(rc));
  EXPECT(strstr(fp_last_error(), "no worker ranks") != NULL, "message: %s",
         fp_last_error());
  printf("%s singleton: %s\n", mt_case_failed ? "FAIL" : "ok  ",
         fp_last_error());
  mt_case_failed ? mt_failed++ : mt_passed++;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc > 1 && strcmp(argv[1], "--singleton") == 0) {
    singleton();
    return mt_done();
  }
  const char *env = getenv("OMPI_COMM_WORLD_SIZE");
  nranks = env ? atoi(env) : 0;
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1};
  int rc = fp_pool_new(&pool, &o); /* worker ranks never return */
  if (rc != 0) {
    printf("fp_pool_new: %s: %s\n0 passed, 1 failed\n", fp_err_name(rc),
           fp_last_error());
    return 1;
  }
  mt_run("pool_size_counts_worker_ranks", c_size, NULL);
  mt_run("map_fixed_size", c_map, NULL);
  mt_run("map_over_unreadable_input_fails", c_map_bad_memory, NULL);
  mt_run("map_over_secret_memory", c_map_secret, NULL);
  mt_run("map_into_readonly_output_fails", c_map_bad_memory, (void *)1);
  mt_run("map_values", c_map_values, NULL);
  mt_run("starmap", c_starmap, NULL);
  mt_run("apply", c_apply, NULL);
  mt_run("work_reaches_every_rank", c_every_rank, NULL);
  mt_run("apply_async_callbacks", c_apply_async, NULL);
  mt_run("imap_ordered", c_imap, (void *)1);
  mt_run("imap_unordered", c_imap, NULL);
  mt_run("imap_producer", c_imap_producer, NULL);
  mt_run("sigsegv_is_fp_eworker_naming_rank", c_crash, NULL);
  mt_run("task_calling_exit_is_fp_eworker", c_task_exit, NULL);
  mt_run("forked_process_exits", c_fork_exit, NULL);
  mt_run("time_limit", c_time_limit, NULL);
  mt_run("terminate_during_long_tasks", c_terminate, NULL);
  fp_pool_free(pool);
  return mt_done();
}
