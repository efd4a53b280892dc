/* SPDX-License-Identifier: MIT */
/* kernels.h - CPU-bound benchmark kernels shared by rawbench and fpbench.
 *
 * Four honest CPU kernels, each split into independent tasks numbered
 * 0..ntasks-1 whose result is an int64 checksum, so that the sequential
 * loop, the OpenMP loop (rawbench) and the forkpool map (fpbench) run the
 * very same code over the very same tasks and can check each other's sums:
 *
 *   cumsum    a cumulative-sum loop; an empty asm statement that "modifies"
 *             the accumulator stops the compiler from folding the loop into
 *             a closed form or vectorising it away.
 *   bogosort  shuffles 8-int arrays until sorted (about 8! shuffles each);
 *             task times vary a lot, which tests load balancing.
 *   kmeans    one k-means assignment step over a block of points: nearest
 *             of K centroids, D dimensions, data in a global array.
 *   forest    builds one random-forest-like decision tree on a bootstrap
 *             sample of a global data set (Gini splits on random features).
 *
 * Global data (kmeans points, forest samples) is made by kernels_init(),
 * which a program calls once before it forks anything: forkpool workers
 * then read it through copy-on-write memory, exactly as the random-forest
 * demo relies on, and OpenMP threads read the same memory.
 *
 * Every function is static: this header is included by each benchmark
 * program on its own (the Makefile builds one program per .c file).
 */
#ifndef FP_BENCH_KERNELS_H
#define FP_BENCH_KERNELS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Task counts and sizes; kernels_init(quick) picks them. */
typedef struct kernel_def {
  const char *name;
  int64_t (*fn)(int64_t task);
  int64_t ntasks;
} kernel_def;

static uint64_t kcum_iters;
static int kbogo_arrays;

#define KM_D 8
#define KM_K 16
#define KM_BLOCK 4096
static float *km_pts;
static size_t km_n;
static float km_cent[KM_K * KM_D];

#define RF_N 8192
#define RF_F 16
#define RF_S 4096
#define RF_DEPTH 10
#define RF_TRIES 4
#define RF_THR 8
static float *rf_x; /* RF_N x RF_F */
static unsigned char *rf_y;

/* splitmix64: seeds from a task number; xorshift64*: the stream. */
static inline uint64_t k_splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static inline uint64_t k_rand(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545f4914f6cdd1dULL;
}

/* cumsum: kcum_iters additions that the compiler must perform one by one. */
static int64_t k_cumsum(int64_t task) {
  uint64_t acc = (uint64_t)task;
  for (uint64_t i = 0; i < kcum_iters; i++) {
    acc += i ^ (uint64_t)task;
    __asm__ volatile("" : "+r"(acc));
  }
  return (int64_t)(acc & 0x7fffffff);
}

/* bogosort: kbogo_arrays arrays of 8 ints, each shuffled (Fisher-Yates)
 * until sorted. Returns the number of shuffles, deterministic per task. */
static int64_t k_bogosort(int64_t task) {
  uint64_t s = k_splitmix((uint64_t)task) | 1;
  int64_t shuffles = 0;
  for (int rep = 0; rep < kbogo_arrays; rep++) {
    int a[8];
    for (int j = 0; j < 8; j++)
      a[j] = (int)(k_rand(&s) % 1000);
    for (;;) {
      int sorted = 1;
      for (int j = 1; j < 8; j++)
        if (a[j - 1] > a[j]) {
          sorted = 0;
          break;
        }
      if (sorted)
        break;
      for (int j = 7; j > 0; j--) {
        int k = (int)(k_rand(&s) % (uint64_t)(j + 1));
        int t = a[j];
        a[j] = a[k];
        a[k] = t;
      }
      shuffles++;
    }
  }
  return shuffles;
}

/* kmeans: assigns the points of block (task mod nblocks) to their nearest
 * centroid; returns the sum of the chosen centroid numbers. */
static int64_t k_kmeans(int64_t task) {
  size_t nblocks = km_n / KM_BLOCK;
  size_t b = (size_t)task % nblocks;
  const float *p = km_pts + b * KM_BLOCK * KM_D;
  int64_t sum = 0;
  for (size_t i = 0; i < KM_BLOCK; i++, p += KM_D) {
    float best = 1e30f;
    int bk = 0;
    for (int k = 0; k < KM_K; k++) {
      float d = 0;
      for (int j = 0; j < KM_D; j++) {
        float t = p[j] - km_cent[k * KM_D + j];
        d += t * t;
      }
      if (d < best) {
        best = d;
        bk = k;
      }
    }
    sum += bk;
  }
  return sum;
}

/* forest: builds one decision tree of depth <= RF_DEPTH on a bootstrap
 * sample of RF_S of the RF_N samples. At each node it tries RF_TRIES random
 * features with RF_THR thresholds taken from random samples of the node,
 * keeps the split of lowest Gini impurity and partitions in place. Returns
 * a checksum of the tree (nodes and split positions). */
static int64_t k_forest(int64_t task) {
  uint64_t s = k_splitmix((uint64_t)task + 77) | 1;
  int idx[RF_S];
  struct {
    int lo, hi, depth;
  } stack[2 * RF_DEPTH + 2];
  int sp = 0;
  int64_t check = 0;
  for (int i = 0; i < RF_S; i++)
    idx[i] = (int)(k_rand(&s) % RF_N);
  stack[sp].lo = 0;
  stack[sp].hi = RF_S;
  stack[sp].depth = 0;
  sp++;
  while (sp > 0) {
    sp--;
    int lo = stack[sp].lo, hi = stack[sp].hi, depth = stack[sp].depth;
    int n = hi - lo;
    check += n;
    if (depth >= RF_DEPTH || n < 16)
      continue;
    double best = 2.0;
    int bf = -1;
    float bt = 0;
    for (int t = 0; t < RF_TRIES; t++) {
      int f = (int)(k_rand(&s) % RF_F);
      for (int c = 0; c < RF_THR; c++) {
        float thr = rf_x[idx[lo + (int)(k_rand(&s) % (uint64_t)n)] * RF_F + f];
        int nl = 0, nl1 = 0, nr1 = 0;
        for (int i = lo; i < hi; i++) {
          int r = idx[i];
          int left = rf_x[r * RF_F + f] <= thr;
          nl += left;
          nl1 += left & rf_y[r];
          nr1 += (!left) & rf_y[r];
        }
        int nr = n - nl;
        if (nl == 0 || nr == 0)
          continue;
        double pl = (double)nl1 / nl, pr = (double)nr1 / nr;
        double g = (nl * 2 * pl * (1 - pl) + nr * 2 * pr * (1 - pr)) / n;
        if (g < best) {
          best = g;
          bf = f;
          bt = thr;
        }
      }
    }
    if (bf < 0)
      continue;
    int i = lo, j = hi - 1;
    while (i <= j) {
      if (rf_x[idx[i] * RF_F + bf] <= bt) {
        i++;
      } else {
        int tmp = idx[i];
        idx[i] = idx[j];
        idx[j] = tmp;
        j--;
      }
    }
    check += (i - lo) * 31 + bf;
    stack[sp].lo = lo;
    stack[sp].hi = i;
    stack[sp].depth = depth + 1;
    sp++;
    stack[sp].lo = i;
    stack[sp].hi = hi;
    stack[sp].depth = depth + 1;
    sp++;
  }
  return check;
}

static kernel_def kernels[] = {
    {"cumsum", k_cumsum, 0},
    {"bogosort", k_bogosort, 0},
    {"kmeans", k_kmeans, 0},
    {"forest", k_forest, 0},
};
#define NKERNELS ((int)(sizeof kernels / sizeof kernels[0]))

/* Makes the global data and sets the sizes: about 0.5 s of sequential work
 * per kernel on this kind of machine, about 0.1 s in quick mode. Returns 0,
 * or -1 when memory runs out. */
static int kernels_init(int quick) {
  uint64_t s = 12345;
  kcum_iters = 1u << 23;
  kbogo_arrays = 2;
  km_n = (size_t)64 * KM_BLOCK;
  km_pts = malloc(km_n * KM_D * sizeof *km_pts);
  rf_x = malloc((size_t)RF_N * RF_F * sizeof *rf_x);
  rf_y = malloc(RF_N);
  if (!km_pts || !rf_x || !rf_y)
    return -1;
  for (size_t i = 0; i < km_n * KM_D; i++)
    km_pts[i] = (float)(k_rand(&s) % 10000) / 100.0f;
  for (int i = 0; i < KM_K * KM_D; i++)
    km_cent[i] = (float)(k_rand(&s) % 10000) / 100.0f;
  for (int i = 0; i < RF_N; i++) {
    float sum = 0;
    for (int f = 0; f < RF_F; f++) {
      float v = (float)(k_rand(&s) % 1000) / 10.0f;
      rf_x[i * RF_F + f] = v;
      if (f < 3)
        sum += v;
    }
    rf_y[i] = (unsigned char)(sum + (float)(k_rand(&s) % 60) > 180.0f);
  }
  kernels[0].ntasks = quick ? 48 : 192;
  kernels[1].ntasks = quick ? 40 : 160;
  kernels[2].ntasks = quick ? 768 : 3072;
  kernels[3].ntasks = quick ? 48 : 192;
  return 0;
}

/* Returns the kernel called name, or NULL. */
static kernel_def *kernel_find(const char *name) {
  for (int i = 0; i < NKERNELS; i++)
    if (strcmp(kernels[i].name, name) == 0)
      return &kernels[i];
  return NULL;
}

#endif /* FP_BENCH_KERNELS_H */
