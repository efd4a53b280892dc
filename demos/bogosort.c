/* SPDX-License-Identifier: MIT */
/* bogosort.c - 1000 tiny arrays sorted by bogosort, split into one
 * partition per worker: the seed's joblib Parallel(verbose=...) example.
 *
 * Bogosort shuffles an array until it happens to be sorted: for 8 distinct
 * values that takes 8! = 40,320 shuffles on average, a nicely CPU-bound and
 * wildly uneven task (the count is geometric). Each array carries its own
 * seed, so the shuffles it goes through are the same in the sequential loop
 * and in any worker: the outputs, shuffle counts included, must be equal.
 *
 * The Python seed splits the arrays with np.array_split(arrays, n_jobs) and
 * hands one partition to each joblib job. The C form of that is
 * fp_pool_map over an array of structs with chunksize = ceil(n / workers):
 * one chunk, one task, per worker. Progress goes to stderr as joblib-style
 * lines (FP_PROGRESS_LINES), like joblib's verbose output. A table then
 * times the same map with 1 .. 2 x CPUs workers: past the CPU count more
 * workers only share the same cores. Each row is also printed as a line
 * "WORKERS bogosort w=<n> time=<s> items=<arrays>" with --quiet (only),
 * from which `make demo-compare` draws time against workers for C and
 * Python on one chart. The row of --workers is the timed parallel side
 * (median of --repeat runs); the other rows are the median of
 * --table-repeat runs, 1 by default to keep `make demo` short
 * (demo-compare asks for 3).
 *
 * With --transport mpi (make demo-mpi: mpirun -n 3) the partitions go to
 * the workers of the worker ranks. An MPI job has one pool (the worker
 * ranks end with it), so it is made first, before anything is timed, and
 * serves every repeat; the workers table, which needs a pool per row, is
 * left out.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/demo.h"

#define LEN 8
#define SEED 42ULL

/* One array to sort, with the seed of its shuffles. */
typedef struct job {
  int32_t a[LEN];
  uint64_t seed;
} job;

/* The sorted array and how many shuffles it took. */
typedef struct sorted {
  int32_t a[LEN];
  uint64_t shuffles;
} sorted;

/* Returns 1 when a[0..LEN) is in non-decreasing order. */
static int is_sorted(const int32_t *a) {
  for (int i = 1; i < LEN; i++)
    if (a[i - 1] > a[i])
      return 0;
  return 1;
}

/* Task: bogosorts one array. Python: while not is_sorted(a): shuffle(a). */
static int bogosort_task(const void *in, void *out) {
  const job *j = in;
  sorted *s = out;
  demo_rng r;
  demo_rng_seed(&r, j->seed);
  memcpy(s->a, j->a, sizeof s->a);
  s->shuffles = 0;
  while (!is_sorted(s->a)) {
    for (int i = LEN - 1; i > 0; i--) { /* Fisher-Yates */
      int k = (int)demo_rng_below(&r, (uint64_t)i + 1);
      int32_t t = s->a[i];
      s->a[i] = s->a[k];
      s->a[k] = t;
    }
    s->shuffles++;
  }
  return 0;
}

/* The one pool of an MPI run, made before anything else; NULL locally. */
static fp_pool *mpi_pool;

/* Times one fp_pool_map of the jobs with one partition per worker. */
static double run_partitioned(const demo_opts *o, int workers,
                              fp_progress_mode progress, const job *jobs,
                              size_t n, sorted *out) {
  demo_opts po = *o;
  fp_pool *pool;
  fp_call_opts co = {0};
  double t;
  po.workers = workers;
  pool = mpi_pool ? mpi_pool : demo_pool(&po, progress, 1);
  co.chunksize = (n + (size_t)workers - 1) / (size_t)workers;
  co.progress = progress; /* the MPI pool's is off */
  t = demo_now();
  demo_check(fp_pool_map(pool, bogosort_task, jobs, n, sizeof(job), out,
                         sizeof(sorted), &co),
             "fp_pool_map");
  t = demo_now() - t;
  if (pool == mpi_pool)
    return t;
  fp_pool_close(pool);
  fp_pool_join(pool);
  fp_pool_free(pool);
  return t;
}

/* Times `repeat` runs of the partitioned map with `workers` workers
 * (progress lines on the first run only, if asked) and returns the
 * median; *ok is cleared when an output differs from ref. */
static double median_partitioned(const demo_opts *o, int workers,
                                 fp_progress_mode progress, const job *jobs,
                                 size_t n, sorted *out, const sorted *ref,
                                 int *ok) {
  double t[DEMO_REPEAT_MAX];
  for (int rep = 0; rep < o->repeat; rep++) {
    memset(out, 0, sizeof(sorted) * n);
    t[rep] = run_partitioned(o, workers, rep == 0 ? progress : FP_PROGRESS_OFF,
                             jobs, n, out);
    *ok &= memcmp(ref, out, sizeof(sorted) * n) == 0;
  }
  return demo_median(t, o->repeat);
}

/* The workers table: the partitioned map on 1 .. 2 x CPUs workers, a
 * fresh pool per row, `repeat` runs each (the row of o->workers is the
 * parallel side, `par`), each row as a WORKERS line with --quiet; *ok is
 * cleared when an output differs from ref. */
static void workers_table(const demo_opts *o, int repeat, double seq,
                          double par, const job *jobs, size_t n, sorted *out,
                          const sorted *ref, int *ok) {
  int cpus = fp_cpu_count();
  demo_opts to = *o;
  to.repeat = repeat;
  demo_say(o, "  workers  time (s)  speedup\n");
  for (int w = 1; w <= 2 * cpus; w++) {
    double tw = w == o->workers ? par
                                : median_partitioned(&to, w, FP_PROGRESS_OFF,
                                                     jobs, n, out, ref, ok);
    demo_say(o, "  %7d  %8.3f  %6.2fx%s%s\n", w, tw, seq / tw,
             w == cpus ? "  <- CPUs" : "", demo_noise(w, seq / tw, 0));
    if (o->quiet) /* machine-readable, for demos/compare.sh */
      printf("WORKERS bogosort w=%d time=%.4f items=%zu\n", w, tw, n);
  }
  fflush(stdout);
}

int main(int argc, char **argv) {
  demo_opts o;
  size_t n;
  job *jobs;
  sorted *seq_out, *par_out;
  double seq, par, omp, t, seq_t[DEMO_REPEAT_MAX];
  uint64_t total = 0;
  int ok = 1, table_repeat = 1;
  demo_option more[] = {{"table-repeat", &table_repeat, 1, DEMO_REPEAT_MAX,
                         "runs per row of the workers table"},
                        {NULL, NULL, 0, 0, NULL}};

  demo_parse_ex(argc, argv, &o,
                "bogosort: 1000 arrays of 8 ints, one "
                "partition per worker",
                more);
  n = 1000; /* the seed's size; the work is the same with --full */
  demo_set_work(&o, (double)n, 0);
  jobs = malloc(sizeof(job) * n);
  seq_out = malloc(sizeof(sorted) * n);
  par_out = malloc(sizeof(sorted) * n);
  if (jobs == NULL || seq_out == NULL || par_out == NULL)
    return 2;
  for (size_t i = 0; i < n; i++) {
    uint64_t s = SEED ^ (i * 0x9e3779b97f4a7c15ULL);
    demo_rng r;
    demo_rng_seed(&r, demo_splitmix64(&s));
    for (int k = 0; k < LEN; k++)
      jobs[i].a[k] = (int32_t)demo_rng_below(&r, 100);
    jobs[i].seed = demo_rng_next(&r);
  }
  if (o.transport == FP_TRANSPORT_MPI) /* worker ranks serve in here */
    mpi_pool = demo_pool_size(&o, demo_pool(&o, FP_PROGRESS_OFF, 1));
  demo_say(&o,
           "bogosort: %zu arrays of %d ints in [0, 100), %d workers, median "
           "of %d runs\n",
           n, LEN, o.workers, o.repeat);

  for (int rep = 0; rep < o.repeat; rep++) {
    t = demo_now();
    for (size_t i = 0; i < n; i++)
      bogosort_task(&jobs[i], &seq_out[i]);
    seq_t[rep] = demo_now() - t;
  }
  seq = demo_median(seq_t, o.repeat);
  for (size_t i = 0; i < n; i++)
    total += seq_out[i].shuffles;
  demo_say(&o, "  sequential: %.3f s, %llu shuffles in all (%.0f per array)\n",
           seq, (unsigned long long)total, (double)total / (double)n);

  demo_say(&o, "  parallel, %d partitions of %zu arrays:\n", o.workers,
           (n + (size_t)o.workers - 1) / (size_t)o.workers);
  par = median_partitioned(&o, o.workers,
                           o.quiet ? FP_PROGRESS_OFF : FP_PROGRESS_LINES, jobs,
                           n, par_out, seq_out, &ok);
  for (size_t i = 0; i < n; i++)
    ok &= is_sorted(par_out[i].a);

  if (mpi_pool != NULL) {
    fp_pool_free(mpi_pool);
    mpi_pool = NULL;
    demo_say(&o, "  (one pool per MPI run: no workers table)\n");
  } else
    workers_table(&o, table_repeat, seq, par, jobs, n, par_out, seq_out, &ok);

  /* The reference: OpenMP threads, one static partition each. */
  t = demo_now();
#pragma omp parallel for schedule(static) num_threads(o.workers)
  for (size_t i = 0; i < n; i++)
    bogosort_task(&jobs[i], &par_out[i]);
  omp = demo_now() - t;
  ok &= memcmp(seq_out, par_out, sizeof(sorted) * n) == 0;
  demo_openmp(&o, seq, par, omp);

  free(jobs);
  free(seq_out);
  free(par_out);
  return demo_result(&o, "bogosort", seq, par, ok);
}
