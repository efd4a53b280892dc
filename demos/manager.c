/* SPDX-License-Identifier: MIT */
/* manager.c - the seed lecture's Manager example: a shared list, dict,
 * counter (Value('i', 0)) and lock updated by pool workers (twin of
 * demos/python/manager.py).
 *
 * The manager is created before the pool, so every worker inherits its
 * arena and the handles below (plain globals) are valid in every worker.
 * Each phase runs one task per worker through fp_pool_starmap, each task
 * doing `iters` updates:
 *
 *   1. plain get-then-set of d["plain"] and of the counter, no lock: the
 *      classic lost-update race. The demo reports expected vs got; losing
 *      updates is the point, so this phase is not checked.
 *   2. the same get-then-set inside fp_lock_acquire/fp_lock_release
 *      (Python: `with lock: d[k] = d[k] + 1`): exact, checked.
 *   3. the atomic helpers fp_dict_add_int and fp_counter_add (no Python
 *      equivalent on a Manager: exact without any user lock): checked.
 *   4. results: workers store d["sq:<i>"] = i*i and append i*i to the
 *      shared list for their slice of range(n); the master checks every
 *      key and that every value is in the list exactly once. Also run by
 *      the master alone: every append takes the list's one lock, so this
 *      phase shows what does not scale.
 *   5. scaling: each worker adds to its own 32768 keys of the shared dict
 *      (fp_dict_add_int on existing keys: one compare-and-swap on the
 *      key's own cache line, no lock), 10x the updates of the other
 *      phases; the master does the same total alone: that is seq vs par
 *      in the RESULT line. Checked.
 *
 * Output: one line per phase with its time and rate, then
 *   RESULT manager seq=<s> par=<s> speedup=<x> check=ok|FAIL
 * Exit status 1 when a checked phase is wrong.
 *
 * Usage: manager [--workers N] [--full] [--quiet]
 *   Default: 200,000 updates and 200,000 results per worker per phase
 *   (well under a second); --full: 2,000,000 of each.
 */
#include <forkpool.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/demo.h"

/* Created before the pool, inherited by every worker. */
static fp_manager *mgr;
static fp_dict *shared_dict;
static fp_list *shared_list;
static fp_counter *shared_value;
static fp_lock *shared_lock;

enum { PH_PLAIN, PH_LOCKED, PH_ATOMIC, PH_RESULTS, PH_SCALE };

/* Phase 5: keys per worker ("u:<first + j>", j < SCALE_KEYS): enough that
 * the dict's stripes have page-sized tables, as in a real tally. */
#define SCALE_KEYS 32768

#define KEY(s) s, sizeof(s) - 1

/* Phase 5 for one worker: count adds of 1 spread over its own keys
 * "u:<first>" .. "u:<first + SCALE_KEYS - 1>" (formatted once). */
static int scale_task(int64_t first, int64_t count) {
  char(*key)[24] = malloc(SCALE_KEYS * sizeof(*key));
  size_t *klen = malloc(SCALE_KEYS * sizeof(*klen));
  int rc = key != NULL && klen != NULL ? 0 : FP_ENOMEM;

  for (int j = 0; rc == 0 && j < SCALE_KEYS; j++)
    klen[j] = (size_t)snprintf(key[j], sizeof(key[j]), "u:%lld",
                               (long long)(first + j));
  for (int64_t i = 0; i < count && rc == 0; i++)
    rc = fp_dict_add_int(shared_dict, key[i % SCALE_KEYS],
                         klen[i % SCALE_KEYS], 1, NULL);
  free(key);
  free(klen);
  return rc;
}

/* One phase's work for one worker: args are (phase, first, count). */
static int phase_task(fp_reader *args, fp_writer *out) {
  int64_t phase, first, count, v;
  int rc = fp_unpack(args, "i i i", &phase, &first, &count);
  if (rc != 0)
    return rc;
  if (phase == PH_SCALE) {
    rc = scale_task(first, count);
    count = 0;
  }
  for (int64_t i = 0; i < count && rc == 0; i++) {
    switch (phase) {
    case PH_PLAIN: /* d["plain"] += 1 and value += 1, racy on purpose */
      if (fp_dict_get_int(shared_dict, KEY("plain"), &v) == 0)
        rc = fp_dict_set_int(shared_dict, KEY("plain"), v + 1);
      if (rc == 0 && (rc = fp_counter_get(shared_value, &v)) == 0)
        rc = fp_counter_set(shared_value, v + 1);
      break;
    case PH_LOCKED: /* with lock: d["locked"] += 1 */
      if ((rc = fp_lock_acquire(shared_lock, FP_FOREVER)) != 0)
        break;
      if ((rc = fp_dict_get_int(shared_dict, KEY("locked"), &v)) == 0)
        rc = fp_dict_set_int(shared_dict, KEY("locked"), v + 1);
      fp_lock_release(shared_lock);
      break;
    case PH_ATOMIC:
      rc = fp_dict_add_int(shared_dict, KEY("atomic"), 1, NULL);
      if (rc == 0)
        rc = fp_counter_add(shared_value, 1, NULL);
      break;
    default: { /* PH_RESULTS */
      char key[32];
      unsigned char enc[9] = {FP_INT};
      int64_t x = first + i, sq = x * x;
      int n = snprintf(key, sizeof(key), "sq:%lld", (long long)x);
      for (int b = 0; b < 8; b++)
        enc[1 + b] = (unsigned char)((uint64_t)sq >> (8 * b));
      rc = fp_dict_set(shared_dict, key, (size_t)n, enc, sizeof(enc));
      if (rc == 0)
        rc = fp_list_append(shared_list, enc, sizeof(enc));
    }
    }
  }
  return rc != 0
             ? fp_task_fail("phase %lld: %s", (long long)phase, fp_strerror(rc))
             : fp_write_nil(out);
}

/* Runs one phase on the pool: `total` updates split across the workers.
 * Returns the elapsed seconds. */
static double run_phase(fp_pool *pool, int workers, int64_t phase,
                        int64_t total) {
  fp_call_opts co = {.chunksize = 1};
  fp_writer items, out;
  double t0;

  fp_writer_init(&items);
  fp_writer_init(&out);
  for (int w = 0; w < workers; w++) {
    int64_t first = total * w / workers, last = total * (w + 1) / workers;
    demo_check(fp_pack(&items, "[ i i i ]", phase, first, last - first),
               "fp_pack");
  }
  t0 = demo_now();
  demo_check(fp_pool_starmap(pool, phase_task, &items, &out, &co),
             "fp_pool_starmap");
  t0 = demo_now() - t0;
  fp_writer_free(&items);
  fp_writer_free(&out);
  return t0;
}

static int64_t dict_int(const char *key) {
  int64_t v = -1;
  demo_check(fp_dict_get_int(shared_dict, key, strlen(key), &v),
             "fp_dict_get_int");
  return v;
}

/* Checks the results phase: every key present with the right square, and
 * the list holding each square exactly once. */
static int check_results(int64_t n) {
  char *seen = calloc((size_t)n, 1);
  int ok = seen != NULL && fp_list_len(shared_list) == n;
  fp_writer w;

  fp_writer_init(&w);
  for (int64_t i = 0; ok && i < n; i++) {
    char key[32];
    snprintf(key, sizeof(key), "sq:%lld", (long long)i);
    ok = dict_int(key) == i * i;
  }
  demo_check(fp_list_snapshot(shared_list, &w), "fp_list_snapshot");
  fp_reader r;
  uint32_t cnt = 0;
  fp_reader_init(&r, w.data, w.len);
  if (ok && fp_read_list(&r, &cnt) == 0 && cnt == (uint32_t)n) {
    for (uint32_t k = 0; ok && k < cnt; k++) {
      int64_t sq, root;
      ok = fp_read_int(&r, &sq) == 0;
      /* squares of 0..n-1: find the root by a float guess, then adjust */
      for (root = (int64_t)__builtin_sqrt((double)sq); root * root > sq;)
        root--;
      while ((root + 1) * (root + 1) <= sq)
        root++;
      ok = ok && root * root == sq && root < n && !seen[root];
      if (ok)
        seen[root] = 1;
    }
  } else {
    ok = 0;
  }
  fp_writer_free(&w);
  free(seen);
  return ok;
}

/* Phase 5, o->repeat times each way: the master runs every worker's share
 * in turn, then the workers run theirs at once. Checks that every key got
 * exactly its worker's share of each run. Returns 1 when exact. */
static int scale_phase(fp_pool *pool, demo_opts *o, int64_t total,
                       double *seq, double *par) {
  double seq_t[DEMO_REPEAT_MAX], par_t[DEMO_REPEAT_MAX];
  int64_t v, runs = 2 * (int64_t)o->repeat;
  int ok = 1;

  demo_check(fp_dict_clear(shared_dict), "fp_dict_clear");
  for (int w = 0; w < o->workers; w++)
    for (int j = 0; j < SCALE_KEYS; j++) {
      char key[32];
      int n = snprintf(key, sizeof(key), "u:%lld",
                       (long long)(total * w / o->workers + j));
      demo_check(fp_dict_set_int(shared_dict, key, (size_t)n, 0), "set");
    }
  for (int rep = 0; rep < o->repeat; rep++) {
    seq_t[rep] = demo_now();
    for (int w = 0; w < o->workers; w++)
      demo_check(scale_task(total * w / o->workers,
                            total * (w + 1) / o->workers -
                                total * w / o->workers),
                 "scale_task");
    seq_t[rep] = demo_now() - seq_t[rep];
    par_t[rep] = run_phase(pool, o->workers, PH_SCALE, total);
  }
  /* Worker w's count c is spread round-robin over its keys. */
  for (int w = 0; ok && w < o->workers; w++) {
    int64_t first = total * w / o->workers, c = total * (w + 1) / o->workers -
                                                 first;
    for (int j = 0; ok && j < SCALE_KEYS; j++) {
      char key[32];
      snprintf(key, sizeof(key), "u:%lld", (long long)(first + j));
      v = dict_int(key);
      ok = v == runs * (c / SCALE_KEYS + (j < c % SCALE_KEYS));
    }
  }
  *seq = demo_median(seq_t, o->repeat);
  *par = demo_median(par_t, o->repeat);
  return ok;
}

static void reset_structures(void) {
  demo_check(fp_dict_clear(shared_dict), "fp_dict_clear");
  demo_check(fp_list_clear(shared_list), "fp_list_clear");
}

int main(int argc, char **argv) {
  demo_opts o;
  fp_pool *pool;
  fp_manager_stats st;
  int64_t iters, total, v;
  double t, seq, par, seq_t[DEMO_REPEAT_MAX], par_t[DEMO_REPEAT_MAX];
  int ok = 1, ok_phase;

  demo_parse(argc, argv, &o,
             "Manager: shared dict/list/counter/lock updated by workers");
  iters = o.full ? 2000000 : 200000;

  /* 1. The manager first, then the pool: workers inherit the arena. */
  demo_check(fp_manager_new(&mgr, NULL), "fp_manager_new");
  demo_check(fp_dict_new(mgr, &shared_dict), "fp_dict_new");
  demo_check(fp_list_new(mgr, &shared_list), "fp_list_new");
  demo_check(fp_counter_new(mgr, 0, &shared_value), "fp_counter_new");
  demo_check(fp_lock_new(mgr, &shared_lock), "fp_lock_new");
  pool = demo_pool(&o, FP_PROGRESS_OFF, 1);
  total = iters * o.workers;
  demo_set_work(&o, 10.0 * (double)total, 0); /* phase 5's updates */
  demo_say(&o, "%d workers, %lld updates each per phase\n", o.workers,
           (long long)iters);

  /* Phase 1: lost updates. */
  demo_check(fp_dict_set_int(shared_dict, KEY("plain"), 0), "set");
  t = run_phase(pool, o.workers, PH_PLAIN, total);
  demo_check(fp_counter_get(shared_value, &v), "fp_counter_get");
  demo_say(&o,
           "plain get-then-set  : dict %lld of %lld, value %lld of %lld "
           "(%.1f%% lost: not atomic)  %.3f s\n",
           (long long)dict_int("plain"), (long long)total, (long long)v,
           (long long)total,
           100.0 * (double)(total - dict_int("plain")) / (double)total, t);

  /* Phase 2: the same under the shared lock. */
  demo_check(fp_dict_set_int(shared_dict, KEY("locked"), 0), "set");
  t = run_phase(pool, o.workers, PH_LOCKED, total);
  ok_phase = dict_int("locked") == total;
  ok &= ok_phase;
  demo_say(&o,
           "with fp_lock        : dict %lld of %lld  %s  %.3f s  "
           "(%.2f M updates/s)\n",
           (long long)dict_int("locked"), (long long)total,
           ok_phase ? "exact" : "WRONG", t, (double)total / t / 1e6);

  /* Phase 3: the atomic helpers. */
  demo_check(fp_counter_set(shared_value, 0), "fp_counter_set");
  t = run_phase(pool, o.workers, PH_ATOMIC, total);
  demo_check(fp_counter_get(shared_value, &v), "fp_counter_get");
  ok_phase = dict_int("atomic") == total && v == total;
  ok &= ok_phase;
  demo_say(&o,
           "atomic helpers      : dict %lld, value %lld of %lld  %s  "
           "%.3f s  (%.2f M dict+counter updates/s)\n",
           (long long)dict_int("atomic"), (long long)v, (long long)total,
           ok_phase ? "exact" : "WRONG", t, (double)total / t / 1e6);

  /* Phase 4: results, sequential (the master alone) then parallel; the
   * medians of o.repeat runs of each are the RESULT line's times. */
  ok_phase = 1;
  for (int rep = 0; rep < o.repeat; rep++) {
    fp_writer a, out;
    reset_structures();
    fp_reader r;
    fp_writer_init(&a);
    fp_writer_init(&out);
    demo_check(fp_pack(&a, "i i i", (int64_t)PH_RESULTS, (int64_t)0, total),
               "fp_pack");
    fp_reader_init(&r, a.data, a.len);
    seq_t[rep] = demo_now();
    demo_check(phase_task(&r, &out), "phase_task");
    seq_t[rep] = demo_now() - seq_t[rep];
    fp_writer_free(&a);
    fp_writer_free(&out);
    ok_phase &= check_results(total);
    reset_structures();
    par_t[rep] = run_phase(pool, o.workers, PH_RESULTS, total);
    ok_phase &= check_results(total);
  }
  seq = demo_median(seq_t, o.repeat);
  par = demo_median(par_t, o.repeat);
  ok &= ok_phase;
  demo_say(&o,
           "results d[k]=v + append: %lld items  seq %.3f s  par %.3f s "
           " %s  (%.2f M items/s in parallel)\n",
           (long long)total, seq, par, ok_phase ? "all present once" : "WRONG",
           (double)total / par / 1e6);

  /* Phase 5: updates of different keys, the master alone then the
   * workers; the medians are the RESULT line's times. */
  ok_phase = scale_phase(pool, &o, 10 * total, &seq, &par);
  ok &= ok_phase;
  /* The reason is given only for what was measured: on a busy machine
   * the workers wait for CPUs and the parallel side is the slower one. */
  demo_say(&o,
           "scaling: add to own keys: %lld updates  seq %.3f s  par %.3f s  "
           "%s  (%.1fx%s)\n",
           (long long)(10 * total), seq, par, ok_phase ? "exact" : "WRONG",
           seq / par,
           seq > par ? ": each update touches only its key's cache line"
                     : ": slower in parallel; are other programs using the "
                       "CPUs?");
  demo_check(fp_manager_stats_get(mgr, &st), "fp_manager_stats_get");
  demo_say(&o, "arena: %.1f MiB used, %zu objects\n",
           (double)st.used / (1 << 20), st.objects);

  fp_pool_free(pool);
  fp_manager_free(mgr);
  return demo_result(&o, "manager", seq, par, ok);
}
