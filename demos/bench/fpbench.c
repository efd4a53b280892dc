/* SPDX-License-Identifier: MIT */
/* fpbench.c - forkpool's side of the benchmarks.
 *
 * Each subcommand measures one group once and prints metric lines (format
 * in benchutil.h); demos/bench/run.sh interleaves runs of this program with
 * the Python side (py_bench.py) and the raw baselines (rawbench.c), and
 * report.py turns medians into the tables and plots of docs/benchmarks.md.
 *
 *   startstop  fp_pool_new(2 workers) + close + join + free      ms
 *   apply      fp_pool_apply round trip, one at a time           us
 *   async      fp_pool_apply_async x N, then get and free all    tasks/s
 *   map        fp_pool_map, identity over int64, default chunks  items/s
 *   starmap    fp_pool_starmap over "[ i i ]" tuples, and the
 *              fixed-size form (struct array + fp_pool_map)      items/s
 *   imap       fp_pool_imap, chunksize 1                         items/s
 *   payload    fp_pool_map_values of bytes values, chunksize 1,
 *              identity; both directions counted                 MiB/s
 *   chunks     per-item cost of a fixed map vs chunksize         ns/item
 *   manager    shared dict / list / counter / lock, from 1 and from 2
 *              processes                                         ops/s
 *   churn      dict inserts and deletes of random-size values: the
 *              arena's footprint over the live data              x
 *   fault      worker death to failed result; throughput while a
 *              worker is SIGKILLed every 100 ms vs undisturbed
 *   scale K W  CPU kernel K (kernels.h) on 1..W workers          s
 *   pin        a CPU-bound map with pin none / compact / scatter s
 *   idle       CPU time of the master and its workers while a warmed-up
 *              pool of 2 sits idle for 2 s, in % of one CPU          %
 *   rss        master peak RSS of fp_pool_map and of a producer-fed
 *              fp_pool_imap_producer as n grows, each in a fresh
 *              child process                                     MiB
 *   mpi        under `mpirun -n 3`: apply, async and map over an
 *              FP_TRANSPORT_MPI pool, and the bytes the master routes
 *
 * Item counts match py_bench.py's sizes(). Every timed section runs on a
 * pool whose workers are started and warmed up by a small job first, and
 * every result is checked after the clock stops: a wrong or failed result
 * ends the program with an error instead of a figure.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "forkpool.h"

#include "benchutil.h"
#include "kernels.h"

static int quick;

/* Item counts, the same as py_bench.py's sizes(). */
typedef struct sizes_t {
  int startstop;
  long apply, async, map, starmap, imap, mgr, mgr_lock, shm_lock;
  long chunks_items;
} sizes_t;

static sizes_t sizes(void) {
  if (quick)
    return (sizes_t){5,    1000, 10000, 200000, 100000,
                     5000, 3000, 1000,  50000,  16384};
  return (sizes_t){20,    5000,  50000, 2000000, 1000000,
                   50000, 20000, 5000,  200000,  65536};
}

#define MIB (1 << 20)

/* Dies with the call's name, the code's name and fp_last_error(). */
static void check(int rc, const char *what) {
  if (rc < 0)
    die("%s: %s (%s) %s", what, fp_err_name(rc), fp_strerror(rc),
        fp_last_error());
}

/* --- tasks ---------------------------------------------------------------- */

/* The identity task over codec values: the result is the one argument. */
static int ident_task(fp_reader *args, fp_writer *out) {
  return fp_copy_value(out, args);
}

/* starmap's add(a, b). */
static int add_task(fp_reader *args, fp_writer *out) {
  int64_t a, b;
  int rc = fp_unpack(args, "i i", &a, &b);
  if (rc < 0)
    return rc;
  return fp_write_int(out, a + b);
}

/* The identity over one int64. */
static int ident_elem(const void *in, void *out) {
  memcpy(out, in, sizeof(int64_t));
  return 0;
}

typedef struct pair_t {
  int64_t a, b;
} pair_t;

static int add_elem(const void *in, void *out) {
  const pair_t *p = in;
  int64_t s = p->a + p->b;
  memcpy(out, &s, sizeof s);
  return 0;
}

/* The kernel scale/pin/fault run; set before fp_pool_new so that workers,
 * forked afterwards, inherit it. */
static int64_t (*cur_kernel)(int64_t);

static int kernel_elem(const void *in, void *out) {
  int64_t t, r;
  memcpy(&t, in, sizeof t);
  r = cur_kernel(t);
  memcpy(out, &r, sizeof r);
  return 0;
}

/* --- helpers -------------------------------------------------------------- */

/* Maps n int64 0..n-1 through the pool (warm-up and sanity check). */
static void warm(fp_pool *p) {
  int64_t in[1000], out[1000];
  for (int i = 0; i < 1000; i++)
    in[i] = i;
  check(fp_pool_map(p, ident_elem, in, 1000, 8, out, 8, NULL), "warm-up map");
  if (out[999] != 999)
    die("warm-up map: wrong result");
}

/* A started and warmed-up pool of w workers. */
static fp_pool *mkpool_opts(fp_pool_opts *o) {
  fp_pool *p;
  check(fp_pool_new(&p, o), "fp_pool_new");
  warm(p);
  return p;
}

static fp_pool *mkpool(int w) {
  fp_pool_opts o = {0};
  o.processes = w;
  return mkpool_opts(&o);
}

/* Reads count int64 values from a writer's bytes and returns their sum. */
static int64_t sum_ints(const fp_writer *w, long count) {
  fp_reader r;
  int64_t v, s = 0;
  fp_reader_init(&r, w->data, w->len);
  for (long i = 0; i < count; i++) {
    check(fp_read_int(&r, &v), "read result");
    s += v;
  }
  if (!fp_reader_at_end(&r))
    die("more results than items");
  return s;
}

/* --- groups --------------------------------------------------------------- */

static void g_startstop(sizes_t n) {
  fp_pool_opts o = {0};
  o.processes = 2;
  double t0 = now_s();
  for (int r = 0; r < n.startstop; r++) {
    fp_pool *p;
    check(fp_pool_new(&p, &o), "fp_pool_new");
    check(fp_pool_close(p), "fp_pool_close");
    check(fp_pool_join(p), "fp_pool_join");
    fp_pool_free(p);
  }
  emit("start_stop", "forkpool", (now_s() - t0) / n.startstop * 1e3, "ms");
}

/* Times n.apply round trips on p; side names the pool in the output. */
static void apply_on(fp_pool *p, sizes_t n, const char *side) {
  fp_writer args, out;
  fp_writer_init(&args);
  fp_writer_init(&out);
  double t0 = now_s();
  for (long i = 0; i < n.apply; i++) {
    fp_writer_reset(&args);
    fp_writer_reset(&out);
    fp_write_int(&args, i);
    check(fp_pool_apply(p, ident_task, &args, &out), "fp_pool_apply");
    int64_t v;
    fp_reader r;
    fp_reader_init(&r, out.data, out.len);
    if (fp_read_int(&r, &v) != 0 || v != i)
      die("apply: wrong result");
  }
  emit("apply_rtt", side, (now_s() - t0) / n.apply * 1e6, "us");
  fp_writer_free(&args);
  fp_writer_free(&out);
}

static void g_apply(sizes_t n) {
  fp_pool *p = mkpool(2);
  apply_on(p, n, "forkpool");
  fp_pool_free(p);
}

/* Times n.async apply_async calls on p, then their gets. */
static void async_on(fp_pool *p, sizes_t n, const char *side) {
  fp_result **rs = calloc((size_t)n.async, sizeof *rs);
  fp_writer args;
  fp_writer_init(&args);
  int64_t sum = 0;
  double t0 = now_s();
  for (long i = 0; i < n.async; i++) {
    fp_writer_reset(&args);
    fp_write_int(&args, i);
    check(fp_pool_apply_async(p, ident_task, &args, NULL, &rs[i]),
          "fp_pool_apply_async");
  }
  for (long i = 0; i < n.async; i++) {
    fp_reader r;
    int64_t v;
    check(fp_result_get(rs[i], FP_FOREVER), "fp_result_get");
    check(fp_result_value(rs[i], &r), "fp_result_value");
    check(fp_read_int(&r, &v), "read result");
    sum += v;
    fp_result_free(rs[i]);
  }
  double dt = now_s() - t0;
  if (sum != (int64_t)n.async * (n.async - 1) / 2)
    die("apply_async: wrong sum");
  emit("apply_async", side, (double)n.async / dt, "tasks/s");
  fp_writer_free(&args);
  free(rs);
}

static void g_async(sizes_t n) {
  fp_pool *p = mkpool(2);
  async_on(p, n, "forkpool");
  fp_pool_free(p);
}

/* Times one identity map of n.map int64 on p: a cold call, as the issue
 * names the row. `out` is fresh memory, never touched before the clock
 * (as Python's result list is new): its first-touch faults are part of
 * the call, which faults it in while the workers run (calls.c). A memset
 * here would not have warmed it anyway: GCC turns malloc + memset(0)
 * into calloc, which leaves fresh pages untouched. */
static void map_on(fp_pool *p, sizes_t n, const char *side) {
  int64_t *in = malloc((size_t)n.map * 8), *out = malloc((size_t)n.map * 8);
  if (in == NULL || out == NULL)
    die("map: out of memory");
  for (long i = 0; i < n.map; i++)
    in[i] = i;
  double t0 = now_s();
  check(fp_pool_map(p, ident_elem, in, (size_t)n.map, 8, out, 8, NULL),
        "fp_pool_map");
  double dt = now_s() - t0;
  for (long i = 0; i < n.map; i++)
    if (out[i] != i)
      die("map: wrong result at %ld", i);
  emit("map_int", side, (double)n.map / dt, "items/s");
  free(in);
  free(out);
}

static void g_map(sizes_t n) {
  fp_pool *p = mkpool(2);
  map_on(p, n, "forkpool");
  fp_pool_free(p);
}

static void g_starmap(sizes_t n) {
  fp_pool *p = mkpool(2);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  for (long i = 0; i < n.starmap; i++)
    fp_pack(&items, "[ i i ]", (int64_t)i, (int64_t)i);
  check(fp_writer_error(&items), "pack items");
  double t0 = now_s();
  check(fp_pool_starmap(p, add_task, &items, &out, NULL), "fp_pool_starmap");
  double dt = now_s() - t0;
  if (sum_ints(&out, n.starmap) != (int64_t)n.starmap * (n.starmap - 1))
    die("starmap: wrong sum");
  emit("starmap", "forkpool", (double)n.starmap / dt, "items/s");
  fp_writer_free(&items);
  fp_writer_free(&out);

  pair_t *pin = malloc((size_t)n.starmap * sizeof *pin);
  int64_t *pout = malloc((size_t)n.starmap * 8);
  for (long i = 0; i < n.starmap; i++)
    pin[i] = (pair_t){i, i};
  t0 = now_s();
  check(fp_pool_map(p, add_elem, pin, (size_t)n.starmap, sizeof *pin, pout, 8,
                    NULL),
        "fp_pool_map (pairs)");
  dt = now_s() - t0;
  for (long i = 0; i < n.starmap; i++)
    if (pout[i] != 2 * i)
      die("starmap (struct): wrong result at %ld", i);
  emit("starmap_struct", "forkpool", (double)n.starmap / dt, "items/s");
  free(pin);
  free(pout);
  fp_pool_free(p);
}

static void g_imap(sizes_t n) {
  fp_pool *p = mkpool(2);
  fp_writer items;
  fp_writer_init(&items);
  for (long i = 0; i < n.imap; i++)
    fp_write_int(&items, i);
  fp_call_opts co = {0};
  co.chunksize = 1;
  fp_iter *it;
  int64_t sum = 0, v;
  long got = 0;
  double t0 = now_s();
  check(fp_pool_imap(p, ident_task, &items, &co, &it), "fp_pool_imap");
  for (;;) {
    fp_reader r;
    int rc = fp_iter_next(it, &r, FP_FOREVER);
    if (rc == FP_EOF)
      break;
    check(rc, "fp_iter_next");
    check(fp_read_int(&r, &v), "read item");
    sum += v;
    got++;
  }
  double dt = now_s() - t0;
  fp_iter_free(it);
  if (got != n.imap || sum != (int64_t)n.imap * (n.imap - 1) / 2)
    die("imap: wrong result");
  emit("imap1", "forkpool", (double)n.imap / dt, "items/s");
  fp_writer_free(&items);
  fp_pool_free(p);
}

/* (size, count) pairs, the same as py_bench.py's payload_sizes(). */
static int payload_plan(size_t *sz, long *cnt) {
  static const size_t full[] = {8,      64,      512,     4096,    32768,
                                262144, 1 << 20, 4 << 20, 16 << 20};
  static const size_t qk[] = {8, 4096, 1 << 20, 16 << 20};
  const size_t *s = quick ? qk : full;
  int m = quick ? 4 : 9;
  for (int i = 0; i < m; i++) {
    long lo = quick ? 4 : 8, hi = quick ? 500 : 4000;
    long c = (long)((size_t)(quick ? 16 : 128) * MIB / s[i]);
    sz[i] = s[i];
    cnt[i] = c < lo ? lo : c > hi ? hi : c;
  }
  return m;
}

/* Maps cnt bytes values of size bytes each through p (identity,
 * chunksize 1) and emits metric `name`.<size>: bytes moved per second,
 * both directions counted. */
static void payload_on(fp_pool *p, size_t size, long cnt, const char *name,
                       const char *side) {
  fp_call_opts co = {0};
  co.chunksize = 1;
  char *blob = malloc(size);
  for (size_t j = 0; j < size; j++)
    blob[j] = (char)(j * 131 + 7);
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  for (long k = 0; k < cnt; k++)
    fp_write_bytes(&items, blob, size);
  check(fp_writer_error(&items), "build payload items");
  double t0 = now_s();
  check(fp_pool_map_values(p, ident_task, &items, &out, &co),
        "fp_pool_map_values");
  double dt = now_s() - t0;
  if (out.len != items.len || memcmp(out.data, items.data, out.len) != 0)
    die("payload %zu: results differ from the input", size);
  char metric[64];
  snprintf(metric, sizeof metric, "%s.%zu", name, size);
  emit(metric, side, 2.0 * (double)size * (double)cnt / dt / MIB, "MiB/s");
  fp_writer_free(&items);
  fp_writer_free(&out);
  free(blob);
}

static void g_payload(sizes_t n) {
  size_t sz[16];
  long cnt[16];
  int m = payload_plan(sz, cnt);
  fp_pool *p = mkpool(2);
  for (int i = 0; i < m; i++)
    payload_on(p, sz[i], cnt[i], "payload", "forkpool");
  (void)n;
  fp_pool_free(p);
}

static void g_chunks(sizes_t n) {
  static const size_t cs[] = {1, 4, 16, 64, 256, 1024, 4096, 16384, 65536};
  long maxn = 1L << 21;
  int64_t *in = malloc((size_t)maxn * 8), *out = malloc((size_t)maxn * 8);
  if (in == NULL || out == NULL)
    die("chunks: out of memory");
  /* Both arrays written before any clock: the rows compare chunk sizes,
   * and an output left fresh would charge first-touch faults to the
   * larger sizes only (those that first reach its later pages). */
  for (long i = 0; i < maxn; i++) {
    in[i] = i;
    out[i] = -1;
  }
  fp_pool *p = mkpool(2);
  for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
    long items = (long)cs[c] * 64;
    items = items > maxn ? maxn : items;
    items = items < n.chunks_items ? n.chunks_items : items;
    fp_call_opts co = {0};
    co.chunksize = cs[c];
    double t0 = now_s();
    check(fp_pool_map(p, ident_elem, in, (size_t)items, 8, out, 8, &co),
          "fp_pool_map");
    double dt = now_s() - t0;
    if (out[items - 1] != items - 1)
      die("chunks: wrong result");
    char metric[64];
    snprintf(metric, sizeof metric, "chunk.%zu", cs[c]);
    emit(metric, "forkpool", dt / (double)items * 1e9, "ns/item");
  }
  fp_pool_free(p);
  free(in);
  free(out);
}

/* --- manager -------------------------------------------------------------- */

static fp_dict *g_dict;  /* the target of the timed dict groups */
static fp_list *g_list;  /* the target of the timed list groups */
static fp_counter *g_counter;
static fp_lock *g_lock;
static int64_t *g_locked_value;

/* Keys "key0", "key1", ... made before any clock starts, as py_bench.py
 * does: the timed loops measure the manager, not the formatting. */
static char (*g_keys)[16];
static size_t *g_klen;

static void make_keys(long k) {
  g_keys = malloc((size_t)k * sizeof *g_keys);
  g_klen = malloc((size_t)k * sizeof *g_klen);
  if (g_keys == NULL || g_klen == NULL)
    die("out of memory");
  for (long i = 0; i < k; i++)
    g_klen[i] = (size_t)snprintf(g_keys[i], sizeof g_keys[i], "key%ld", i);
}

/* Forks n processes that each run fn(which, iters), started together;
 * returns the seconds from the start until all of them exited. Nobody
 * spins while waiting to start: each child reports on `ready` and sleeps
 * in a read of `go`, the parent sleeps until all are ready, then closes
 * `go`. With spinning children and a spinning parent (three busy threads
 * on two CPUs), two children often began on one CPU and stayed there
 * (both cache-hot, so the balancer moved neither): the 2-process rows
 * swung between 0.7x and 1.5x of one process from run to run. Woken from
 * sleep, they are placed on idle CPUs. */
static double run_procs(int n, void (*fn)(int, long), long iters) {
  pid_t pid[2];
  int ready[2], go[2];
  char c;
  if (n < 1 || n > 2 || pipe(ready) != 0 || pipe(go) != 0)
    die("run_procs: %s", strerror(errno));
  for (int i = 0; i < n; i++) {
    pid[i] = fork();
    if (pid[i] < 0)
      die("fork: %s", strerror(errno));
    if (pid[i] == 0) {
      close(go[1]);
      if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 0)
        _exit(1);
      fn(i, iters);
      _exit(0);
    }
  }
  close(go[0]);
  for (int i = 0; i < n; i++)
    if (read(ready[0], &c, 1) != 1)
      die("a manager test process did not start");
  double t0 = now_s();
  close(go[1]); /* EOF: go */
  for (int i = 0; i < n; i++) {
    int st;
    if (waitpid(pid[i], &st, 0) != pid[i] || !WIFEXITED(st) ||
        WEXITSTATUS(st) != 0)
      die("a manager test process failed");
  }
  close(ready[0]);
  close(ready[1]);
  return now_s() - t0;
}

static double two_procs(void (*fn)(int, long), long iters) {
  return run_procs(2, fn, iters);
}

/* Like two_procs() with a single process doing all the work. */
static double one_proc(void (*fn)(int, long), long iters) {
  return run_procs(1, fn, iters);
}

/* Process `which` of the timed groups works on keys [which * iters,
 * (which + 1) * iters): the halves of two processes never share a key. */
static void op_dict_insert(int which, long iters) {
  for (long i = which * iters; i < (which + 1) * iters; i++)
    if (fp_dict_set_int(g_dict, g_keys[i], g_klen[i], i) != 0)
      _exit(1);
}

/* Gets of the process's keys, GET_PASSES times over: the timed runs last
 * long enough (~0.1 s) for a scheduling hiccup not to decide the ratio. */
#define GET_PASSES 4

static void op_dict_get(int which, long iters) {
  int64_t v;
  for (int pass = 0; pass < GET_PASSES; pass++)
    for (long i = which * iters; i < (which + 1) * iters; i++)
      if (fp_dict_get_int(g_dict, g_keys[i], g_klen[i], &v) != 0 || v != i)
        _exit(1);
}

/* Updates of existing keys, each of two processes its own 1024 keys: no
 * allocation, no key shared between the processes. The one process of
 * the baseline cycles over both sets, so that it does the same work: the
 * later-inserted half of a linear-probing table takes longer probes, and
 * a baseline over the first half alone would be faster than half of the
 * pair's work. */
#define UPD_KEYS 1024
static int g_upd_span = UPD_KEYS; /* keys one process cycles over */

static void op_dict_update(int which, long iters) {
  long base = which * UPD_KEYS;
  for (long i = 0; i < iters; i++) {
    long j = base + i % g_upd_span;
    if (fp_dict_add_int(g_dict, g_keys[j], g_klen[j], 1, NULL) != 0)
      _exit(1);
  }
}

/* Encodes i as an INT value (tag, 8 bytes little-endian) into v[9], as
 * fp_write_int would: each append stores its own number. */
static void put_int_value(unsigned char v[9], long i) {
  v[0] = FP_INT;
  for (int b = 0; b < 8; b++)
    v[1 + b] = (unsigned char)((uint64_t)i >> (8 * b));
}

static void op_list_append(int which, long iters) {
  unsigned char v[9] = {FP_INT};
  for (long i = 0; i < iters; i++) {
    put_int_value(v, i);
    if (fp_list_append(g_list, v, sizeof v) != 0)
      _exit(1);
  }
}

static void op_counter(int which, long iters) {
  for (long i = 0; i < iters; i++)
    if (fp_counter_add(g_counter, 1, NULL) != 0)
      _exit(1);
}

static void op_locked(int which, long iters) {
  for (long i = 0; i < iters; i++) {
    if (fp_lock_acquire(g_lock, FP_FOREVER) != 0)
      _exit(1);
    (*g_locked_value)++;
    if (fp_lock_release(g_lock) != 0)
      _exit(1);
  }
}

/* The master's own set and get (compared with Python's Manager), then the
 * same work by one forked process vs two (the scaling rows: "baseline" is
 * one process doing all of it, "forkpool" two processes doing half each,
 * on different keys). */
static void mgr_dict_groups(fp_manager *m, long k) {
  fp_dict *d;
  int64_t s = 0, v;

  check(fp_dict_new(m, &d), "fp_dict_new");
  double t0 = now_s();
  for (long i = 0; i < k; i++)
    check(fp_dict_set_int(d, g_keys[i], g_klen[i], i), "fp_dict_set_int");
  emit("mgr_dict_set", "forkpool", (double)k / (now_s() - t0), "ops/s");
  t0 = now_s();
  for (long i = 0; i < k; i++) {
    check(fp_dict_get_int(d, g_keys[i], g_klen[i], &v), "fp_dict_get_int");
    s += v;
  }
  emit("mgr_dict_get", "forkpool", (double)k / (now_s() - t0), "ops/s");
  if (s != (int64_t)k * (k - 1) / 2)
    die("dict: wrong sum");

  g_dict = d;
  emit("mgr_dict_get_2w", "baseline",
       (double)GET_PASSES * (double)k / one_proc(op_dict_get, k), "ops/s");
  emit("mgr_dict_get_2w", "forkpool",
       (double)GET_PASSES * (double)(2 * (k / 2)) /
           two_procs(op_dict_get, k / 2),
       "ops/s");

  /* The same inserts once untimed: both timed runs then reuse arena pages
   * the kernel has already handed out, so neither pays for first-touch
   * page faults (which measure the kernel, not the dict). */
  check(fp_dict_new(m, &g_dict), "fp_dict_new");
  one_proc(op_dict_insert, k);
  check(fp_dict_destroy(g_dict), "fp_dict_destroy");
  check(fp_dict_new(m, &g_dict), "fp_dict_new");
  emit("mgr_dict_set_2w", "baseline",
       (double)k / one_proc(op_dict_insert, k), "ops/s");
  check(fp_dict_destroy(g_dict), "fp_dict_destroy");
  check(fp_dict_new(m, &g_dict), "fp_dict_new");
  double dt = two_procs(op_dict_insert, k / 2);
  if (fp_dict_len(g_dict) != 2 * (k / 2))
    die("dict from 2 processes: wrong size");
  emit("mgr_dict_set_2w", "forkpool", (double)(2 * (k / 2)) / dt, "ops/s");
  check(fp_dict_destroy(g_dict), "fp_dict_destroy");

  /* Updates of existing keys: does the dict scale? 8x the count, as they
   * are fast (the run should last ~0.2 s). */
  long ku = 8 * k;
  check(fp_dict_new(m, &g_dict), "fp_dict_new");
  for (long i = 0; i < 2 * UPD_KEYS; i++)
    check(fp_dict_set_int(g_dict, g_keys[i], g_klen[i], 0), "fp_dict_set");
  g_upd_span = 2 * UPD_KEYS;
  emit("mgr_dict_upd_2w", "baseline",
       (double)ku / one_proc(op_dict_update, ku), "ops/s");
  g_upd_span = UPD_KEYS;
  dt = two_procs(op_dict_update, ku / 2);
  emit("mgr_dict_upd_2w", "forkpool", (double)(2 * (ku / 2)) / dt, "ops/s");
  check(fp_dict_destroy(g_dict), "fp_dict_destroy");
  check(fp_dict_destroy(d), "fp_dict_destroy");
}

static void mgr_list_groups(fp_manager *m, long k) {
  fp_list *l;
  unsigned char v[9] = {FP_INT};

  check(fp_list_new(m, &l), "fp_list_new");
  double t0 = now_s();
  for (long i = 0; i < k; i++) {
    put_int_value(v, i);
    check(fp_list_append(l, v, sizeof v), "fp_list_append");
  }
  emit("mgr_list_append", "forkpool", (double)k / (now_s() - t0), "ops/s");
  if (fp_list_len(l) != k)
    die("list: wrong length");
  check(fp_list_destroy(l), "fp_list_destroy");

  /* 4x the count for the 1-vs-2 rows (the run should last ~0.2 s). The
   * same appends once untimed first: both timed runs then reuse arena
   * pages the kernel has already handed out (as the dict rows do), so
   * neither pays for first-touch page faults the other does not. */
  long kl = 4 * k;
  check(fp_list_new(m, &g_list), "fp_list_new");
  one_proc(op_list_append, kl);
  check(fp_list_destroy(g_list), "fp_list_destroy");
  check(fp_list_new(m, &g_list), "fp_list_new");
  emit("mgr_list_append_2w", "baseline",
       (double)kl / one_proc(op_list_append, kl), "ops/s");
  check(fp_list_destroy(g_list), "fp_list_destroy");
  check(fp_list_new(m, &g_list), "fp_list_new");
  double dt = two_procs(op_list_append, kl / 2);
  if (fp_list_len(g_list) != 2 * (kl / 2))
    die("list from 2 processes: wrong length");
  emit("mgr_list_append_2w", "forkpool", (double)(2 * (kl / 2)) / dt,
       "ops/s");
  check(fp_list_destroy(g_list), "fp_list_destroy");
}

static void g_manager(sizes_t n) {
  fp_manager *m;
  fp_array *arr;
  int64_t v;
  /* The C calls are ~1000x faster than a Manager's round trips: they get
   * more iterations (at least 1e6) so their timings are not lost in clock
   * noise. Rates are per operation on both sides. */
  long k = n.mgr * 50;
  check(fp_manager_new(&m, NULL), "fp_manager_new");
  check(fp_counter_new(m, 0, &g_counter), "fp_counter_new");
  check(fp_lock_new(m, &g_lock), "fp_lock_new");
  check(fp_array_new(m, 64, &arr), "fp_array_new");
  g_locked_value = fp_array_data(arr);
  make_keys(k);

  mgr_dict_groups(m, k);
  mgr_list_groups(m, k);

  long kc = quick ? 2000000 : 10000000;
  double dt = two_procs(op_counter, kc);
  check(fp_counter_get(g_counter, &v), "fp_counter_get");
  if (v != 2 * kc)
    die("counter: lost increments");
  emit("counter_2proc", "forkpool", 2.0 * (double)kc / dt, "ops/s");

  long kl = quick ? 500000 : 2000000;
  dt = two_procs(op_locked, kl);
  if (*g_locked_value != 2 * kl)
    die("lock: lost increments");
  emit("mutex_2proc", "forkpool", 2.0 * (double)kl / dt, "ops/s");
  free(g_keys);
  free(g_klen);
  fp_manager_free(m);
}

/* Churn: `rounds` rounds, each inserting `per` new keys with values of
 * random sizes (8 B to 4 KiB) and deleting as many old ones, so that a
 * window of `live` keys stays alive. Reports the arena's footprint (bytes
 * its allocator ever carved, i.e. memory it touched) over the live data
 * (keys plus values) at the end: an allocator that does not reuse freed
 * memory well grows the footprint round after round. */
static void g_churn(void) {
  long per = quick ? 100000 : 1000000, live = per / 10, rounds = 10;
  fp_manager_opts mo = {.arena_size = (size_t)4 << 30};
  static unsigned char val[4096];
  fp_writer w;
  fp_manager *m;
  fp_dict *d;
  fp_manager_stats st;
  uint16_t *sz = malloc((size_t)live * sizeof *sz);
  uint64_t x = 88172645463325252ULL, live_bytes = 0;
  char key[32];

  if (sz == NULL)
    die("out of memory");
  check(fp_manager_new(&m, &mo), "fp_manager_new");
  check(fp_dict_new(m, &d), "fp_dict_new");
  fp_writer_init(&w);
  double t0 = now_s();
  for (long i = 0; i < rounds * per + live; i++) {
    long slot = i % live;
    if (i >= live) { /* delete the key inserted `live` steps ago */
      int kl = snprintf(key, sizeof key, "c%ld", i - live);
      check(fp_dict_delete(d, key, (size_t)kl, NULL), "fp_dict_delete");
      live_bytes -= (uint64_t)kl + sz[slot];
    }
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    fp_writer_reset(&w); /* keeps its buffer: no allocation */
    check(fp_write_bytes(&w, val, 8 + (size_t)(x % 4089)), "fp_write_bytes");
    int kl = snprintf(key, sizeof key, "c%ld", i);
    check(fp_dict_set(d, key, (size_t)kl, w.data, w.len), "fp_dict_set");
    sz[slot] = (uint16_t)w.len;
    live_bytes += (uint64_t)kl + w.len;
  }
  double dt = now_s() - t0;
  check(fp_manager_stats_get(m, &st), "fp_manager_stats_get");
  emit("mgr_churn_overhead", "forkpool",
       (double)st.footprint / (double)live_bytes, "x");
  emit("mgr_churn_rate", "forkpool", 2.0 * (double)(rounds * per) / dt,
       "ops/s");
  fp_writer_free(&w);
  fp_manager_free(m);
  free(sz);
}

/* --- fault tolerance -------------------------------------------------------
 */

/* Shared with the workers (mapped before the pool): which worker took the
 * hanging task. */
typedef struct fault_shm {
  atomic_int slot;
  atomic_int pid;
} fault_shm;
static fault_shm *fshm;

/* Announces itself, then hangs until killed. */
static int hang_task(fp_reader *args, fp_writer *out) {
  atomic_store(&fshm->pid, (int)getpid());
  atomic_store(&fshm->slot, fp_task_worker_id());
  for (;;)
    pause();
  return 0;
}

typedef struct killer_t {
  fp_pool *pool;
  atomic_int stop;
  int kills;
} killer_t;

/* Every 100 ms, SIGKILLs the current process of worker slot 0, then 1, ... */
static void *killer_main(void *arg) {
  killer_t *k = arg;
  int slot = 0;
  while (!atomic_load(&k->stop)) {
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    if (atomic_load(&k->stop))
      break;
    fp_worker_info info;
    if (fp_pool_worker_info(k->pool, slot, &info) == 0 && info.pid > 0 &&
        kill(info.pid, SIGKILL) == 0)
      k->kills++;
    slot = (slot + 1) % fp_pool_size(k->pool);
  }
  return NULL;
}

static int64_t spin_task(int64_t t) {
  uint64_t acc = (uint64_t)t;
  for (uint64_t i = 0; i < (1u << 20); i++) {
    acc += i;
    __asm__ volatile("" : "+r"(acc));
  }
  return (int64_t)(acc & 0xffff);
}

static void g_fault(sizes_t n) {
  fshm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
              -1, 0);
  if (fshm == MAP_FAILED)
    die("mmap: %s", strerror(errno));
  cur_kernel = spin_task;
  fp_pool *p = mkpool(2);
  int reps = quick ? 3 : 15;
  fp_writer arg;
  fp_writer_init(&arg);
  fp_write_int(&arg, 0);
  for (int r = 0; r < reps; r++) {
    fp_result *res;
    atomic_store(&fshm->slot, -1);
    check(fp_pool_apply_async(p, hang_task, &arg, NULL, &res),
          "fp_pool_apply_async");
    double t0 = now_s();
    while (atomic_load(&fshm->slot) < 0)
      if (now_s() - t0 > 10)
        die("fault: the hanging task never started");
    fp_worker_info info;
    check(fp_pool_worker_info(p, atomic_load(&fshm->slot), &info),
          "fp_pool_worker_info");
    if (info.pid != atomic_load(&fshm->pid))
      die("fault: worker_info pid %d, task pid %d", (int)info.pid,
          atomic_load(&fshm->pid));
    t0 = now_s();
    kill(info.pid, SIGKILL);
    int rc = fp_result_get(res, 10.0);
    double dt = now_s() - t0;
    if (rc != FP_EWORKER)
      die("fault: result %s, expected FP_EWORKER", fp_err_name(rc));
    fp_result_free(res);
    emit("fault_latency", "forkpool", dt * 1e3, "ms");
  }
  fp_writer_free(&arg);
  fp_pool_free(p);

  /* Throughput of 1 ms tasks, undisturbed and with a kill every 100 ms;
   * killed tasks are retried on another worker so every result arrives. */
  long ntasks = quick ? 600 : 3000;
  int64_t *in = malloc((size_t)ntasks * 8), *out = malloc((size_t)ntasks * 8);
  int64_t want = 0;
  for (long i = 0; i < ntasks; i++) {
    in[i] = i;
    want += spin_task(i);
  }
  fp_pool_opts o = {0};
  o.processes = 2;
  o.on_crash = FP_CRASH_RETRY;
  o.retries = 10;
  p = mkpool_opts(&o);
  fp_call_opts co = {0};
  co.chunksize = 1;
  double rate[2];
  int kills = 0;
  for (int pass = 0; pass < 2; pass++) {
    killer_t k = {.pool = p};
    pthread_t th;
    if (pass == 1 && pthread_create(&th, NULL, killer_main, &k) != 0)
      die("pthread_create");
    double t0 = now_s();
    check(fp_pool_map(p, kernel_elem, in, (size_t)ntasks, 8, out, 8, &co),
          pass ? "fp_pool_map under kills" : "fp_pool_map");
    double dt = now_s() - t0;
    if (pass == 1) {
      atomic_store(&k.stop, 1);
      pthread_join(th, NULL);
      kills = k.kills;
    }
    int64_t s = 0;
    for (long i = 0; i < ntasks; i++)
      s += out[i];
    if (s != want)
      die("fault: wrong results after kills");
    rate[pass] = (double)ntasks / dt;
  }
  fprintf(stderr, "fpbench fault: %d workers killed during the run\n", kills);
  emit("fault_tput", "baseline", rate[0], "tasks/s");
  emit("fault_tput", "forkpool", rate[1], "tasks/s");
  (void)n;
  free(in);
  free(out);
  fp_pool_free(p);
  munmap(fshm, 4096);
}

/* --- CPU-bound scaling -----------------------------------------------------
 */

/* Runs kernel k's tasks on a warmed-up pool; returns seconds, checks the
 * checksum against *want (set by the first call). */
static double run_kernel(fp_pool *p, kernel_def *k, int64_t *want) {
  size_t n = (size_t)k->ntasks;
  int64_t *in = malloc(n * 8), *out = malloc(n * 8), s = 0;
  for (size_t i = 0; i < n; i++)
    in[i] = (int64_t)i;
  fp_call_opts co = {0};
  co.chunksize = 1;
  double t0 = now_s();
  check(fp_pool_map(p, kernel_elem, in, n, 8, out, 8, &co), "fp_pool_map");
  double dt = now_s() - t0;
  for (size_t i = 0; i < n; i++)
    s += out[i];
  if (*want == INT64_MIN)
    *want = s;
  else if (s != *want)
    die("%s: checksum %lld, want %lld", k->name, (long long)s,
        (long long)*want);
  free(in);
  free(out);
  return dt;
}

static void g_scale(const char *name, int maxw) {
  kernel_def *k = kernel_find(name);
  if (!k)
    die("unknown kernel %s", name);
  cur_kernel = k->fn;
  int64_t want = INT64_MIN;
  char metric[64];
  for (int w = 1; w <= maxw; w++) {
    fp_pool *p = mkpool(w);
    double dt = run_kernel(p, k, &want);
    fp_pool_free(p);
    snprintf(metric, sizeof metric, "scale.%s.w%d", name, w);
    emit(metric, "forkpool", dt, "s");
  }
  snprintf(metric, sizeof metric, "scale.%s.checksum", name);
  emit(metric, "forkpool", (double)want, "sum");
}

static void g_pin(void) {
  static const struct {
    const char *name;
    fp_pin_policy pin;
  } pol[] = {{"none", FP_PIN_NONE},
             {"compact", FP_PIN_COMPACT},
             {"scatter", FP_PIN_SCATTER}};
  kernel_def *k = kernel_find("kmeans");
  cur_kernel = k->fn;
  int64_t want = INT64_MIN;
  for (int i = 0; i < 3; i++) {
    fp_pool_opts o = {0};
    o.processes = usable_cpus();
    o.pin = pol[i].pin;
    fp_pool *p = mkpool_opts(&o);
    double dt = run_kernel(p, k, &want);
    fp_pool_free(p);
    char metric[64];
    snprintf(metric, sizeof metric, "pin.%s", pol[i].name);
    emit(metric, "forkpool", dt, "s");
  }
}

/* --- memory growth ----------------------------------------------------------
 */

/* Peak resident set of this process in MiB (VmHWM). */
static double peak_rss_mib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  double kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmHWM:", 6) == 0)
      kb = atof(line + 6);
  if (f)
    fclose(f);
  if (kb < 0) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    kb = (double)ru.ru_maxrss;
  }
  return kb / 1024.0;
}

typedef struct prod_t {
  long next, n;
} prod_t;

static int producer(void *arg, fp_writer *item) {
  prod_t *pr = arg;
  if (pr->next >= pr->n)
    return 0;
  int rc = fp_write_int(item, pr->next++);
  return rc < 0 ? rc : 1;
}

/* In a fresh child: a pool, then fp_pool_map over n int64 (mode 0) or a
 * producer-fed imap over n items (mode 1); prints the child's peak RSS. */
static void rss_child(long n, int mode) {
  pid_t pid = fork();
  if (pid < 0)
    die("fork: %s", strerror(errno));
  if (pid == 0) {
    fp_pool *p = mkpool(2);
    char metric[64];
    if (mode == 0) {
      int64_t *in = malloc((size_t)n * 8), *out = malloc((size_t)n * 8);
      for (long i = 0; i < n; i++)
        in[i] = i;
      check(fp_pool_map(p, ident_elem, in, (size_t)n, 8, out, 8, NULL),
            "fp_pool_map");
      if (out[n - 1] != n - 1)
        die("rss map: wrong result");
      snprintf(metric, sizeof metric, "rss_map.%ld", n);
    } else {
      prod_t pr = {0, n};
      fp_call_opts co = {0};
      co.chunksize = 1024;
      fp_iter *it;
      long got = 0;
      check(fp_pool_imap_producer(p, ident_task, producer, &pr, &co, &it),
            "fp_pool_imap_producer");
      for (;;) {
        fp_reader r;
        int rc = fp_iter_next(it, &r, FP_FOREVER);
        if (rc == FP_EOF)
          break;
        check(rc, "fp_iter_next");
        got++;
      }
      fp_iter_free(it);
      if (got != n)
        die("rss imap: %ld of %ld items", got, n);
      snprintf(metric, sizeof metric, "rss_imap.%ld", n);
    }
    emit(metric, "forkpool", peak_rss_mib(), "MiB");
    fp_pool_free(p);
    _exit(0);
  }
  int st;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    die("rss child failed");
}

static void g_rss(void) {
  long top = quick ? 1000000 : 10000000;
  for (long n = 10000; n <= top; n *= 10) {
    rss_child(n, 0);
    rss_child(n, 1);
  }
}

/* CPU time (user + system) a process used so far, in seconds, from
 * /proc/PID/stat, in clock ticks (10 ms); 0 when it cannot be read. */
static double proc_ticks_s(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  unsigned long ut = 0, st = 0;
  if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u "
                                 "%*u %lu %lu", &ut, &st) != 2)
    return 0;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* CPU time a process's threads used so far, in seconds: the sum of their
 * /proc/PID/task/TID/schedstat run times, in nanoseconds. A 2 s idle
 * window read in clock ticks would have a resolution of 0.5 % per
 * process, half the row's target; without schedstat, ticks it is. */
static double proc_cpu_s(pid_t pid) {
  char path[96], buf[128];
  snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
  DIR *d = opendir(path);
  double sum = 0;
  int seen = 0;
  struct dirent *e;
  while (d != NULL && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    snprintf(path, sizeof(path), "/proc/%d/task/%.16s/schedstat", (int)pid,
             e->d_name);
    FILE *f = fopen(path, "r");
    unsigned long long ns = 0;
    if (f == NULL)
      continue; /* the thread ended meanwhile */
    int ok =
        fgets(buf, sizeof(buf), f) != NULL && sscanf(buf, "%llu", &ns) == 1;
    fclose(f);
    if (!ok) { /* no schedstat here: ticks for the whole process */
      seen = 0;
      break;
    }
    sum += (double)ns / 1e9;
    seen = 1;
  }
  if (d != NULL)
    closedir(d);
  return seen ? sum : proc_ticks_s(pid);
}

/* The master (every thread, the pool thread included) and both workers
 * of an idle pool, over 2 s after the last task: a pool that spins after
 * work must stop by itself. */
static void g_idle(void) {
  fp_pool *p = mkpool(2);
  fp_worker_info wi[2];
  for (int i = 0; i < 2; i++)
    check(fp_pool_worker_info(p, i, &wi[i]), "fp_pool_worker_info");
  double before = proc_cpu_s(getpid()) + proc_cpu_s(wi[0].pid) +
                  proc_cpu_s(wi[1].pid);
  double t0 = now_s();
  struct timespec ts = {2, 0};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  double after = proc_cpu_s(getpid()) + proc_cpu_s(wi[0].pid) +
                 proc_cpu_s(wi[1].pid);
  emit("idle_cpu", "forkpool", (after - before) / (now_s() - t0) * 100, "%");
  fp_pool_free(p);
}

/* The pool over MPI (run as `mpirun -n R fpbench mpi`): one worker per
 * worker rank, so R = 3 gives the 2 workers of the local groups. Side
 * "forkpool-mpi": apply round trip, apply_async and map, the rows
 * report.py puts next to the local pool's; then what the master routes
 * (mpi_payload.N, bytes both ways, chunksize 1), which docs/scale-out.md
 * turns into a capacity plan. An MPI job has one pool: the worker ranks
 * serve inside fp_pool_new() and end with it. */
static void g_mpi(sizes_t n) {
  fp_pool_opts o = {0};
  o.transport = FP_TRANSPORT_MPI;
  o.processes = 1;
  fp_pool *p = mkpool_opts(&o);
  apply_on(p, n, "forkpool-mpi");
  async_on(p, n, "forkpool-mpi");
  map_on(p, n, "forkpool-mpi");
  payload_on(p, 64 << 10, quick ? 256 : 1024, "mpi_payload", "forkpool-mpi");
  payload_on(p, 1 << 20, quick ? 32 : 128, "mpi_payload", "forkpool-mpi");
  fp_pool_free(p);
}

int main(int argc, char **argv) {
  quick = bench_quick();
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2)
    die("usage: fpbench startstop|apply|async|map|starmap|imap|payload|"
        "chunks|manager|churn|fault|scale K W|pin|rss|idle|mpi");
  const char *cmd = argv[1];
  sizes_t n = sizes();
  /* The kernels' global data is made before any pool so workers inherit
   * it; only the groups that use it pay for it. */
  if (strcmp(cmd, "scale") == 0 || strcmp(cmd, "pin") == 0)
    if (kernels_init(quick) != 0)
      die("out of memory");
  if (strcmp(cmd, "startstop") == 0)
    g_startstop(n);
  else if (strcmp(cmd, "apply") == 0)
    g_apply(n);
  else if (strcmp(cmd, "async") == 0)
    g_async(n);
  else if (strcmp(cmd, "map") == 0)
    g_map(n);
  else if (strcmp(cmd, "starmap") == 0)
    g_starmap(n);
  else if (strcmp(cmd, "imap") == 0)
    g_imap(n);
  else if (strcmp(cmd, "payload") == 0)
    g_payload(n);
  else if (strcmp(cmd, "chunks") == 0)
    g_chunks(n);
  else if (strcmp(cmd, "manager") == 0)
    g_manager(n);
  else if (strcmp(cmd, "churn") == 0)
    g_churn();
  else if (strcmp(cmd, "fault") == 0)
    g_fault(n);
  else if (strcmp(cmd, "scale") == 0 && argc == 4)
    g_scale(argv[2], atoi(argv[3]));
  else if (strcmp(cmd, "pin") == 0)
    g_pin();
  else if (strcmp(cmd, "rss") == 0)
    g_rss();
  else if (strcmp(cmd, "idle") == 0)
    g_idle();
  else if (strcmp(cmd, "mpi") == 0)
    g_mpi(n);
  else
    die("unknown command %s", cmd);
  return 0;
}
