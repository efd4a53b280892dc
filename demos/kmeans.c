/* SPDX-License-Identifier: MIT */
/* kmeans.c - choose k for k-means by the silhouette score, one k per task:
 * the seed's "for k in range(2, 15)" loop, in parallel.
 *
 * Data: Gaussian blobs (sklearn's make_blobs): 7 centers drawn uniformly in
 * [-10, 10]^d, unit standard deviation; 3,000 x 20 by default, the seed's
 * 10,000 x 100 with --full. Generated from a fixed seed into globals BEFORE
 * fp_pool_new(), so the workers inherit the points instead of receiving
 * them: only k goes out and three numbers come back.
 *
 * Per k: k-means++ initialisation from a seed derived from k, Lloyd
 * iterations until no point changes cluster (at most MAX_ITER), best of
 * N_INIT starts by inertia; then the mean silhouette coefficient over a
 * fixed sample of at most SAMPLE points (sklearn's silhouette_score with
 * sample_size: a(i) and b(i) are computed within the sample). Everything is
 * deterministic, so the sequential loop and fp_pool_map over the k values
 * must give bit-identical scores, and the best k should be 7.
 *
 * With --transport mpi (make demo-mpi) the same map runs on the ranks of
 * `mpirun -n 3`: every rank builds the same points before the pool, the
 * MPI form of fork inheritance (docs/mpi.md).
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/demo.h"

#define KMIN 2
#define KMAX 14
#define NK (KMAX - KMIN + 1)
#define CENTERS 7
#define N_INIT 3
#define MAX_ITER 100
#define SAMPLE 3000
#define SEED 1234ULL

/* The points: globals filled before the pool exists (fork inheritance). */
static double *g_x; /* n x d, row-major */
static int g_n, g_d;
static int *g_sample; /* indices of the silhouette sample */
static int g_m;       /* sample size */

/* What one k yields. */
typedef struct kresult {
  double inertia;
  double silhouette;
  int64_t iterations;
} kresult;

/* Fills g_x with CENTERS Gaussian blobs and picks the silhouette sample. */
static void make_blobs(int n, int d) {
  demo_rng r;
  double *c = malloc(sizeof(double) * CENTERS * (size_t)d);
  demo_rng_seed(&r, SEED);
  g_n = n;
  g_d = d;
  g_x = malloc(sizeof(double) * (size_t)n * (size_t)d);
  g_sample = malloc(sizeof(int) * (size_t)n);
  if (c == NULL || g_x == NULL || g_sample == NULL) {
    fprintf(stderr, "kmeans: out of memory\n");
    exit(2);
  }
  for (int i = 0; i < CENTERS * d; i++)
    c[i] = -10 + 20 * demo_rng_uniform(&r);
  for (int i = 0; i < n; i++) {
    int k = (int)demo_rng_below(&r, CENTERS);
    for (int j = 0; j < d; j++)
      g_x[(size_t)i * d + j] = c[k * d + j] + demo_rng_normal(&r);
  }
  /* The sample: a seeded shuffle's first g_m indices. */
  for (int i = 0; i < n; i++)
    g_sample[i] = i;
  for (int i = n - 1; i > 0; i--) {
    int k = (int)demo_rng_below(&r, (uint64_t)i + 1), t = g_sample[i];
    g_sample[i] = g_sample[k];
    g_sample[k] = t;
  }
  g_m = n < SAMPLE ? n : SAMPLE;
  free(c);
}

/* Returns the squared distance between d-vectors a and b. */
static double dist2(const double *a, const double *b, int d) {
  double s = 0;
  for (int j = 0; j < d; j++) {
    double t = a[j] - b[j];
    s += t * t;
  }
  return s;
}

/* k-means++: picks k initial centers from the points into c (k x d). */
static void kmeanspp(double *c, int k, demo_rng *r, double *mind) {
  int n = g_n, d = g_d;
  int first = (int)demo_rng_below(r, (uint64_t)n);
  memcpy(c, &g_x[(size_t)first * d], sizeof(double) * (size_t)d);
  for (int i = 0; i < n; i++)
    mind[i] = dist2(&g_x[(size_t)i * d], c, d);
  for (int m = 1; m < k; m++) {
    double total = 0, pick;
    int chosen = n - 1;
    for (int i = 0; i < n; i++)
      total += mind[i];
    pick = demo_rng_uniform(r) * total;
    for (int i = 0; i < n; i++) {
      pick -= mind[i];
      if (pick < 0) {
        chosen = i;
        break;
      }
    }
    memcpy(&c[(size_t)m * d], &g_x[(size_t)chosen * d],
           sizeof(double) * (size_t)d);
    for (int i = 0; i < n; i++) {
      double t = dist2(&g_x[(size_t)i * d], &c[(size_t)m * d], d);
      if (t < mind[i])
        mind[i] = t;
    }
  }
}

/* One k-means run from a k-means++ start: Lloyd iterations until stable.
 * Leaves the labels in lab and returns the inertia; *iters gets the
 * iteration count. */
static double lloyd(int k, demo_rng *r, int *lab, int64_t *iters) {
  int n = g_n, d = g_d;
  double *c = malloc(sizeof(double) * (size_t)k * d);
  double *sum = malloc(sizeof(double) * (size_t)k * d);
  double *mind = malloc(sizeof(double) * (size_t)n);
  int *cnt = malloc(sizeof(int) * (size_t)k);
  double inertia = 0;
  int it;
  if (c == NULL || sum == NULL || mind == NULL || cnt == NULL) {
    fprintf(stderr, "kmeans: out of memory\n");
    exit(2);
  }
  kmeanspp(c, k, r, mind);
  for (int i = 0; i < n; i++)
    lab[i] = -1;
  for (it = 1; it <= MAX_ITER; it++) {
    int changed = 0;
    inertia = 0;
    for (int i = 0; i < n; i++) {
      double best = DBL_MAX;
      int bj = 0;
      for (int j = 0; j < k; j++) {
        double t = dist2(&g_x[(size_t)i * d], &c[(size_t)j * d], d);
        if (t < best)
          best = t, bj = j;
      }
      changed += lab[i] != bj;
      lab[i] = bj;
      inertia += best;
    }
    if (!changed)
      break;
    memset(sum, 0, sizeof(double) * (size_t)k * d);
    memset(cnt, 0, sizeof(int) * (size_t)k);
    for (int i = 0; i < n; i++) {
      cnt[lab[i]]++;
      for (int j = 0; j < d; j++)
        sum[(size_t)lab[i] * d + j] += g_x[(size_t)i * d + j];
    }
    for (int j = 0; j < k; j++)
      if (cnt[j] > 0) /* an empty cluster keeps its old center */
        for (int q = 0; q < d; q++)
          c[(size_t)j * d + q] = sum[(size_t)j * d + q] / cnt[j];
  }
  *iters = it > MAX_ITER ? MAX_ITER : it;
  free(c);
  free(sum);
  free(mind);
  free(cnt);
  return inertia;
}

/* Returns the mean silhouette coefficient of the labelling over the
 * sample (distances taken within the sample, as sklearn does). */
static double silhouette(const int *lab, int k) {
  int m = g_m, d = g_d;
  double *acc = malloc(sizeof(double) * (size_t)k);
  int *cnt = calloc((size_t)k, sizeof(int));
  double total = 0;
  if (acc == NULL || cnt == NULL) {
    fprintf(stderr, "kmeans: out of memory\n");
    exit(2);
  }
  for (int s = 0; s < m; s++)
    cnt[lab[g_sample[s]]]++;
  for (int s = 0; s < m; s++) {
    int i = g_sample[s], li = lab[i];
    double a, b = DBL_MAX;
    memset(acc, 0, sizeof(double) * (size_t)k);
    for (int t = 0; t < m; t++) {
      int j = g_sample[t];
      acc[lab[j]] += sqrt(dist2(&g_x[(size_t)i * d], &g_x[(size_t)j * d], d));
    }
    if (cnt[li] <= 1)
      continue; /* a singleton's coefficient is 0 */
    a = acc[li] / (cnt[li] - 1);
    for (int c = 0; c < k; c++)
      if (c != li && cnt[c] > 0 && acc[c] / cnt[c] < b)
        b = acc[c] / cnt[c];
    total += (b - a) / (a > b ? a : b);
  }
  free(acc);
  free(cnt);
  return total / m;
}

/* Task: k-means for k = *in (best of N_INIT seeded starts) and its
 * silhouette, into *out. */
static int kmeans_task(const void *in, void *out) {
  int k = (int)*(const int64_t *)in;
  kresult *res = out;
  int *lab = malloc(sizeof(int) * (size_t)g_n);
  int *best = malloc(sizeof(int) * (size_t)g_n);
  uint64_t s = SEED + (uint64_t)k;
  demo_rng r;
  if (lab == NULL || best == NULL)
    return fp_task_fail("out of memory");
  demo_rng_seed(&r, demo_splitmix64(&s));
  res->inertia = DBL_MAX;
  for (int init = 0; init < N_INIT; init++) {
    int64_t iters;
    double inertia = lloyd(k, &r, lab, &iters);
    if (inertia < res->inertia) {
      int *t = best;
      best = lab;
      lab = t;
      res->inertia = inertia;
      res->iterations = iters;
    }
  }
  res->silhouette = silhouette(best, k);
  free(lab);
  free(best);
  return 0;
}

/* Returns the k with the highest silhouette. */
static int best_k(const kresult *r) {
  int b = 0;
  for (int i = 1; i < NK; i++)
    if (r[i].silhouette > r[b].silhouette)
      b = i;
  return KMIN + b;
}

int main(int argc, char **argv) {
  demo_opts o;
  int64_t ks[NK];
  kresult seq_r[NK], par_r[NK];
  double seq, par, omp, t, seq_t[DEMO_REPEAT_MAX], par_t[DEMO_REPEAT_MAX];
  kresult omp_r[NK];
  int ok, kseq, kpar;
  fp_pool *pool;
  fp_call_opts co = {.chunksize = 1};

  demo_parse(argc, argv, &o, "kmeans: silhouette for k = 2..14 on blobs");
  demo_set_work(&o, NK, 0); /* one k per item */
  if (o.full)
    make_blobs(10000, 100);
  else
    make_blobs(3000, 20);
  /* Largest k first: the longest tasks start first (LPT scheduling). */
  for (int i = 0; i < NK; i++)
    ks[i] = KMAX - i;
  /* Before anything is printed or timed: with --transport mpi the worker
   * ranks, which built the same points above, serve in here. */
  pool = demo_pool_size(&o, demo_pool(&o, FP_PROGRESS_OFF, 1));
  demo_say(&o,
           "kmeans: %d points x %d dims, %d blobs; k = %d..%d, %d starts "
           "each, silhouette over %d points; %d workers, median of %d "
           "runs\n",
           g_n, g_d, CENTERS, KMIN, KMAX, N_INIT, g_m, o.workers, o.repeat);

  for (int rep = 0; rep < o.repeat; rep++) {
    t = demo_now();
    for (int i = 0; i < NK; i++)
      kmeans_task(&ks[i], &seq_r[NK - 1 - i]);
    seq_t[rep] = demo_now() - t;

    t = demo_now();
    demo_check(fp_pool_map(pool, kmeans_task, ks, NK, sizeof ks[0], par_r,
                           sizeof par_r[0], &co),
               "fp_pool_map");
    par_t[rep] = demo_now() - t;
  }
  seq = demo_median(seq_t, o.repeat);
  par = demo_median(par_t, o.repeat);
  fp_pool_close(pool);
  fp_pool_join(pool);
  fp_pool_free(pool);

  /* The reference: OpenMP threads over the same k values. */
  t = demo_now();
#pragma omp parallel for schedule(dynamic, 1) num_threads(o.workers)
  for (int i = 0; i < NK; i++)
    kmeans_task(&ks[i], &omp_r[NK - 1 - i]);
  omp = demo_now() - t;

  /* par_r is in ks order (largest k first); put it in k order. */
  for (int i = 0; i < NK / 2; i++) {
    kresult tmp = par_r[i];
    par_r[i] = par_r[NK - 1 - i];
    par_r[NK - 1 - i] = tmp;
  }
  ok = memcmp(seq_r, par_r, sizeof seq_r) == 0;
  demo_say(&o, "   k   inertia        silhouette  iterations\n");
  for (int i = 0; i < NK; i++)
    demo_say(&o, "  %2d   %-13.1f  %.4f      %lld\n", KMIN + i,
             par_r[i].inertia, par_r[i].silhouette,
             (long long)par_r[i].iterations);
  kseq = best_k(seq_r);
  kpar = best_k(par_r);
  demo_say(&o, "  best k: sequential %d, parallel %d (blobs: %d); scores %s\n",
           kseq, kpar, CENTERS,
           ok ? "bit-identical" : "DIFFER between sequential and parallel");
  ok &= kseq == kpar && kpar == CENTERS;
  ok &= memcmp(omp_r, seq_r, sizeof seq_r) == 0;
  demo_openmp(&o, seq, par, omp);
  return demo_result(&o, "kmeans", seq, par, ok);
}
