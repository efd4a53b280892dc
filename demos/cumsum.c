/* SPDX-License-Identifier: MIT */
/* cumsum.c - sum(range(1, n + 1)) for five n, sequentially and with
 * fp_pool_map: the seed's first example, in C.
 *
 * The Python seed computes five sums of about 10^8 integers each, first in a
 * loop, then with Pool.map and joblib. Here each sum is one fixed-size task:
 * an int64_t n goes in, an int64_t sum comes out, and fp_pool_map moves the
 * five inputs and outputs by memcpy, with no encoding at all.
 *
 * The kernel must really loop. A C compiler turns a plain summation loop
 * into n(n+1)/2 (gcc and clang both do, at -O2), which would make the demo
 * measure nothing; an empty asm statement that "modifies" the accumulator
 * on every iteration forbids that (check with `objdump -d`: the loop is an
 * add, an increment, a compare and a branch). The result is verified
 * against the closed form.
 *
 * Five equal tasks on two workers need three rounds where the sequential
 * loop needs five, so the speedup cannot pass 5/3 = 1.67 whatever the
 * library does. The demo shows that, then the usual cure: cut each sum into
 * many slices (partial sums over sub-ranges) so the work divides evenly.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/demo.h"

#define NVALUES 5
#define SLICES 16 /* per value, in the balanced variant */

/* A sub-range [lo, hi] of integers to sum. */
typedef struct range {
  int64_t lo, hi;
} range;

/* Returns lo + (lo + 1) + ... + hi by actually adding each term. */
static int64_t sum_range(int64_t lo, int64_t hi) {
  int64_t acc = 0;
  for (int64_t i = lo; i <= hi; i++) {
    acc += i;
    /* Tell the compiler acc may have changed: no closed form, no SIMD. */
    __asm__ volatile("" : "+r"(acc));
  }
  return acc;
}

/* Task: *out = sum(range(1, *in + 1)), Python's cumsum(n). */
static int cumsum_task(const void *in, void *out) {
  int64_t n = *(const int64_t *)in;
  *(int64_t *)out = sum_range(1, n);
  return 0;
}

/* Task: the partial sum over one slice. */
static int slice_task(const void *in, void *out) {
  const range *r = in;
  *(int64_t *)out = sum_range(r->lo, r->hi);
  return 0;
}

int main(int argc, char **argv) {
  demo_opts o;
  int64_t base, values[NVALUES], seq_out[NVALUES], par_out[NVALUES];
  int64_t slice_out[NVALUES * SLICES], bal_sum[NVALUES];
  range slices[NVALUES * SLICES];
  double seq_t[DEMO_REPEAT_MAX], par_t[DEMO_REPEAT_MAX];
  double bal_t[DEMO_REPEAT_MAX], omp_t[DEMO_REPEAT_MAX];
  double seq, par, bal, omp, t, ceiling, items = 0;
  int ok = 1, rounds;
  fp_pool *pool;
  fp_call_opts co = {.chunksize = 1};

  demo_parse(argc, argv, &o, "cumsum: sum(range(1, n+1)) for five n");
  base = o.full ? 100000000 : 40000000;
  for (int i = 0; i < NVALUES; i++)
    values[i] = base + i;
  for (int i = 0; i < NVALUES; i++)
    for (int s = 0; s < SLICES; s++) {
      int64_t step = values[i] / SLICES;
      range *r = &slices[i * SLICES + s];
      r->lo = s * step + 1;
      r->hi = s == SLICES - 1 ? values[i] : (s + 1) * step;
    }
  /* Made first: under --transport mpi, only the pool knows how many
   * workers there are (demo.h, demo_pool). */
  pool = demo_pool(&o, FP_PROGRESS_OFF, 1);
  /* Five equal tasks: the slowest worker runs ceil(5 / workers) of them,
   * which bounds the speedup (the demo's stated ceiling). */
  rounds = (NVALUES + o.workers - 1) / o.workers;
  ceiling = (double)NVALUES / rounds;
  for (int i = 0; i < NVALUES; i++)
    items += (double)values[i];
  demo_set_work(&o, items, ceiling);
  demo_say(&o,
           "cumsum: sum(range(1, n+1)) for n = %lld .. %lld "
           "(%d values), %d workers, median of %d runs\n",
           (long long)values[0], (long long)values[NVALUES - 1], NVALUES,
           o.workers, o.repeat);
  for (int rep = 0; rep < o.repeat; rep++) {
    /* Sequential: Python's [cumsum(n) for n in values]. */
    t = demo_now();
    for (int i = 0; i < NVALUES; i++)
      cumsum_task(&values[i], &seq_out[i]);
    seq_t[rep] = demo_now() - t;

    /* Parallel: Python's pool.map(cumsum, values). */
    t = demo_now();
    demo_check(fp_pool_map(pool, cumsum_task, values, NVALUES, sizeof values[0],
                           par_out, sizeof par_out[0], &co),
               "fp_pool_map");
    par_t[rep] = demo_now() - t;

    /* Balanced: 16 slices per value, partial sums added in the master. */
    t = demo_now();
    demo_check(fp_pool_map(pool, slice_task, slices, NVALUES * SLICES,
                           sizeof slices[0], slice_out, sizeof slice_out[0],
                           NULL),
               "fp_pool_map");
    for (int i = 0; i < NVALUES; i++) {
      bal_sum[i] = 0;
      for (int s = 0; s < SLICES; s++)
        bal_sum[i] += slice_out[i * SLICES + s];
    }
    bal_t[rep] = demo_now() - t;
  }
  fp_pool_close(pool);
  fp_pool_join(pool);
  fp_pool_free(pool);

  /* The reference: OpenMP threads over the same five tasks (after the
   * pool is gone, so no thread exists when the fork server is forked). */
  for (int rep = 0; rep < o.repeat; rep++) {
    int64_t omp_out[NVALUES];
    t = demo_now();
#pragma omp parallel for schedule(dynamic, 1) num_threads(o.workers)
    for (int i = 0; i < NVALUES; i++)
      cumsum_task(&values[i], &omp_out[i]);
    omp_t[rep] = demo_now() - t;
    ok &= memcmp(omp_out, seq_out, sizeof omp_out) == 0;
  }
  seq = demo_median(seq_t, o.repeat);
  par = demo_median(par_t, o.repeat);
  bal = demo_median(bal_t, o.repeat);
  omp = demo_median(omp_t, o.repeat);

  for (int i = 0; i < NVALUES; i++) {
    int64_t n = values[i], want = n * (n + 1) / 2;
    int good = seq_out[i] == want && par_out[i] == want && bal_sum[i] == want;
    demo_say(&o, "  n=%lld  sum=%lld  closed form %s\n", (long long)n,
             (long long)par_out[i], good ? "ok" : "MISMATCH");
    ok &= good;
  }
  demo_say(&o,
           "  %d tasks on %d workers take %d rounds instead of %d: speedup "
           "at most %.2fx\n",
           NVALUES, o.workers, rounds, NVALUES, ceiling);
  demo_say(&o,
           "  balanced variant (%d slices): %.3f s, speedup %.2fx over "
           "sequential%s\n",
           NVALUES * SLICES, bal, seq / bal,
           demo_noise(o.workers, seq / bal, 0));
  demo_openmp(&o, seq, par, omp);
  return demo_result(&o, "cumsum", seq, par, ok);
}
