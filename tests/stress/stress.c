/* SPDX-License-Identifier: MIT */
/* stress.c - a bounded random mix of the faults of issue 15 (make stress).
 *
 * Until STRESS_SECONDS have passed (argument 1, else the STRESS_SECONDS
 * variable, else 120; the iteration under way then finishes) the program
 * runs iterations, each one scenario picked at random:
 *
 *   kills     maps under FP_CRASH_RETRY while a thread SIGKILLs random
 *             workers of the pool (by pidfd, after checking that the pid
 *             is a child of that pool's fork server); every result exact
 *   fds       a forked child acting as the master lowers RLIMIT_NOFILE
 *             (the limit is process-wide, so not in this process): either
 *             fp_pool_new under a low limit must fail or work, or a running
 *             pool loses a replacement's socket and must still serve and
 *             terminate; no process or descriptor left in the child
 *   timeouts  1e10, 1e300, INFINITY, DBL_MAX and NaN as a pool's
 *             task_timeout, a call's timeout, the timeout of fp_result_get,
 *             fp_result_wait and fp_iter_next, and restart_window: huge
 *             means forever (or FP_EINVAL), NaN is FP_EINVAL
 *   threads   several threads create, use and free pools at once
 *   forks     the user forks while a map runs; the child's submission is
 *             refused and its cleanup calls return at once; the parent's
 *             map completes exactly, with the same workers
 *   uneven    apply_async calls of very uneven cost (most instant, some
 *             tens of milliseconds), so that quick ones land behind slow
 *             ones and idle workers take them back; half the time under
 *             random kills with FP_CRASH_FAIL. Each task counts its runs in
 *             shared memory: a call that succeeded ran exactly once, a
 *             failed one (only under kills: FP_EWORKER) at most once
 *   cancels   fp_result_cancel on running applies and maps, fp_iter_free
 *             on half-read iterators, fp_result_free on a running
 *             map_async (then its `in` and `out` are reused: no task may
 *             read the one, the pool may not write the other); finished
 *             work is exact and the pool serves on
 *
 * Every iteration ends with no child process left; at the end the program
 * also checks that waitpid(-1, WNOHANG) gives ECHILD, that /proc/self/task
 * holds one thread and that /proc/self/fd holds as many descriptors as
 * before the first iteration (measured after a warm-up pool, because libuv
 * keeps a few process-wide descriptors once a loop existed).
 *
 * A watchdog thread turns a hang into a failure: an iteration that runs
 * longer than HANG_S seconds prints the summary line with the scenario that
 * hung and exits with status 2. Forked children have deadlines of their own
 * and are SIGKILLed when over them. The last line printed is the summary;
 * the exit status is 0 only when every check passed (in an ASan build,
 * LeakSanitizer's verdict included). STRESS_SEED=n repeats a run's choices
 * of scenarios and sizes (timing still varies; the seed is in the
 * summary); STRESS_SCENARIOS=kills,fds runs only the scenarios named.
 *
 * Under AddressSanitizer the default leaves out "threads" and "forks":
 * gcc 12's ASan allocator is not fork-safe (no atfork lock), so a process
 * forked while another thread is inside malloc -- a fork server made by a
 * concurrent fp_pool_new, or the user's child -- can block forever on the
 * allocator's lock, a hang of the sanitizer, not of the library.
 */
#include "forkpool.h"
#include "../child.h"

#include <dirent.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define STRESS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STRESS_ASAN 1
#endif
#endif
#ifndef STRESS_ASAN
#define STRESS_ASAN 0
#endif
#if STRESS_ASAN
#include <sanitizer/lsan_interface.h>
#endif

#define HANG_S 90        /* longest an iteration may take */
#define CHILD_LIMIT_S 15 /* longest a forked child may take */
#define MAX_REPORTED 30  /* failure lines printed; the rest are counted */
#define UNEVEN_MAX 400   /* most calls of one "uneven" iteration */

/* ---- run state ----------------------------------------------------------- */

enum {
  SC_KILLS,
  SC_FDS,
  SC_TIMEOUTS,
  SC_THREADS,
  SC_FORKS,
  SC_CANCELS,
  SC_UNEVEN,
  SC_COUNT
};
static const char *const k_scenario[SC_COUNT] = {
    "kills", "fds", "timeouts", "threads", "forks", "cancels", "uneven"};

static struct {
  _Atomic int failures;
  long iterations;
  long runs[SC_COUNT];
  _Atomic long kills;
  long maps;
  _Atomic long items;
  long children;
  long canceled;
  _Atomic long pools;
} g_st;

static unsigned g_seed;
static double g_t0;

/* A page shared with workers and forked children (mapped before any pool). */
typedef struct shared {
  _Atomic int never;        /* never set: a bounded block */
  _Atomic long poison_seen; /* items that read memory freed by the caller */
  char msg[512];     /* a forked child's failure message */
  _Atomic int runs[UNEVEN_MAX]; /* scenario uneven: runs of each call */
} shared;
static shared *g_sh;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void fail(const char *scenario, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fail(const char *scenario, const char *fmt, ...) {
  int n = atomic_fetch_add(&g_st.failures, 1);
  if (n >= MAX_REPORTED)
    return;
  char buf[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  fprintf(stderr, "stress: FAIL [%s, iteration %ld, %.1fs] %s\n", scenario,
          g_st.iterations, now_s() - g_t0, buf);
}

static void summary(const char *verdict, const char *extra) {
  printf("stress: %s: %ld iterations in %.0fs (seed %u): kills %ld, maps %ld "
         "(%ld items checked), pools %ld, children %ld, cancels %ld; runs:",
         verdict, g_st.iterations, now_s() - g_t0, g_seed,
         atomic_load(&g_st.kills), g_st.maps, atomic_load(&g_st.items),
         atomic_load(&g_st.pools), g_st.children, g_st.canceled);
  for (int i = 0; i < SC_COUNT; i++)
    printf(" %s %ld", k_scenario[i], g_st.runs[i]);
  printf("; %d failures%s%s\n", atomic_load(&g_st.failures),
         extra[0] ? "; " : "", extra);
  fflush(stdout);
}

/* xorshift64*: per-thread state, seeded from the run's seed. */
static uint64_t rnd_next(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ULL;
}
static uint64_t g_rnd;
static int rnd(int n) {
  return (int)(rnd_next(&g_rnd) % (uint64_t)n);
}

static void nap_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ---- processes and descriptors ------------------------------------------- */

static int count_dir(const char *path) {
  DIR *d = opendir(path);
  int n = 0;
  if (d == NULL)
    return -1;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.')
      n++;
  closedir(d);
  return n;
}

/* Open descriptors, not counting the DIR's own. */
static int count_fds(void) {
  return count_dir("/proc/self/fd") - 1;
}

static pid_t proc_ppid(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return -1;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  char *rp = strrchr(buf, ')');
  int ppid = -1;
  if (rp == NULL || sscanf(rp + 1, " %*c %d", &ppid) != 1)
    return -1;
  return ppid;
}

/* Reaps any child left behind and reports it. */
static void check_no_children(const char *scenario) {
  int st;
  pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
    fail(scenario, "a child process (%d) was left behind", (int)pid);
  if (pid == 0) {
    fail(scenario, "a child process is still running after the iteration");
    while (waitpid(-1, &st, 0) > 0) {
    }
  }
}

/* fork() for a child of this program: it dies with the program
 * (PR_SET_PDEATHSIG), so a stress run that is killed leaves no orphan. */
static pid_t fork_child(void) {
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(1);
  }
  return pid;
}

/* Runs a forked child's verdict: it must exit 0 within CHILD_LIMIT_S. */
static int child_verdict(pid_t pid, const char *scenario, const char *what) {
  int st = 0;
  g_st.children++;
  if (pid < 0) {
    fail(scenario, "%s: fork: %s", what, strerror(errno));
    return -1;
  }
  if (fp_test_wait_child(pid, CHILD_LIMIT_S, &st) != 0) {
    fail(scenario, "%s: still running after %ds (hang), killed%s%s", what,
         CHILD_LIMIT_S, g_sh->msg[0] ? "; last step: " : "", g_sh->msg);
    return -1;
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fail(scenario, "%s: child %s %d: %s", what,
         WIFSIGNALED(st) ? "killed by signal" : "exited with",
         WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), g_sh->msg);
    return -1;
  }
  return 0;
}

/* In a forked child: records the failure and exits with status 1. */
static void child_fail(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
static void child_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_sh->msg, sizeof(g_sh->msg), fmt, ap);
  va_end(ap);
  _exit(1);
}

/* In a forked child: notes the call it is about to make, so that the
 * parent can name it if the child hangs. */
static void child_step(const char *name) {
  snprintf(g_sh->msg, sizeof(g_sh->msg), "%s", name);
}

/* SIGKILLs pid only when it is a child of fork server fs: the pid is
 * pinned with a pidfd first, so a recycled pid is never hit. Returns 1
 * when the signal was sent. */
static int kill_worker(pid_t pid, pid_t fs) {
  if (pid <= 0 || fs <= 0)
    return 0;
  int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pfd < 0)
    return 0;
  int sent = 0;
  if (proc_ppid(pid) == fs &&
      syscall(SYS_pidfd_send_signal, pfd, SIGKILL, NULL, 0) == 0)
    sent = 1;
  close(pfd);
  return sent;
}

/* The pool's fork server: the parent of its workers. */
static pid_t fork_server_of(fp_pool *p) {
  for (int i = 0; i < fp_pool_size(p); i++) {
    fp_worker_info wi;
    if (fp_pool_worker_info(p, i, &wi) == 0 && wi.pid > 0)
      return proc_ppid(wi.pid);
  }
  return -1;
}

/* ---- tasks --------------------------------------------------------------- */

static int64_t expect_of(int64_t v) {
  return v * 3 + 1;
}

/* A few microseconds of work per item, so that maps last long enough to be
 * hit by kills and cancels. */
#define POISON ((int64_t)0x5a5a5a5a5a5a5a5aLL)

static int e_work(const void *in, void *out) {
  int64_t v = *(const int64_t *)in;
  if (v == POISON)
    atomic_fetch_add(&g_sh->poison_seen, 1);
  volatile uint64_t x = (uint64_t)v;
  for (unsigned i = 0; i < 2000; i++)
    x = x * 31 + i;
  *(int64_t *)out = expect_of(v);
  return 0;
}

static int t_work(fp_reader *args, fp_writer *out) {
  int64_t v = 0;
  int rc = fp_read_int(args, &v);
  if (rc != 0)
    return rc;
  volatile uint64_t x = (uint64_t)v;
  for (unsigned i = 0; i < 2000; i++)
    x = x * 31 + i;
  return fp_write_int(out, expect_of(v));
}

/* Runs `ms` milliseconds of wall time (argument), then answers it. */
static int t_busy(fp_reader *args, fp_writer *out) {
  int64_t ms = 5;
  fp_read_int(args, &ms);
  double end = now_s() + (double)ms / 1000;
  volatile uint64_t x = 0;
  while (now_s() < end)
    x++;
  return fp_write_int(out, ms);
}

/* Scenario uneven: counts its run of call i, then works ms milliseconds
 * (arguments i, ms). */
static int t_uneven(fp_reader *args, fp_writer *out) {
  int64_t i = -1, ms = 0;
  if (fp_unpack(args, "ii", &i, &ms) != 0 || i < 0 || i >= UNEVEN_MAX)
    return fp_task_fail("bad arguments");
  atomic_fetch_add(&g_sh->runs[i], 1);
  double end = now_s() + (double)ms / 1000;
  volatile uint64_t x = 0;
  while (ms > 0 && now_s() < end)
    x++;
  return fp_write_int(out, expect_of(i));
}

/* Holds its worker until killed (bounded: 10 s). */
static int t_hold(fp_reader *args, fp_writer *out) {
  (void)args;
  struct timespec ts = {10, 0};
  syscall(SYS_futex, (void *)&g_sh->never, FUTEX_WAIT, 0, &ts, NULL, 0);
  return fp_write_int(out, 0);
}

static int init_fail(void *arg) {
  (void)arg;
  return 1;
}

/* Fills in[] with values and checks out[] against them. */
static void fill_in(int64_t *in, size_t n) {
  for (size_t i = 0; i < n; i++)
    in[i] = (int64_t)(rnd_next(&g_rnd) >> 20) - ((int64_t)1 << 42);
}

static int check_out(const char *sc, const char *what, const int64_t *in,
                     const int64_t *out, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (out[i] != expect_of(in[i])) {
      fail(sc, "%s: item %zu: %" PRId64 " instead of %" PRId64, what, i,
           out[i], expect_of(in[i]));
      return -1;
    }
  atomic_fetch_add(&g_st.items, (long)n);
  return 0;
}

/* A map of n fixed-size items through fp_pool_map, checked exactly. */
static int map_checked(fp_pool *p, const char *sc, size_t n, size_t cs) {
  int64_t *in = malloc(n * sizeof(*in)), *out = malloc(n * sizeof(*out));
  if (in == NULL || out == NULL) {
    free(in);
    free(out);
    fail(sc, "out of memory");
    return -1;
  }
  fill_in(in, n);
  fp_call_opts co = {0};
  co.chunksize = cs;
  int rc = fp_pool_map(p, e_work, in, n, 8, out, 8, &co);
  g_st.maps++;
  if (rc != 0)
    fail(sc, "map of %zu items (chunksize %zu): %s: %s", n, cs,
         fp_err_name(rc), fp_last_error());
  else
    rc = check_out(sc, "map", in, out, n);
  free(in);
  free(out);
  return rc;
}

/* The same through fp_pool_map_values (codec values). */
static int map_values_checked(fp_pool *p, const char *sc, size_t n,
                              size_t cs) {
  int64_t *in = malloc(n * sizeof(*in));
  if (in == NULL)
    return -1;
  fill_in(in, n);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  for (size_t i = 0; i < n; i++)
    fp_write_int(&items, in[i]);
  fp_call_opts co = {0};
  co.chunksize = cs;
  int rc = fp_pool_map_values(p, t_work, &items, &out, &co);
  g_st.maps++;
  if (rc != 0) {
    fail(sc, "map_values of %zu items: %s: %s", n, fp_err_name(rc),
         fp_last_error());
  } else {
    fp_reader rd;
    fp_reader_init(&rd, out.data, out.len);
    for (size_t i = 0; i < n && rc == 0; i++) {
      int64_t v = 0;
      if (fp_read_int(&rd, &v) != 0 || v != expect_of(in[i])) {
        fail(sc, "map_values: item %zu wrong", i);
        rc = -1;
      }
    }
    if (rc == 0 && !fp_reader_at_end(&rd)) {
      fail(sc, "map_values: more results than items");
      rc = -1;
    }
    if (rc == 0)
      atomic_fetch_add(&g_st.items, (long)n);
  }
  fp_writer_free(&items);
  fp_writer_free(&out);
  free(in);
  return rc;
}

static fp_pool *new_pool(const char *sc, int n, fp_crash_policy pol,
                         int retries) {
  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  o.processes = n;
  o.on_crash = pol;
  o.retries = retries;
  int rc = fp_pool_new(&p, &o);
  atomic_fetch_add(&g_st.pools, 1);
  if (rc != 0) {
    fail(sc, "fp_pool_new(%d workers): %s: %s", n, fp_err_name(rc),
         fp_last_error());
    return NULL;
  }
  return p;
}

/* ---- scenario: random worker kills --------------------------------------- */

typedef struct killer {
  fp_pool *pool;
  pid_t fs;
  int max_kills;
  uint64_t rnd;
  _Atomic int stop;
} killer;

/* Kills a random worker every few milliseconds (pacing, not
 * synchronisation) until stopped or max_kills reached. */
static void *killer_main(void *arg) {
  killer *k = arg;
  int done = 0;
  while (!atomic_load(&k->stop) && done < k->max_kills) {
    nap_ms(1 + (int)(rnd_next(&k->rnd) % 15));
    fp_worker_info wi;
    int slot = (int)(rnd_next(&k->rnd) % (uint64_t)fp_pool_size(k->pool));
    if (fp_pool_worker_info(k->pool, slot, &wi) == 0 &&
        kill_worker(wi.pid, k->fs)) {
      done++;
      atomic_fetch_add(&g_st.kills, 1);
    }
  }
  return NULL;
}

static void sc_kills(void) {
  const char *sc = "kills";
  int n = 2 + rnd(3);
  fp_pool *p = new_pool(sc, n, FP_CRASH_RETRY, 1000);
  if (p == NULL)
    return;
  killer k = {p, fork_server_of(p), 1 + rnd(6), rnd_next(&g_rnd), 0};
  pthread_t th;
  pthread_create(&th, NULL, killer_main, &k);
  int rounds = 1 + rnd(4);
  for (int r = 0; r < rounds; r++) {
    size_t items = 1000 + (size_t)rnd(20000);
    size_t cs = rnd(3) == 0 ? 0 : 1 + (size_t)rnd(64);
    if (rnd(2))
      map_checked(p, sc, items, cs);
    else
      map_values_checked(p, sc, items / 4, cs);
  }
  atomic_store(&k.stop, 1);
  pthread_join(th, NULL);
  /* Whatever was killed, the pool serves on. */
  map_checked(p, sc, 100, 1);
  fp_pool_free(p);
}

/* ---- scenario: descriptor pressure (in a child acting as the master) ----- */

static void fds_new_under_limit(int lim, int workers) {
  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  o.processes = 1;
  if (fp_pool_new(&p, &o) != 0) /* libuv's process-wide descriptors */
    child_fail("warm-up pool: %s", fp_last_error());
  fp_pool_free(p);
  int fds = count_fds();
  struct rlimit old, low;
  getrlimit(RLIMIT_NOFILE, &old);
  low = old;
  low.rlim_cur = (rlim_t)lim;
  if (setrlimit(RLIMIT_NOFILE, &low) != 0)
    child_fail("setrlimit: %s", strerror(errno));
  o.processes = workers;
  p = NULL;
  int rc = fp_pool_new(&p, &o);
  if (rc == 0) {
    int64_t in[64], out[64];
    for (int i = 0; i < 64; i++)
      in[i] = i;
    int mrc = fp_pool_map(p, e_work, in, 64, 8, out, 8, NULL);
    for (int i = 0; mrc == 0 && i < 64; i++)
      if (out[i] != expect_of(i))
        child_fail("limit %d, %d workers: item %d wrong", lim, workers, i);
    if (mrc != 0)
      child_fail("limit %d, %d workers: map %s", lim, workers,
                 fp_err_name(mrc));
  } else if (rc > 0) {
    child_fail("fp_pool_new returned %d", rc);
  }
  fp_pool_free(p);
  setrlimit(RLIMIT_NOFILE, &old);
  int st;
  if (!(waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD))
    child_fail("limit %d, %d workers: a child process was left", lim,
               workers);
  if (count_fds() != fds)
    child_fail("limit %d, %d workers (%s): %d descriptors before, %d after",
               lim, workers, fp_err_name(rc), fds, count_fds());
}

/* Every descriptor below LOW is taken before the pool starts, then the
 * limit drops to LOW: the dead worker's socket frees a number above the
 * limit, so the replacement's socket cannot be received. */
#define LOW 128
static void fds_lost_replacement(void) {
  static int fill[LOW];
  int nfill = 0, pp[2];
  if (pipe(pp) != 0)
    child_fail("pipe: %s", strerror(errno));
  for (;;) {
    int fd = dup(pp[0]);
    if (fd < 0 || fd >= LOW)
      child_fail("filling descriptors: %d", fd);
    fill[nfill++] = fd;
    if (fd == LOW - 1)
      break;
  }
  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  o.processes = 2;
  if (fp_pool_new(&p, &o) != 0)
    child_fail("fp_pool_new: %s", fp_last_error());
  /* The victim is pinned by a pidfd now: once the table is full, no
   * pidfd can be opened. */
  fp_worker_info wi;
  fp_pool_worker_info(p, rnd(2), &wi);
  int victim = (int)syscall(SYS_pidfd_open, wi.pid, 0);
  if (victim < 0 || proc_ppid(wi.pid) != fork_server_of(p))
    child_fail("worker %d not found", (int)wi.pid);
  struct rlimit old, low;
  getrlimit(RLIMIT_NOFILE, &old);
  low = old;
  low.rlim_cur = LOW;
  setrlimit(RLIMIT_NOFILE, &low);
  if (syscall(SYS_pidfd_send_signal, victim, SIGKILL, NULL, 0) != 0)
    child_fail("could not kill worker %d: %s", (int)wi.pid, strerror(errno));
  /* Pacing: the replacement's report most likely arrives within these
   * 100 ms, while the table is full; what follows must hold either way. */
  nap_ms(100);
  setrlimit(RLIMIT_NOFILE, &old);
  for (int i = 0; i < nfill; i++)
    close(fill[i]);
  close(victim);
  close(pp[0]);
  close(pp[1]);
  fp_result *r = NULL;
  fp_writer a;
  fp_writer_init(&a);
  fp_write_int(&a, 7);
  int rc = fp_pool_apply_async(p, t_work, &a, NULL, &r);
  if (rc == 0)
    rc = fp_result_get(r, 10);
  fp_reader rd;
  int64_t v = 0;
  if (rc == 0 && (fp_result_value(r, &rd) != 0 || fp_read_int(&rd, &v) != 0 ||
                  v != expect_of(7)))
    child_fail("after a lost replacement socket: wrong result %" PRId64, v);
  if (rc != 0)
    child_fail("after a lost replacement socket: %s", fp_err_name(rc));
  fp_result_free(r);
  fp_writer_free(&a);
  fp_pool_terminate(p);
  fp_pool_free(p);
}

static void sc_fds(void) {
  const char *sc = "fds";
  int variant = rnd(3);
  int lim = 10 + rnd(40), workers = 1 + rnd(24);
  g_sh->msg[0] = 0;
  pid_t pid = fork_child();
  if (pid == 0) {
    if (variant < 2)
      fds_new_under_limit(lim, workers);
    else
      fds_lost_replacement();
    _exit(0);
  }
  char what[96];
  if (variant < 2)
    snprintf(what, sizeof(what), "fp_pool_new(%d workers) at RLIMIT_NOFILE %d",
             workers, lim);
  else
    snprintf(what, sizeof(what), "a replacement's socket lost to a full "
                                 "descriptor table");
  child_verdict(pid, sc, what);
}

/* ---- scenario: huge and NaN timeouts -------------------------------------- */

enum { T_POOL, T_CALL, T_GET, T_WAIT, T_ITER, T_WINDOW, T_COUNT };
static const char *const k_target[T_COUNT] = {
    "task_timeout", "call timeout", "fp_result_get", "fp_result_wait",
    "fp_iter_next", "restart_window"};

static void sc_timeouts(void) {
  const char *sc = "timeouts";
  static const double values[] = {1e10, 1e300, INFINITY, DBL_MAX, NAN,
                                  FP_FOREVER, 30.0};
  double v = values[rnd(7)];
  int target = rnd(T_COUNT);
  int is_nan = isnan(v);
  char what[96];
  snprintf(what, sizeof(what), "%s = %g", k_target[target], v);
  fp_writer a;
  fp_writer_init(&a);
  fp_write_int(&a, 5); /* a 5 ms task */

  if (target == T_WINDOW) {
    /* On a library without the guard this forks forever: in a child. */
    g_sh->msg[0] = 0;
    pid_t pid = fork_child();
    if (pid == 0) {
      fp_pool *p = NULL;
      fp_pool_opts o = {0};
      o.processes = 1;
      o.initializer = init_fail;
      o.restart_window = v;
      int rc = fp_pool_new(&p, &o);
      fp_pool_free(p);
      if (is_nan ? rc != FP_EINVAL : rc != FP_ESTORM && rc != FP_EINVAL)
        child_fail("fp_pool_new gave %s", fp_err_name(rc));
      _exit(0);
    }
    child_verdict(pid, sc, what);
    fp_writer_free(&a);
    return;
  }

  fp_pool *p = NULL;
  fp_pool_opts o = {0};
  o.processes = 2;
  if (target == T_POOL)
    o.task_timeout = v < 0 ? 0 : v;
  int rc = fp_pool_new(&p, &o);
  atomic_fetch_add(&g_st.pools, 1);
  if (target == T_POOL && (is_nan || rc == FP_EINVAL)) {
    if (is_nan && rc != FP_EINVAL)
      fail(sc, "%s: fp_pool_new gave %s", what, fp_err_name(rc));
    fp_pool_free(p);
    fp_writer_free(&a);
    return;
  }
  if (rc != 0) {
    fail(sc, "%s: fp_pool_new: %s", what, fp_err_name(rc));
    fp_writer_free(&a);
    return;
  }
  fp_call_opts co = {0};
  if (target == T_CALL)
    co.timeout = v;
  fp_result *r = NULL;
  fp_iter *it = NULL;
  if (target == T_ITER)
    rc = fp_pool_imap(p, t_busy, &a, &co, &it);
  else
    rc = fp_pool_apply_async(p, t_busy, &a, &co, &r);
  if (target == T_CALL && (is_nan || rc == FP_EINVAL)) {
    if (is_nan && rc != FP_EINVAL)
      fail(sc, "%s: apply_async gave %s", what, fp_err_name(rc));
  } else if (rc != 0) {
    fail(sc, "%s: submission: %s", what, fp_err_name(rc));
  } else {
    double t = target == T_GET || target == T_WAIT || target == T_ITER
                   ? v
                   : 30.0;
    int64_t got = -1;
    if (target == T_ITER) {
      fp_reader rd;
      rc = fp_iter_next(it, &rd, t);
      if (rc == 0)
        fp_read_int(&rd, &got);
    } else if (target == T_WAIT) {
      rc = fp_result_wait(r, t);
      if (rc == 0)
        rc = fp_result_get(r, 0);
      got = 5;
    } else {
      rc = fp_result_get(r, t);
      got = 5;
    }
    if (is_nan && target >= T_GET) {
      if (rc != FP_EINVAL)
        fail(sc, "%s: gave %s", what, fp_err_name(rc));
    } else if (!(rc == FP_EINVAL && target >= T_GET) &&
               (rc != 0 || got != 5)) {
      fail(sc, "%s: a 5 ms task gave %s (%s)", what, fp_err_name(rc),
           r ? (fp_result_error(r) ? fp_result_error(r) : "")
             : fp_iter_error(it));
    }
  }
  if (r != NULL) {
    fp_result_get(r, 30);
    fp_result_free(r);
  }
  fp_iter_free(it);
  fp_pool_free(p);
  fp_writer_free(&a);
}

/* ---- scenario: pools from several threads ---------------------------------- */

typedef struct newer {
  pthread_t th;
  int pools;
  uint64_t rnd;
} newer;

static void *newer_main(void *arg) {
  newer *nw = arg;
  for (int i = 0; i < nw->pools; i++) {
    fp_pool *p = NULL;
    fp_pool_opts o = {0};
    o.processes = 1 + (int)(rnd_next(&nw->rnd) % 3);
    int rc = fp_pool_new(&p, &o);
    atomic_fetch_add(&g_st.pools, 1);
    if (rc != 0) {
      fail("threads", "fp_pool_new(%d workers): %s: %s", o.processes,
           fp_err_name(rc), fp_last_error());
      continue;
    }
    int64_t in[100], out[100];
    for (int k = 0; k < 100; k++)
      in[k] = (int64_t)(rnd_next(&nw->rnd) >> 24);
    rc = fp_pool_map(p, e_work, in, 100, 8, out, 8, NULL);
    if (rc != 0)
      fail("threads", "map: %s: %s", fp_err_name(rc), fp_last_error());
    else
      check_out("threads", "map", in, out, 100);
    fp_pool_free(p);
  }
  return NULL;
}

static void sc_threads(void) {
  int n = 2 + rnd(4);
  newer nw[6];
  for (int i = 0; i < n; i++) {
    nw[i].pools = 3 + rnd(10);
    nw[i].rnd = rnd_next(&g_rnd) | 1;
    pthread_create(&nw[i].th, NULL, newer_main, &nw[i]);
  }
  for (int i = 0; i < n; i++)
    pthread_join(nw[i].th, NULL);
}

/* ---- scenario: the user forks while a pool runs ----------------------------- */

static void sc_forks(void) {
  const char *sc = "forks";
  fp_pool *p = new_pool(sc, 2, FP_CRASH_DEFAULT, 0);
  if (p == NULL)
    return;
  pid_t before[2];
  for (int i = 0; i < 2; i++) {
    fp_worker_info wi;
    fp_pool_worker_info(p, i, &wi);
    before[i] = wi.pid;
  }
  size_t n = 2000 + (size_t)rnd(20000);
  int64_t *in = malloc(n * sizeof(*in)), *out = malloc(n * sizeof(*out));
  fill_in(in, n);
  fp_result *r = NULL;
  int rc = fp_pool_map_async(p, e_work, in, n, 8, out, 8, NULL, &r);
  if (rc != 0)
    fail(sc, "map_async: %s", fp_err_name(rc));
  int variant = rnd(4);
  static const char *const names[4] = {"close+join+free", "terminate+free",
                                       "free", "nothing"};
  g_sh->msg[0] = 0;
  pid_t pid = fork_child();
  if (pid == 0) {
    child_step("fp_pool_apply");
    if (fp_pool_apply(p, t_work, NULL, NULL) != FP_EINVAL)
      child_fail("a submission in the child was not refused");
    if (variant == 0) {
      child_step("fp_pool_close");
      fp_pool_close(p);
      child_step("fp_pool_join");
      fp_pool_join(p);
    } else if (variant == 1) {
      child_step("fp_pool_terminate");
      fp_pool_terminate(p);
    }
    child_step("fp_pool_free");
    if (variant < 3)
      fp_pool_free(p);
    _exit(0);
  }
  char what[64];
  snprintf(what, sizeof(what), "child's %s of an inherited pool",
           names[variant]);
  child_verdict(pid, sc, what);
  if (r != NULL) {
    rc = fp_result_get(r, 60);
    g_st.maps++;
    if (rc != 0)
      fail(sc, "the parent's map: %s: %s", fp_err_name(rc),
           fp_result_error(r) ? fp_result_error(r) : "");
    else
      check_out(sc, "the parent's map", in, out, n);
    fp_result_free(r);
  }
  for (int i = 0; i < 2; i++) {
    fp_worker_info wi;
    fp_pool_worker_info(p, i, &wi);
    if (wi.pid != before[i])
      fail(sc, "after the child's %s: worker %d changed (%d -> %d)",
           names[variant], i, (int)before[i], (int)wi.pid);
  }
  map_checked(p, sc, 500, 0);
  fp_pool_free(p);
  free(in);
  free(out);
}

/* ---- scenario: cancellations ------------------------------------------------ */

static void sc_cancels(void) {
  const char *sc = "cancels";
  fp_pool *p = new_pool(sc, 2 + rnd(2), FP_CRASH_DEFAULT, 0);
  if (p == NULL)
    return;
  int what = rnd(4);
  if (what == 3) {
    /* A running map_async whose result is freed: the caller reuses its
     * memory at once. */
    size_t n = 5000 + (size_t)rnd(50000);
    int64_t *in = malloc(n * sizeof(*in)), *out = malloc(n * sizeof(*out));
    fill_in(in, n);
    fp_call_opts co = {0};
    co.chunksize = 1 + (size_t)rnd(100);
    fp_result *r;
    atomic_store(&g_sh->poison_seen, 0);
    int rc = fp_pool_map_async(p, e_work, in, n, 8, out, 8, &co, &r);
    if (rc == 0) {
      nap_ms(rnd(20));
      fp_result_free(r);
      for (size_t i = 0; i < n; i++)
        in[i] = out[i] = POISON;
      g_st.canceled++;
    } else {
      fail(sc, "map_async: %s", fp_err_name(rc));
    }
    map_checked(p, sc, 300, 0);
    fp_pool_close(p); /* join: whatever was still queued has run */
    fp_pool_join(p);
    fp_pool_free(p);
    size_t touched = 0;
    for (size_t i = 0; i < n; i++)
      touched += out[i] != POISON;
    if (atomic_load(&g_sh->poison_seen) != 0 || touched != 0)
      fail(sc, "after fp_result_free of a running map_async: %ld items "
               "read the reused `in`, %zu outputs written",
           atomic_load(&g_sh->poison_seen), touched);
    free(in);
    free(out);
    return;
  }
  if (what == 0) {
    /* A held apply: canceled while it runs. */
    fp_result *r;
    int rc = fp_pool_apply_async(p, t_hold, NULL, NULL, &r);
    if (rc == 0) {
      nap_ms(rnd(20));
      rc = fp_result_cancel(r);
      int got = fp_result_get(r, 30);
      if (rc != 0 || got != FP_ECANCELED)
        fail(sc, "cancel of a running apply: cancel %s, get %s",
             fp_err_name(rc), fp_err_name(got));
      g_st.canceled++;
      fp_result_free(r);
    } else {
      fail(sc, "apply_async: %s", fp_err_name(rc));
    }
  } else if (what == 1) {
    /* A map canceled at a random point: canceled, or done and exact. */
    size_t n = 5000 + (size_t)rnd(50000);
    int64_t *in = malloc(n * sizeof(*in)), *out = malloc(n * sizeof(*out));
    fill_in(in, n);
    fp_call_opts co = {0};
    co.chunksize = 1 + (size_t)rnd(100);
    fp_result *r;
    int rc = fp_pool_map_async(p, e_work, in, n, 8, out, 8, &co, &r);
    if (rc == 0) {
      nap_ms(rnd(30));
      int crc = fp_result_cancel(r);
      int got = fp_result_get(r, 60);
      g_st.maps++;
      if (crc == 0 && got != FP_ECANCELED)
        fail(sc, "map canceled, then get gave %s", fp_err_name(got));
      else if (crc != 0 && (crc != FP_EINVAL || got != 0))
        fail(sc, "map cancel %s, get %s", fp_err_name(crc), fp_err_name(got));
      else if (crc != 0)
        check_out(sc, "map finished before its cancel", in, out, n);
      g_st.canceled += crc == 0;
      fp_result_free(r);
    } else {
      fail(sc, "map_async: %s", fp_err_name(rc));
    }
    free(in);
    free(out);
  } else {
    /* An iterator read part-way, then freed. */
    int n = 50 + rnd(500), k = rnd(n);
    int64_t *in = malloc((size_t)n * sizeof(*in));
    fill_in(in, (size_t)n);
    fp_writer items;
    fp_writer_init(&items);
    for (int i = 0; i < n; i++)
      fp_write_int(&items, in[i]);
    fp_iter *it;
    int rc = rnd(2) ? fp_pool_imap(p, t_work, &items, NULL, &it)
                    : fp_pool_imap_unordered(p, t_work, &items, NULL, &it);
    if (rc == 0) {
      for (int i = 0; i < k; i++) {
        fp_reader rd;
        int64_t v = 0;
        rc = fp_iter_next(it, &rd, 30);
        int64_t idx = fp_iter_index(it);
        if (rc != 0 || fp_read_int(&rd, &v) != 0 || idx < 0 || idx >= n ||
            v != expect_of(in[idx])) {
          fail(sc, "imap item %d: %s", i, fp_err_name(rc));
          break;
        }
        atomic_fetch_add(&g_st.items, 1);
      }
      fp_iter_free(it);
      g_st.canceled++;
    } else {
      fail(sc, "imap: %s", fp_err_name(rc));
    }
    fp_writer_free(&items);
    free(in);
  }
  map_checked(p, sc, 300, 0); /* the pool serves on */
  fp_pool_free(p);
}

/* ---- watchdog and main ---------------------------------------------------- */

static pthread_mutex_t g_wd_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wd_cond;
static int g_wd_stop;
static _Atomic int64_t g_iter_start_ms;
/* ---- scenario: uneven costs -------------------------------------------------
 */

/* Checks call i's outcome and its count of runs (see the file header). */
static void uneven_check(const char *sc, fp_result *r, int i, int killed) {
  int rc = fp_result_get(r, 60);
  int runs = atomic_load(&g_sh->runs[i]);
  fp_reader rd;
  int64_t v = 0;
  if (rc == 0 && (fp_result_value(r, &rd) != 0 || fp_read_int(&rd, &v) != 0 ||
                  v != expect_of(i)))
    fail(sc, "call %d: wrong value", i);
  else if (rc == 0 && runs != 1)
    fail(sc, "call %d succeeded and ran %d times", i, runs);
  else if (rc != 0 && !(killed && rc == FP_EWORKER))
    fail(sc, "call %d: %s: %s", i, fp_err_name(rc), fp_result_error(r));
  else if (runs > 1)
    fail(sc, "call %d failed and ran %d times", i, runs);
}

static void sc_uneven(void) {
  const char *sc = "uneven";
  int n = 2 + rnd(3), calls = 50 + rnd(UNEVEN_MAX - 50);
  int killing = rnd(2);
  fp_pool *p = new_pool(sc, n, FP_CRASH_FAIL, 0);
  if (p == NULL)
    return;
  for (int i = 0; i < calls; i++)
    atomic_store(&g_sh->runs[i], 0);
  killer k = {p, fork_server_of(p), 1 + rnd(4), rnd_next(&g_rnd), 0};
  pthread_t th;
  if (killing)
    pthread_create(&th, NULL, killer_main, &k);
  fp_result *r[UNEVEN_MAX];
  fp_writer a;
  fp_writer_init(&a);
  for (int i = 0; i < calls; i++) {
    fp_writer_reset(&a);
    fp_pack(&a, "ii", (int64_t)i, (int64_t)(rnd(10) == 0 ? 5 + rnd(40) : 0));
    if (fp_pool_apply_async(p, t_uneven, &a, NULL, &r[i]) != 0) {
      fail(sc, "apply_async %d: %s", i, fp_last_error());
      calls = i;
    }
  }
  fp_writer_free(&a);
  /* Every placeholder answered or its worker gone: no run can follow. */
  if (fp_pool_close(p) != 0 || fp_pool_join(p) != 0)
    fail(sc, "close/join: %s", fp_last_error());
  if (killing) {
    atomic_store(&k.stop, 1);
    pthread_join(th, NULL);
  }
  for (int i = 0; i < calls; i++) {
    uneven_check(sc, r[i], i, killing);
    fp_result_free(r[i]);
  }
  fp_pool_free(p);
}

static _Atomic int g_iter_scenario = -1;

static void *watchdog_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&g_wd_mu);
  while (!g_wd_stop) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += 1;
    pthread_cond_timedwait(&g_wd_cond, &g_wd_mu, &ts);
    int64_t start = atomic_load(&g_iter_start_ms);
    if (!g_wd_stop && start > 0 &&
        (int64_t)(now_s() * 1000) - start > (int64_t)HANG_S * 1000) {
      char extra[128];
      int sc = atomic_load(&g_iter_scenario);
      snprintf(extra, sizeof(extra), "HANG: scenario %s ran over %ds",
               sc >= 0 ? k_scenario[sc] : "?", HANG_S);
      atomic_fetch_add(&g_st.failures, 1);
      summary("FAIL", extra);
      _exit(2);
    }
  }
  pthread_mutex_unlock(&g_wd_mu);
  return NULL;
}

int main(int argc, char **argv) {
  double seconds = 120;
  const char *env = getenv("STRESS_SECONDS");
  if (argc > 1)
    seconds = atof(argv[1]);
  else if (env != NULL && env[0])
    seconds = atof(env);
  if (!(seconds > 0))
    seconds = 120;
  env = getenv("STRESS_SEED");
  g_seed = env != NULL && env[0] ? (unsigned)strtoul(env, NULL, 0)
                                 : (unsigned)time(NULL) ^ (unsigned)getpid();
  g_rnd = ((uint64_t)g_seed << 1) | 1;
  g_t0 = now_s();
  setvbuf(stdout, NULL, _IOLBF, 0);

  g_sh = mmap(NULL, sizeof(*g_sh), PROT_READ | PROT_WRITE,
              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g_sh == MAP_FAILED) {
    perror("stress: mmap");
    return 1;
  }
  /* The baseline: after one pool, libuv keeps process-wide descriptors. */
  fp_pool *warm = new_pool("warm-up", 1, FP_CRASH_DEFAULT, 0);
  fp_pool_free(warm);
  int fds0 = count_fds();

  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&g_wd_cond, &ca);
  pthread_condattr_destroy(&ca);
  pthread_t wd;
  pthread_create(&wd, NULL, watchdog_main, NULL);

  int enabled[SC_COUNT], nenabled = 0;
  env = getenv("STRESS_SCENARIOS");
  for (int i = 0; i < SC_COUNT; i++) {
    if (env != NULL && env[0])
      enabled[i] = strstr(env, k_scenario[i]) != NULL;
    else /* see the file header */
      enabled[i] = !(STRESS_ASAN && (i == SC_THREADS || i == SC_FORKS));
    nenabled += enabled[i];
  }
  if (STRESS_ASAN && (env == NULL || env[0] == 0))
    printf("stress: AddressSanitizer build: scenarios threads and forks "
           "left out (its allocator is not fork-safe)\n");
  if (nenabled == 0) {
    fprintf(stderr, "stress: STRESS_SCENARIOS names none of kills, fds, "
                    "timeouts, threads, forks, cancels, uneven\n");
    return 2;
  }
  printf("stress: running for %.0fs, seed %u\n", seconds, g_seed);
  int fds_reported = 0;
  while (now_s() - g_t0 < seconds) {
    int sc = rnd(SC_COUNT);
    while (!enabled[sc])
      sc = (sc + 1) % SC_COUNT;
    atomic_store(&g_iter_scenario, sc);
    atomic_store(&g_iter_start_ms, (int64_t)(now_s() * 1000));
    switch (sc) {
    case SC_KILLS:
      sc_kills();
      break;
    case SC_FDS:
      sc_fds();
      break;
    case SC_TIMEOUTS:
      sc_timeouts();
      break;
    case SC_THREADS:
      sc_threads();
      break;
    case SC_FORKS:
      sc_forks();
      break;
    case SC_CANCELS:
      sc_cancels();
      break;
    case SC_UNEVEN:
      sc_uneven();
      break;
    }
    g_st.runs[sc]++;
    g_st.iterations++;
    check_no_children(k_scenario[sc]);
    if (!fds_reported && count_fds() != fds0) {
      fail(k_scenario[sc], "%d descriptors open, %d before the first "
                           "iteration",
           count_fds(), fds0);
      fds_reported = 1;
    }
  }
  atomic_store(&g_iter_start_ms, 0);

  pthread_mutex_lock(&g_wd_mu);
  g_wd_stop = 1;
  pthread_cond_broadcast(&g_wd_cond);
  pthread_mutex_unlock(&g_wd_mu);
  pthread_join(wd, NULL);

  int st;
  errno = 0;
  if (!(waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD))
    fail("end", "a child process is left");
  int tasks = count_dir("/proc/self/task");
  if (tasks != 1)
    fail("end", "%d threads left in /proc/self/task (want 1)", tasks);
  if (count_fds() != fds0)
    fail("end", "%d descriptors open, %d at the start", count_fds(), fds0);
#if STRESS_ASAN
  /* Leaks count as failures of this run, not only of the exit status. */
  if (__lsan_do_recoverable_leak_check() != 0)
    fail("end", "LeakSanitizer found leaks (report above)");
#endif
  int ok = atomic_load(&g_st.failures) == 0;
  summary(ok ? "PASS" : "FAIL", "");
  munmap(g_sh, sizeof(*g_sh));
#if STRESS_ASAN
  _exit(ok ? 0 : 1); /* the leak check above was the last word */
#endif
  return ok ? 0 : 1;
}
