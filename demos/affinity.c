/* SPDX-License-Identifier: MIT */
/* affinity.c - the seed's CPU-affinity example: pool tasks each pinned to
 * its own CPU (twin of demos/python/affinity.py).
 *
 * The seed runs compute(n) - a loop that evaluates n*(n+1)/2 n times -
 * for n in [1e8, 2e8, 3e8], with psutil.Process().cpu_affinity([cpu]) at
 * the top of each task. Here each task calls fp_affinity_pin(cpu) in its
 * worker, task k getting the k-th usable CPU (wrapping when there are fewer
 * CPUs than tasks), then runs the loop and reports the CPU it actually ran
 * on (fp_current_cpu). The same tasks run once sequentially in this
 * process (pinned the same way, the mask restored afterwards) and once on a
 * pool; the pool time includes creating and freeing the pool, as a Python
 * `with Pool() as p:` block does.
 *
 * The loop must really run n times: an empty asm statement claims to modify
 * both the input and the result on every iteration, so the compiler can
 * neither hoist the product out of the loop nor drop the dead iterations.
 *
 * Output: one line per task, then
 *   RESULT affinity seq=<s> par=<s> speedup=<x> check=ok|FAIL
 * Exit status 1 when a result is wrong or a task did not run where pinned.
 *
 * Usage: affinity [--workers N] [--full] [--quiet] [--repeat N]
 *   (demos/lib/demo.h)
 *   The seed's own sizes (--full) take only ~0.3 s sequentially in C
 *   (CPython needs ~30 s, which is why the Python twin divides them by 10
 *   unless given --full): too short for a steady speedup next to pool
 *   start-up and other load. So the default is 3x the seed's sizes: about
 *   0.7 s sequential and 1.2 s in all on 2 CPUs per run, and the median
 *   of 3 runs steadies the rest. (Up to 10x keeps n*(n+1) inside int64,
 *   which holds up to n = 3e9.)
 */
#include <stdio.h>
#include <stdlib.h>

#include "lib/demo.h"

#define NTASKS 3
#define SCALE 3 /* default sizes = the seed's times SCALE */

/* The seed's kernel: result = n*(n+1)/2, n times. */
static int64_t seed_loop(int64_t n) {
  int64_t result = 0;
  for (int64_t i = 0; i < n; i++) {
    int64_t m = n;
    __asm__ volatile("" : "+r"(m));
    result = m * (m + 1) / 2;
    __asm__ volatile("" : "+r"(result));
  }
  return result;
}

/* What one task reports. */
typedef struct outcome {
  int64_t n, result;
  int pinned, ran_on;
  double secs;
} outcome;

/* Pins the calling process to cpu, runs the loop, fills *o. Returns 0 or
 * the pin error (fp_affinity_error() says why). */
static int run_one(int64_t n, int cpu, outcome *o) {
  int rc = fp_affinity_pin(cpu);
  if (rc != 0)
    return rc;
  double t0 = demo_now();
  o->n = n;
  o->pinned = cpu;
  o->result = seed_loop(n);
  o->ran_on = fp_current_cpu();
  o->secs = demo_now() - t0;
  return 0;
}

/* The pool task: args "i i" = (n, cpu); result [n, result, pinned, ran_on,
 * seconds]. */
static int compute_task(fp_reader *args, fp_writer *out) {
  int64_t n, cpu;
  outcome o;
  if (fp_unpack(args, "i i", &n, &cpu) != 0)
    return fp_task_fail("bad arguments");
  if (run_one(n, (int)cpu, &o) != 0)
    return fp_task_fail("pin to CPU %d: %s", (int)cpu, fp_affinity_error());
  return fp_pack(out, "[ i i i i d ]", o.n, o.result, (int64_t)o.pinned,
                 (int64_t)o.ran_on, o.secs);
}

/* Runs the tasks on a fresh pool, one apply_async each, and fills par[];
 * the time includes the pool's creation and teardown, like Python's
 * `with Pool() as p:`. Returns 0 or the first failure. */
static int run_pool(const demo_opts *o, const int64_t *sizes, const int *cpus,
                    outcome *par) {
  fp_result *res[NTASKS] = {0};
  fp_pool *pool = demo_pool(o, FP_PROGRESS_OFF, 0);
  int rc = 0;
  for (int k = 0; k < NTASKS && rc == 0; k++) {
    fp_writer args;
    fp_writer_init(&args);
    fp_pack(&args, "i i", sizes[k], (int64_t)cpus[k]);
    rc = fp_pool_apply_async(pool, compute_task, &args, NULL, &res[k]);
    fp_writer_free(&args);
  }
  for (int k = 0; k < NTASKS && rc == 0; k++) {
    fp_reader rd;
    int64_t pinned, ran_on;
    rc = fp_result_get(res[k], FP_FOREVER);
    if (rc == 0)
      rc = fp_result_value(res[k], &rd);
    if (rc == 0)
      rc = fp_unpack(&rd, "[ i i i i d ]", &par[k].n, &par[k].result, &pinned,
                     &ran_on, &par[k].secs);
    if (rc != 0) {
      const char *msg = fp_result_error(res[k]);
      fprintf(stderr, "task %d: %s (%s)\n", k, fp_strerror(rc), msg ? msg : "");
      break;
    }
    par[k].pinned = (int)pinned;
    par[k].ran_on = (int)ran_on;
  }
  for (int k = 0; k < NTASKS; k++)
    fp_result_free(res[k]);
  fp_pool_free(pool);
  return rc;
}

/* The demo's speedup ceiling: the tasks are taken in order by the first
 * free worker (at most as many as usable CPUs), so with two workers the
 * 1e8 and 2e8 tasks start together and the 3e8 one follows the 1e8 one:
 * 6 units of work in 4, at best 1.5x. */
static double list_ceiling(const int64_t *sizes, int workers) {
  double busy[NTASKS] = {0}, total = 0, makespan = 0;
  int m = (int)demo_ceiling_for(workers);
  if (m > NTASKS)
    m = NTASKS;
  for (int k = 0; k < NTASKS; k++) {
    int first = 0; /* the worker that frees up first */
    for (int w = 1; w < m; w++)
      if (busy[w] < busy[first])
        first = w;
    busy[first] += (double)sizes[k];
    total += (double)sizes[k];
    if (busy[first] > makespan)
      makespan = busy[first];
  }
  return total / makespan;
}

int main(int argc, char **argv) {
  int64_t sizes[NTASKS] = {100000000, 200000000, 300000000};
  int cpus[NTASKS], ok = 1, rc = 0;
  outcome seq[NTASKS], par[NTASKS];
  fp_cpuset usable;
  demo_opts o;
  double seq_t[DEMO_REPEAT_MAX], par_t[DEMO_REPEAT_MAX], t0;

  demo_parse(argc, argv, &o,
             "Runs the seed's n*(n+1)/2 loop for n = 1e8, 2e8, 3e8 (times 3 "
             "unless --full),\neach task pinned to its own CPU.");
  for (int k = 0; k < NTASKS && !o.full; k++)
    sizes[k] *= SCALE;
  demo_set_work(&o, (double)(sizes[0] + sizes[1] + sizes[2]),
                list_ceiling(sizes, o.workers));
  if (fp_affinity_get(&usable) != 0) {
    fprintf(stderr, "affinity: %s\n", fp_affinity_error());
    return 2;
  }
  for (int k = 0; k < NTASKS; k++)
    cpus[k] = fp_cpuset_nth(&usable, k % fp_cpuset_count(&usable));
  demo_say(&o,
           "usable CPUs: %d, workers: %d, sizes: %lld %lld %lld; median of "
           "%d runs\n",
           fp_cpuset_count(&usable), o.workers, (long long)sizes[0],
           (long long)sizes[1], (long long)sizes[2], o.repeat);
  demo_say(&o,
           "  tasks go to the first free worker in order: speedup at most "
           "%.2fx\n",
           o.ceiling);

  for (int rep = 0; rep < o.repeat && rc == 0; rep++) {
    /* Sequential, in this process; restore the mask afterwards. */
    t0 = demo_now();
    for (int k = 0; k < NTASKS; k++)
      if (run_one(sizes[k], cpus[k], &seq[k]) != 0) {
        fprintf(stderr, "pin: %s\n", fp_affinity_error());
        return 2;
      }
    seq_t[rep] = demo_now() - t0;
    demo_check(fp_affinity_set(&usable), "fp_affinity_set");

    t0 = demo_now();
    rc = run_pool(&o, sizes, cpus, par);
    par_t[rep] = demo_now() - t0;
  }
  if (rc != 0)
    ok = 0;

  for (int k = 0; k < NTASKS && rc == 0; k++) {
    int64_t n = sizes[k];
    int good = par[k].n == n && par[k].result == n * (n + 1) / 2 &&
               par[k].result == seq[k].result && par[k].ran_on == cpus[k] &&
               seq[k].ran_on == cpus[k];
    ok = ok && good;
    demo_say(&o,
             "task n=%lld: pinned to CPU %d, ran on CPU %d, result=%lld, "
             "%.3fs (sequential %.3fs) %s\n",
             (long long)n, par[k].pinned, par[k].ran_on,
             (long long)par[k].result, par[k].secs, seq[k].secs,
             good ? "ok" : "FAIL");
  }
  if (rc != 0) /* no median of runs that did not all happen */
    return demo_result(&o, "affinity", seq_t[0], par_t[0], ok);
  return demo_result(&o, "affinity", demo_median(seq_t, o.repeat),
                     demo_median(par_t, o.repeat), ok);
}
