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
 * Usage: affinity [--full] [--workers N] [--scale F]
 *   The default sizes are the seed's own: in C the seed's 6e8 iterations
 *   take about 0.3 s sequentially (CPython needs ~30 s, which is why the
 *   Python twin divides them by 10 unless given --full). --full is accepted
 *   for symmetry with the twin and changes nothing; --scale F multiplies the
 *   sizes (--scale 10: about 3 s sequential, steadier timings).
 */
#include <forkpool.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NTASKS 3

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

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
 * the pin error. */
static int run_one(int64_t n, int cpu, outcome *o) {
  int rc = fp_affinity_pin(cpu);
  if (rc != 0)
    return rc;
  double t0 = now();
  o->n = n;
  o->pinned = cpu;
  o->result = seed_loop(n);
  o->ran_on = fp_current_cpu();
  o->secs = now() - t0;
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

int main(int argc, char **argv) {
  int64_t sizes[NTASKS] = {100000000, 200000000, 300000000};
  int workers = 0, cpus[NTASKS], ok = 1;
  double scale = 1.0;
  outcome seq[NTASKS], par[NTASKS];
  fp_result *res[NTASKS] = {0};
  fp_cpuset usable;
  fp_pool *pool;

  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--full") == 0)
      continue; /* the default already is the seed's size */
    else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc)
      workers = atoi(argv[++i]);
    else if (strcmp(argv[i], "--scale") == 0 && i + 1 < argc)
      scale = atof(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--full] [--workers N] [--scale F]\n",
              argv[0]);
      return 2;
    }
  }
  /* n*(n+1) must fit int64: n <= 3e9, so scale <= 10. */
  if (!(scale > 0.0 && scale <= 10.0)) {
    fprintf(stderr, "--scale must be in (0, 10]\n");
    return 2;
  }
  for (int k = 0; k < NTASKS; k++)
    sizes[k] = (int64_t)((double)sizes[k] * scale);
  if (fp_affinity_get(&usable) != 0) {
    fprintf(stderr, "affinity: %s\n", fp_affinity_error());
    return 1;
  }
  for (int k = 0; k < NTASKS; k++)
    cpus[k] = fp_cpuset_nth(&usable, k % fp_cpuset_count(&usable));
  if (workers <= 0)
    workers = fp_cpu_count();
  printf("usable CPUs: %d, workers: %d, sizes: %lld %lld %lld\n",
         fp_cpuset_count(&usable), workers, (long long)sizes[0],
         (long long)sizes[1], (long long)sizes[2]);

  /* Sequential, in this process; restore the mask afterwards. */
  double t0 = now();
  for (int k = 0; k < NTASKS; k++)
    if (run_one(sizes[k], cpus[k], &seq[k]) != 0) {
      fprintf(stderr, "pin: %s\n", fp_affinity_error());
      return 1;
    }
  double t_seq = now() - t0;
  fp_affinity_set(&usable);

  /* On the pool: one apply_async per task. */
  t0 = now();
  fp_pool_opts opts = {0};
  opts.processes = workers;
  int rc = fp_pool_new(&pool, &opts);
  if (rc != 0) {
    fprintf(stderr, "fp_pool_new: %s\n", fp_strerror(rc));
    return 1;
  }
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
  double t_par = now() - t0;
  if (rc != 0)
    ok = 0;

  for (int k = 0; k < NTASKS && rc == 0; k++) {
    int64_t n = sizes[k];
    int good = par[k].n == n && par[k].result == n * (n + 1) / 2 &&
               par[k].result == seq[k].result && par[k].ran_on == cpus[k] &&
               seq[k].ran_on == cpus[k];
    ok = ok && good;
    printf("task n=%lld: pinned to CPU %d, ran on CPU %d, result=%lld, "
           "%.3fs (sequential %.3fs) %s\n",
           (long long)n, par[k].pinned, par[k].ran_on, (long long)par[k].result,
           par[k].secs, seq[k].secs, good ? "ok" : "FAIL");
  }
  printf("RESULT affinity seq=%.3f par=%.3f speedup=%.2f check=%s\n", t_seq,
         t_par, t_par > 0 ? t_seq / t_par : 0.0, ok ? "ok" : "FAIL");
  return ok ? 0 : 1;
}
