/* SPDX-License-Identifier: MIT */
/* rawbench.c - the machine's own limits: what C can do with no library.
 *
 * The baselines forkpool is measured against, each a subcommand printing
 * metric lines (see benchutil.h):
 *
 *   fork      fork + _exit + waitpid, twice (what starting and stopping two
 *             workers costs at the very least)           -> start_stop
 *   pipe      8-byte round trips over two pipes between two processes,
 *             pinned to two CPUs (apply_rtt) and to one CPU (pipe_rtt_same)
 *   pipebw    pipe bandwidth, one direction, 64 KiB writes -> pipe_bw
 *   memcpy    memcpy bandwidth over 256 MiB buffers       -> memcpy_bw
 *   shared    2 processes: atomic fetch_add on shared memory (counter_2proc)
 *             and robust process-shared mutex lock + inc + unlock
 *             (mutex_2proc)
 *   scale K W the CPU kernel K of kernels.h sequentially (scale.K.seq) and
 *             with OpenMP at 1..W threads (scale.K.wN), schedule(dynamic,1)
 *             like forkpool's chunksize 1; the thread team is started by a
 *             warm-up region before the clock starts, as forkpool's workers
 *             are started before its clock starts.
 *
 * Each invocation is one run; demos/bench/run.sh repeats and interleaves
 * runs of every side and report.py takes the medians.
 */
#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "benchutil.h"
#include "kernels.h"

static int quick;

/* fork + _exit + waitpid of two children, repeated; ms per pair. */
static void bench_fork(void) {
  int reps = quick ? 50 : 200;
  double t0 = now_s();
  for (int r = 0; r < reps; r++) {
    pid_t p[2];
    for (int i = 0; i < 2; i++) {
      p[i] = fork();
      if (p[i] < 0)
        die("fork: %s", strerror(errno));
      if (p[i] == 0)
        _exit(0);
    }
    for (int i = 0; i < 2; i++)
      if (waitpid(p[i], NULL, 0) != p[i])
        die("waitpid: %s", strerror(errno));
  }
  emit("start_stop", "baseline", (now_s() - t0) / reps * 1e3, "ms");
}

/* Reads or writes exactly n bytes, or dies. */
static void full_io(int fd, void *buf, size_t n, int wr) {
  char *p = buf;
  while (n > 0) {
    ssize_t k = wr ? write(fd, p, n) : read(fd, p, n);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      die("%s: %s", wr ? "write" : "read", k ? strerror(errno) : "EOF");
    p += k;
    n -= (size_t)k;
  }
}

/* One ping-pong run: the parent on CPU a, the child on CPU b (-1: not
 * pinned). Returns microseconds per round trip. */
static double pingpong(int a, int b, int reps) {
  int up[2], down[2];
  cpu_set_t saved;
  sched_getaffinity(0, sizeof saved, &saved);
  if (pipe(up) || pipe(down))
    die("pipe: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0)
    die("fork: %s", strerror(errno));
  if (pid == 0) {
    uint64_t v;
    if (b >= 0)
      pin_to(b);
    close(down[1]);
    close(up[0]);
    for (int i = 0; i < reps + 100; i++) {
      full_io(down[0], &v, 8, 0);
      v++;
      full_io(up[1], &v, 8, 1);
    }
    _exit(0);
  }
  close(down[0]);
  close(up[1]);
  if (a >= 0)
    pin_to(a);
  uint64_t v = 0;
  double t0 = 0;
  for (int i = 0; i < reps + 100; i++) {
    if (i == 100) /* the first 100 trips warm both sides up */
      t0 = now_s();
    full_io(down[1], &v, 8, 1);
    full_io(up[0], &v, 8, 0);
  }
  double us = (now_s() - t0) / reps * 1e6;
  if (v != (uint64_t)reps + 100)
    die("pingpong: wrong count %llu", (unsigned long long)v);
  waitpid(pid, NULL, 0);
  close(down[1]);
  close(up[0]);
  sched_setaffinity(0, sizeof saved, &saved);
  return us;
}

static void bench_pipe(void) {
  int reps = quick ? 5000 : 40000;
  int c0 = nth_cpu(0), c1 = nth_cpu(1);
  emit("apply_rtt", "baseline", pingpong(c0, c1, reps), "us");
  emit("pipe_rtt_same", "baseline", pingpong(c0, c0, reps), "us");
}

/* Pipe bandwidth: a child writes 64 KiB blocks, the parent reads them. */
static void bench_pipebw(void) {
  size_t blk = 64 << 10;
  size_t total = (size_t)(quick ? 256 : 1024) << 20;
  int fd[2];
  if (pipe(fd))
    die("pipe: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0)
    die("fork: %s", strerror(errno));
  if (pid == 0) {
    char *buf = malloc(blk);
    memset(buf, 7, blk);
    close(fd[0]);
    for (size_t done = 0; done < total; done += blk)
      full_io(fd[1], buf, blk, 1);
    _exit(0);
  }
  close(fd[1]);
  char *buf = malloc(blk);
  size_t got = 0;
  double t0 = now_s();
  for (;;) {
    ssize_t k = read(fd[0], buf, blk);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0)
      die("read: %s", strerror(errno));
    if (k == 0)
      break;
    got += (size_t)k;
  }
  double dt = now_s() - t0;
  waitpid(pid, NULL, 0);
  close(fd[0]);
  free(buf);
  if (got != total)
    die("pipebw: got %zu of %zu bytes", got, total);
  emit("pipe_bw", "baseline", (double)total / dt / (1 << 20), "MiB/s");
}

/* memcpy bandwidth between two 256 MiB buffers (64 MiB in quick mode),
 * both touched before the clock starts. */
static void bench_memcpy(void) {
  size_t n = (size_t)(quick ? 64 : 256) << 20;
  int reps = 4;
  char *a = malloc(n), *b = malloc(n);
  if (!a || !b)
    die("memcpy: out of memory");
  memset(a, 1, n);
  memset(b, 2, n);
  double t0 = now_s();
  for (int r = 0; r < reps; r++) {
    memcpy(r & 1 ? a : b, r & 1 ? b : a, n);
    __asm__ volatile("" ::"r"(a), "r"(b) : "memory");
  }
  double dt = now_s() - t0;
  emit("memcpy_bw", "baseline", (double)n * reps / dt / (1 << 20), "MiB/s");
  free(a);
  free(b);
}

/* Shared state of the two-process tests, in a MAP_SHARED page. */
typedef struct shared_t {
  atomic_llong counter;
  pthread_mutex_t mu;
  long long value;
} shared_t;

/* Runs op(sh, iters) in two child processes started together; returns the
 * total operations per second. Started as fpbench's run_procs() starts
 * the forkpool side of these rows: each child says it is ready on a pipe
 * and sleeps in a read of another until the parent closes it. Children
 * spinning for the start while the parent spun waiting for them (three
 * busy threads on two CPUs) could begin on one CPU and stay there, where
 * a shared counter never moves between caches: a baseline no pair of
 * processes on two CPUs reaches. */
static double two_procs(shared_t *sh, void (*op)(shared_t *, long), long it) {
  pid_t p[2];
  int ready[2], go[2];
  char c;
  if (pipe(ready) != 0 || pipe(go) != 0)
    die("pipe: %s", strerror(errno));
  for (int i = 0; i < 2; i++) {
    p[i] = fork();
    if (p[i] < 0)
      die("fork: %s", strerror(errno));
    if (p[i] == 0) {
      close(go[1]);
      if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 0)
        _exit(1);
      op(sh, it);
      _exit(0);
    }
  }
  close(go[0]);
  for (int i = 0; i < 2; i++)
    if (read(ready[0], &c, 1) != 1)
      die("a two-process test child did not start");
  double t0 = now_s();
  close(go[1]); /* EOF: go */
  for (int i = 0; i < 2; i++) {
    int st;
    if (waitpid(p[i], &st, 0) != p[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
      die("a two-process test child failed");
  }
  double dt = now_s() - t0;
  close(ready[0]);
  close(ready[1]);
  return 2.0 * (double)it / dt;
}

static void op_atomic(shared_t *sh, long it) {
  for (long i = 0; i < it; i++)
    atomic_fetch_add_explicit(&sh->counter, 1, memory_order_relaxed);
}

static void op_mutex(shared_t *sh, long it) {
  for (long i = 0; i < it; i++) {
    int rc = pthread_mutex_lock(&sh->mu);
    if (rc == EOWNERDEAD)
      pthread_mutex_consistent(&sh->mu);
    sh->value++;
    pthread_mutex_unlock(&sh->mu);
  }
}

static void bench_shared(void) {
  shared_t *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED)
    die("mmap: %s", strerror(errno));
  memset(sh, 0, sizeof *sh);
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&sh->mu, &ma);
  long it = quick ? 2000000 : 10000000;
  double r = two_procs(sh, op_atomic, it);
  if (atomic_load(&sh->counter) != 2 * it)
    die("atomic: lost increments");
  emit("counter_2proc", "baseline", r, "ops/s");
  it = quick ? 500000 : 2000000;
  r = two_procs(sh, op_mutex, it);
  if (sh->value != 2 * it)
    die("mutex: lost increments");
  emit("mutex_2proc", "baseline", r, "ops/s");
  munmap(sh, sizeof *sh);
}

/* Sequential and OpenMP runs of one kernel. */
static void bench_scale(const char *name, int maxw) {
  kernel_def *k = kernel_find(name);
  char metric[64];
  if (!k)
    die("unknown kernel %s", name);
  int64_t want = 0;
  double t0 = now_s();
  for (int64_t t = 0; t < k->ntasks; t++)
    want += k->fn(t);
  snprintf(metric, sizeof metric, "scale.%s.seq", name);
  emit(metric, "sequential", now_s() - t0, "s");
  for (int w = 1; w <= maxw; w++) {
    int64_t sum = 0;
    int64_t warm = 0;
#pragma omp parallel for num_threads(w) reduction(+ : warm)
    for (int i = 0; i < w; i++)
      warm += i;
    t0 = now_s();
#pragma omp parallel for num_threads(w) schedule(dynamic, 1) reduction(+ : sum)
    for (int64_t t = 0; t < k->ntasks; t++)
      sum += k->fn(t);
    double dt = now_s() - t0;
    if (sum != want || warm != (int64_t)w * (w - 1) / 2)
      die("openmp %s: checksum %lld, want %lld", name, (long long)sum,
          (long long)want);
    snprintf(metric, sizeof metric, "scale.%s.w%d", name, w);
    emit(metric, "openmp", dt, "s");
  }
  /* A second sequential sample after the parallel ones, so that a burst of
   * noise at the start does not skew every speedup of this run. */
  t0 = now_s();
  int64_t again = 0;
  for (int64_t t = 0; t < k->ntasks; t++)
    again += k->fn(t);
  snprintf(metric, sizeof metric, "scale.%s.seq", name);
  emit(metric, "sequential", now_s() - t0, "s");
  if (again != want)
    die("sequential %s: checksum changed", name);
  snprintf(metric, sizeof metric, "scale.%s.checksum", name);
  emit(metric, "sequential", (double)want, "sum");
}

int main(int argc, char **argv) {
  quick = bench_quick();
  if (argc < 2)
    die("usage: rawbench fork|pipe|pipebw|memcpy|shared|scale K W");
  const char *cmd = argv[1];
  if (strcmp(cmd, "fork") == 0)
    bench_fork();
  else if (strcmp(cmd, "pipe") == 0)
    bench_pipe();
  else if (strcmp(cmd, "pipebw") == 0)
    bench_pipebw();
  else if (strcmp(cmd, "memcpy") == 0)
    bench_memcpy();
  else if (strcmp(cmd, "shared") == 0)
    bench_shared();
  else if (strcmp(cmd, "scale") == 0 && argc == 4) {
    if (kernels_init(quick) != 0)
      die("out of memory");
    bench_scale(argv[2], atoi(argv[3]));
  } else
    die("unknown command %s", cmd);
  return 0;
}
