/* SPDX-License-Identifier: MIT */
/* forest.c - a random forest of CART regression trees trained in parallel:
 * the seed's "which n_estimators is best" grid and the lecture's
 * train_in_parallel, in C.
 *
 * Data: Friedman #1 (sklearn's make_friedman1): x uniform in [0,1)^10,
 *   y = 10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + N(0, 1),
 * drawn from a fixed seed; the last 20 % of the rows are held out. The
 * arrays are global and filled BEFORE fp_pool_new(): every worker is forked
 * with them already in memory (copy-on-write), so no task ever ships the
 * training set, exactly as the Python seed relies on fork inheritance.
 *
 * Trees: CART regression (variance reduction), each on a bootstrap sample
 * of the training rows, with a random subset of MTRY features tried at
 * every split, MAX_DEPTH levels at most and MIN_LEAF rows per leaf. A
 * tree's randomness comes only from its own seed, derived from its index,
 * so tree t is the same tree whoever trains it and wherever: sequential
 * and parallel results must agree to the last bit, and the demo checks it.
 *
 * Two ways to parallelise, both timed against their sequential loop:
 *   (a) one whole model per task: fp_pool_starmap over (n_estimators, seed)
 *       tuples, each task returning the model's held-out R^2 - the seed's
 *       grid search. The grid is submitted largest first with one task in
 *       flight per worker, so the big models do not end up queued behind
 *       each other (the longest-processing-time-first rule).
 *   (b) one tree per task: fp_pool_map_values over tree indices, each task
 *       returning its tree serialised as a codec bytes value; the master
 *       decodes the trees and assembles the forest - train_in_parallel.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/demo.h"

#define NFEAT 10
#define MTRY 5 /* features tried per split (max_features=0.5) */
#define MAX_DEPTH 10
#define MIN_LEAF 5
#define DATA_SEED 20240601ULL
#define TREE_SEED 7ULL

/* One node of a tree. Leaves have feature -1. Nodes live in one array and
 * refer to their children by index, so a tree serialises as its raw array
 * (both ends are the same binary: the layout is the same). */
typedef struct node {
  int32_t feature;
  int32_t left, right;
  int32_t pad;
  double threshold;
  double value;
} node;

typedef struct tree {
  node *nodes;
  int n, cap;
} tree;

/* The dataset: globals filled before the pool exists (fork inheritance). */
static double *g_x; /* nrows x NFEAT, row-major */
static double *g_y;
static int g_ntrain, g_ntest;

/* Scratch of one training run: the (x, y) pairs of a node, sorted. */
typedef struct pair {
  double x, y;
} pair;

/* Fills the global dataset with Friedman #1 rows from a fixed seed. */
static void make_friedman1(int nrows) {
  demo_rng r;
  demo_rng_seed(&r, DATA_SEED);
  g_x = malloc(sizeof(double) * (size_t)nrows * NFEAT);
  g_y = malloc(sizeof(double) * (size_t)nrows);
  if (g_x == NULL || g_y == NULL) {
    fprintf(stderr, "forest: out of memory\n");
    exit(2);
  }
  for (int i = 0; i < nrows; i++) {
    double *x = &g_x[(size_t)i * NFEAT];
    for (int j = 0; j < NFEAT; j++)
      x[j] = demo_rng_uniform(&r);
    g_y[i] = 10 * sin(M_PI * x[0] * x[1]) + 20 * (x[2] - 0.5) * (x[2] - 0.5) +
             10 * x[3] + 5 * x[4] + demo_rng_normal(&r);
  }
  g_ntest = nrows / 5;
  g_ntrain = nrows - g_ntest;
}

/* Appends a node and returns its index; exits on allocation failure. */
static int tree_push(tree *t) {
  if (t->n == t->cap) {
    t->cap = t->cap ? 2 * t->cap : 64;
    t->nodes = realloc(t->nodes, sizeof(node) * (size_t)t->cap);
    if (t->nodes == NULL) {
      fprintf(stderr, "forest: out of memory\n");
      exit(2);
    }
  }
  memset(&t->nodes[t->n], 0, sizeof(node));
  return t->n++;
}

/* qsort order of pairs by x. */
static int pair_cmp(const void *a, const void *b) {
  double u = ((const pair *)a)->x, v = ((const pair *)b)->x;
  return (u > v) - (u < v);
}

/* Grows the subtree of rows idx[0..n) at depth `depth` and returns its
 * node index. `buf` is scratch of at least n pairs. */
static int grow(tree *t, int *idx, int n, int depth, demo_rng *r, pair *buf) {
  int id = tree_push(t), feats[NFEAT];
  int best_f = -1;
  double sum = 0, best_score, best_thr = 0;

  for (int i = 0; i < n; i++)
    sum += g_y[idx[i]];
  t->nodes[id].feature = -1;
  t->nodes[id].value = sum / n;
  if (depth >= MAX_DEPTH || n < 2 * MIN_LEAF)
    return id;

  /* A parent with no split scores sum^2/n; a split must beat it. */
  best_score = sum * sum / n * (1 + 1e-12);
  for (int j = 0; j < NFEAT; j++)
    feats[j] = j;
  for (int k = 0; k < MTRY; k++) {
    /* Partial Fisher-Yates: feats[k] is a new random feature. */
    int j = k + (int)demo_rng_below(r, NFEAT - k), f = feats[j];
    double left = 0;
    feats[j] = feats[k];
    feats[k] = f;
    for (int i = 0; i < n; i++) {
      buf[i].x = g_x[(size_t)idx[i] * NFEAT + f];
      buf[i].y = g_y[idx[i]];
    }
    qsort(buf, (size_t)n, sizeof(pair), pair_cmp);
    for (int i = 0; i < n - MIN_LEAF; i++) {
      double score;
      left += buf[i].y;
      if (i + 1 < MIN_LEAF || buf[i].x == buf[i + 1].x)
        continue;
      /* Maximising sumL^2/nL + sumR^2/nR minimises the squared error. */
      score = left * left / (i + 1) + (sum - left) * (sum - left) / (n - i - 1);
      if (score > best_score) {
        best_score = score;
        best_f = f;
        best_thr = 0.5 * (buf[i].x + buf[i + 1].x);
      }
    }
  }
  if (best_f < 0)
    return id;

  /* Partition idx: rows going left first. */
  int lo = 0, hi = n - 1;
  while (lo <= hi) {
    if (g_x[(size_t)idx[lo] * NFEAT + best_f] <= best_thr) {
      lo++;
    } else {
      int tmp = idx[lo];
      idx[lo] = idx[hi];
      idx[hi--] = tmp;
    }
  }
  int l = grow(t, idx, lo, depth + 1, r, buf);
  int rr = grow(t, idx + lo, n - lo, depth + 1, r, buf);
  /* t->nodes may have moved: index it again. */
  t->nodes[id].feature = best_f;
  t->nodes[id].threshold = best_thr;
  t->nodes[id].left = l;
  t->nodes[id].right = rr;
  return id;
}

/* Trains tree number `index` of the forest: a bootstrap sample of the
 * training rows drawn from the tree's own seed, then grow(). The caller
 * frees t->nodes. */
static void train_tree(tree *t, int64_t index) {
  uint64_t s = TREE_SEED ^ (uint64_t)index * 0x9e3779b97f4a7c15ULL;
  demo_rng r;
  int *idx = malloc(sizeof(int) * (size_t)g_ntrain);
  pair *buf = malloc(sizeof(pair) * (size_t)g_ntrain);
  if (idx == NULL || buf == NULL) {
    fprintf(stderr, "forest: out of memory\n");
    exit(2);
  }
  demo_rng_seed(&r, demo_splitmix64(&s));
  for (int i = 0; i < g_ntrain; i++)
    idx[i] = (int)demo_rng_below(&r, (uint64_t)g_ntrain);
  memset(t, 0, sizeof *t);
  grow(t, idx, g_ntrain, 0, &r, buf);
  free(idx);
  free(buf);
}

/* Returns the tree's prediction for row x. */
static double predict(const node *nodes, const double *x) {
  int i = 0;
  while (nodes[i].feature >= 0)
    i = x[nodes[i].feature] <= nodes[i].threshold ? nodes[i].left
                                                  : nodes[i].right;
  return nodes[i].value;
}

/* Returns the held-out R^2 of the forest of ntrees trees, averaging their
 * predictions in tree order (so the sum is the same bit for bit however
 * the trees were trained). */
static double forest_r2(node *const *trees, int ntrees) {
  double mean = 0, sse = 0, sst = 0;
  for (int i = 0; i < g_ntest; i++)
    mean += g_y[g_ntrain + i];
  mean /= g_ntest;
  for (int i = 0; i < g_ntest; i++) {
    const double *x = &g_x[(size_t)(g_ntrain + i) * NFEAT];
    double p = 0, yt = g_y[g_ntrain + i];
    for (int k = 0; k < ntrees; k++)
      p += predict(trees[k], x);
    p /= ntrees;
    sse += (yt - p) * (yt - p);
    sst += (yt - mean) * (yt - mean);
  }
  return 1 - sse / sst;
}

/* Trains a whole forest of n trees (trees 0..n-1) and returns its R^2:
 * one model of the grid search. */
static double model_r2(int n) {
  node **trees = calloc((size_t)n, sizeof(node *));
  double r2;
  for (int k = 0; k < n; k++) {
    tree t;
    train_tree(&t, k);
    trees[k] = t.nodes;
  }
  r2 = forest_r2(trees, n);
  for (int k = 0; k < n; k++)
    free(trees[k]);
  free(trees);
  return r2;
}

/* starmap task (a): args are the tuple (n_estimators, seed); writes the
 * model's R^2. The seed is carried to mirror the Python call
 * RandomForestRegressor(n_estimators=n, random_state=seed). */
static int model_task(fp_reader *args, fp_writer *out) {
  int64_t n, seed;
  int rc = fp_unpack(args, "i i", &n, &seed);
  if (rc < 0)
    return rc;
  if (n < 1 || n > 100000)
    return fp_task_fail("bad n_estimators %lld", (long long)n);
  return fp_write_float(out, model_r2((int)n));
}

/* map_values task (b): args is a tree index; writes the tree as bytes. */
static int tree_task(fp_reader *args, fp_writer *out) {
  int64_t index;
  tree t;
  int rc = fp_read_int(args, &index);
  if (rc < 0)
    return rc;
  train_tree(&t, index);
  rc = fp_write_bytes(out, t.nodes, sizeof(node) * (size_t)t.n);
  free(t.nodes);
  return rc;
}

/* (b) sequentially: trains trees 0..ntrees-1 into trees[] (sizes[] gets
 * their node counts) and returns the forest's R^2. */
static double trees_seq(int ntrees, node **trees, int *sizes) {
  for (int k = 0; k < ntrees; k++) {
    tree tr;
    train_tree(&tr, k);
    trees[k] = tr.nodes;
    sizes[k] = tr.n;
  }
  return forest_r2(trees, ntrees);
}

/* (b) on the pool: one tree per task; the master decodes each tree into
 * trees[] and returns the forest's R^2. *same is cleared when a tree
 * differs from ref[] (sizes in ref_sizes). */
static double trees_par(fp_pool *pool, int ntrees, node **trees,
                        node *const *ref, const int *ref_sizes, int *same) {
  fp_writer items, out;
  fp_reader rd;
  double r2;
  fp_writer_init(&items);
  fp_writer_init(&out);
  for (int k = 0; k < ntrees; k++)
    fp_write_int(&items, k);
  demo_check(fp_pool_map_values(pool, tree_task, &items, &out, NULL),
             "fp_pool_map_values");
  fp_reader_init(&rd, out.data, out.len);
  for (int k = 0; k < ntrees; k++) {
    const void *p;
    size_t len;
    demo_check(fp_read_bytes(&rd, &p, &len), "reading a tree");
    trees[k] = malloc(len);
    if (trees[k] == NULL) {
      fprintf(stderr, "forest: out of memory\n");
      exit(2);
    }
    memcpy(trees[k], p, len); /* decode: the bytes are the node array */
    if (len != sizeof(node) * (size_t)ref_sizes[k] ||
        memcmp(trees[k], ref[k], len) != 0)
      *same = 0;
  }
  r2 = forest_r2(trees, ntrees);
  fp_writer_free(&items);
  fp_writer_free(&out);
  return r2;
}

/* Frees the node arrays of n trees. */
static void free_trees(node **trees, int n) {
  for (int k = 0; k < n; k++) {
    free(trees[k]);
    trees[k] = NULL;
  }
}

int main(int argc, char **argv) {
  static const int grid_small[] = {200, 100, 50, 20, 10};
  static const int grid_full[] = {200, 100, 50, 20, 10};
  demo_opts o;
  const int *grid;
  int ngrid, ntrees, nrows, ok = 1, trees_in_grid = 0;
  double sa[DEMO_REPEAT_MAX], pa[DEMO_REPEAT_MAX];
  double sb[DEMO_REPEAT_MAX], pb[DEMO_REPEAT_MAX], tot_s[DEMO_REPEAT_MAX],
      tot_p[DEMO_REPEAT_MAX];
  double seq_a, par_a, seq_b, par_b, t, r2_b_seq = 0, r2_b_par = 0, omp;
  double r2_omp[8];
  double r2_seq[8], r2_par[8];
  node **seq_trees, **par_trees;
  int *seq_sizes;
  fp_pool *pool;
  fp_writer items, out;
  fp_reader rd;
  fp_call_opts one = {.chunksize = 1};

  demo_parse(argc, argv, &o,
             "forest: random forest grid and per-tree "
             "training on Friedman #1");
  nrows = o.full ? 10000 : 2000;
  grid = o.full ? grid_full : grid_small;
  ngrid = 5;
  ntrees = o.full ? 200 : 100;
  for (int i = 0; i < ngrid; i++)
    trees_in_grid += grid[i];
  demo_set_work(&o, trees_in_grid + ntrees, 0); /* trees trained per side */

  /* 1. Data first, then the pool: workers inherit g_x and g_y. */
  make_friedman1(nrows);
  demo_say(&o,
           "forest: Friedman #1, %d training rows x %d features, %d held "
           "out; trees: depth <= %d, leaf >= %d, %d features per split; "
           "median of %d runs\n",
           g_ntrain, NFEAT, g_ntest, MAX_DEPTH, MIN_LEAF, MTRY, o.repeat);
  pool = demo_pool(&o, FP_PROGRESS_OFF, 1);
  seq_trees = calloc((size_t)ntrees, sizeof(node *));
  par_trees = calloc((size_t)ntrees, sizeof(node *));
  seq_sizes = malloc(sizeof(int) * (size_t)ntrees);
  if (seq_trees == NULL || par_trees == NULL || seq_sizes == NULL) {
    fprintf(stderr, "forest: out of memory\n");
    return 2;
  }
  fp_writer_init(&items);
  fp_writer_init(&out);

  for (int rep = 0; rep < o.repeat; rep++) {
    /* 2. (a) The grid, sequentially, then one model per task. */
    t = demo_now();
    for (int i = 0; i < ngrid; i++)
      r2_seq[i] = model_r2(grid[i]);
    sa[rep] = demo_now() - t;

    t = demo_now();
    fp_writer_reset(&items);
    fp_writer_reset(&out);
    for (int i = 0; i < ngrid; i++)
      fp_pack(&items, "[i i]", (int64_t)grid[i], (int64_t)TREE_SEED);
    demo_check(fp_pool_starmap(pool, model_task, &items, &out, &one),
               "fp_pool_starmap");
    fp_reader_init(&rd, out.data, out.len);
    for (int i = 0; i < ngrid; i++)
      demo_check(fp_read_float(&rd, &r2_par[i]), "reading R^2");
    pa[rep] = demo_now() - t;
    ok &= memcmp(r2_seq, r2_par, sizeof(double) * (size_t)ngrid) == 0;

    /* 3. (b) One tree per task, assembled into a forest in the master. */
    free_trees(seq_trees, ntrees);
    free_trees(par_trees, ntrees);
    t = demo_now();
    r2_b_seq = trees_seq(ntrees, seq_trees, seq_sizes);
    sb[rep] = demo_now() - t;
    t = demo_now();
    r2_b_par = trees_par(pool, ntrees, par_trees, seq_trees, seq_sizes, &ok);
    pb[rep] = demo_now() - t;
    ok &= memcmp(&r2_b_seq, &r2_b_par, sizeof(double)) == 0;
    tot_s[rep] = sa[rep] + sb[rep];
    tot_p[rep] = pa[rep] + pb[rep];
  }
  seq_a = demo_median(sa, o.repeat);
  par_a = demo_median(pa, o.repeat);
  seq_b = demo_median(sb, o.repeat);
  par_b = demo_median(pb, o.repeat);

  demo_say(&o, "(a) one model per task, starmap over n_estimators:\n");
  for (int i = 0; i < ngrid; i++) {
    int same = memcmp(&r2_seq[i], &r2_par[i], sizeof(double)) == 0;
    demo_say(&o, "    n_estimators=%3d  R^2=%.6f  %s\n", grid[i], r2_par[i],
             same ? "(bit-identical to sequential)" : "DIFFERS");
  }
  demo_say(&o, "    sequential %.3f s, parallel %.3f s, speedup %.2fx%s\n",
           seq_a, par_a, seq_a / par_a,
           demo_noise(o.workers, seq_a / par_a, 0));
  demo_say(&o, "(b) one tree per task, map_values, forest assembled in the "
               "master:\n");
  demo_say(&o, "    %d trees, R^2 sequential %.6f, parallel %.6f %s\n", ntrees,
           r2_b_seq, r2_b_par,
           memcmp(&r2_b_seq, &r2_b_par, sizeof(double)) == 0 ? "(bit-identical)"
                                                             : "DIFFERS");
  /* Model n of the grid is made of trees 0..n-1, the same trees as (b). */
  for (int i = 0; i < ngrid; i++)
    if (grid[i] == ntrees)
      ok &= memcmp(&r2_par[i], &r2_b_par, sizeof(double)) == 0;
  demo_say(&o, "    sequential %.3f s, parallel %.3f s, speedup %.2fx%s\n",
           seq_b, par_b, seq_b / par_b,
           demo_noise(o.workers, seq_b / par_b, 0));

  fp_pool_close(pool);
  fp_pool_join(pool);
  fp_pool_free(pool);
  free_trees(seq_trees, ntrees);
  free_trees(par_trees, ntrees);
  free(seq_trees);
  free(par_trees);
  free(seq_sizes);
  fp_writer_free(&items);
  fp_writer_free(&out);
  /* The reference: OpenMP threads over the same grid and the same trees,
   * after the pool is gone (run once: it is a reference, not a side). */
  t = demo_now();
#pragma omp parallel for schedule(dynamic, 1) num_threads(o.workers)
  for (int i = 0; i < ngrid; i++)
    r2_omp[i] = model_r2(grid[i]);
#pragma omp parallel for schedule(dynamic, 1) num_threads(o.workers)
  for (int k = 0; k < ntrees; k++) {
    tree tr;
    train_tree(&tr, k);
    free(tr.nodes);
  }
  omp = demo_now() - t;
  ok &= memcmp(r2_omp, r2_seq, sizeof(double) * (size_t)ngrid) == 0;

  /* The totals: the median of the per-run sums (a) + (b). */
  demo_openmp(&o, demo_median(tot_s, o.repeat), demo_median(tot_p, o.repeat),
              omp);
  demo_say(&o, "total (a) + (b):\n");
  return demo_result(&o, "forest", demo_median(tot_s, o.repeat),
                     demo_median(tot_p, o.repeat), ok);
}
