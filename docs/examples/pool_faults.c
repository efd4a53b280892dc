/* SPDX-License-Identifier: MIT */
/* pool_faults.c - what a crash or a runaway task does to a call
 * (docs/faults.md).
 *
 * 1. A task dereferences NULL at item 37 inside fp_pool_map: the call
 *    returns FP_EWORKER, fp_last_error() names the item, the worker's pid
 *    and SIGSEGV; the other chunks still ran; a replacement worker is
 *    forked and the pool keeps serving.
 * 2. The same crash, once, under FP_CRASH_RETRY: the chunk runs again on a
 *    live worker and the call succeeds.
 * 3. A task over its time limit: SIGTERM, FP_ETIMEDOUT.
 * Exits 0 when all three behave.
 */
#include <forkpool.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>

/* Shared with every worker: mapped MAP_SHARED before fp_pool_new(), so
 * writes made later by the master or by a worker are seen by all. A plain
 * global written after fp_pool_new() would not be: workers see memory as
 * it was when the pool was created. */
typedef struct shared {
  int retry_mode;   /* set by the master for part 2 */
  int crashed_once; /* set by the worker that crashes in part 2 */
} shared;
static shared *g_sh;

/* Workers of this example crash on purpose: no core files, please. */
static int no_core_dumps(void *arg) {
  (void)arg;
  return prctl(PR_SET_DUMPABLE, 0) == 0 ? 0 : -1;
}

/* [crash-task] crashes the whole worker process at item 37 */
/* no_sanitize: under UBSan the NULL store would be reported and turned into
 * exit(1); the example wants the real SIGSEGV a user would get. */
__attribute__((no_sanitize("undefined"))) static int
fragile(const void *in, void *out) {
  int64_t v = *(const int64_t *)in;
  if (v == 37 &&
      (!__atomic_load_n(&g_sh->retry_mode, __ATOMIC_SEQ_CST) ||
       !__atomic_exchange_n(&g_sh->crashed_once, 1, __ATOMIC_SEQ_CST))) {
    volatile int *p = NULL;
    *p = 1; /* SIGSEGV: in part 2, only the first time */
  }
  *(int64_t *)out = v + 1;
  return 0;
}
/* [/crash-task] */

static int nap(fp_reader *args, fp_writer *out) {
  int64_t ms;
  int rc = fp_read_int(args, &ms);
  if (rc != 0)
    return rc;
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return fp_write_int(out, ms);
}

static int64_t in[100], out[100];

int main(void) {
  g_sh = mmap(NULL, sizeof(shared), PROT_READ | PROT_WRITE,
              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g_sh == MAP_FAILED)
    return 1;
  fp_pool *pool;
  fp_pool_opts opts = {0};
  opts.processes = 2;
  opts.initializer = no_core_dumps;
  if (fp_pool_new(&pool, &opts) != 0)
    return 1;
  int ok = 1;
  for (int i = 0; i < 100; i++)
    in[i] = i;

  /* [crash] 1. map over 100 items in chunks of 10; item 37 crashes */
  fp_call_opts co = {0};
  co.chunksize = 10;
  int rc = fp_pool_map(pool, fragile, in, 100, sizeof in[0], out, sizeof out[0],
                       &co);
  printf("map -> %s: %s\n", fp_err_name(rc), fp_last_error());
  /* map -> FP_EWORKER: item 37: worker 1 (pid 4242) killed by signal
   *        SIGSEGV (Segmentation fault) while running it */
  printf("out[99] = %lld (the other chunks ran)\n", (long long)out[99]);
  /* [/crash] */
  ok = ok && rc == FP_EWORKER && strstr(fp_last_error(), "item 37") &&
       strstr(fp_last_error(), "SIGSEGV") && out[99] == 100 && out[0] == 1;

  /* The pool keeps serving, on a replacement worker. */
  int64_t x = 6, y = 0;
  rc = fp_pool_map(pool, fragile, &x, 1, sizeof x, &y, sizeof y, NULL);
  fp_worker_info w0, w1;
  fp_pool_worker_info(pool, 0, &w0);
  fp_pool_worker_info(pool, 1, &w1);
  printf("next call -> %s (%lld); restarts: %llu\n", rc ? fp_err_name(rc) : "0",
         (long long)y, (unsigned long long)(w0.restarts + w1.restarts));
  ok = ok && rc == 0 && y == 7 && w0.restarts + w1.restarts == 1;

  /* [retry] 2. FP_CRASH_RETRY: the crashed chunk is queued again */
  __atomic_store_n(&g_sh->retry_mode, 1, __ATOMIC_SEQ_CST);
  co.on_crash = FP_CRASH_RETRY; /* or opts.on_crash for the whole pool */
  co.retries = 1;               /* reruns per chunk */
  rc = fp_pool_map(pool, fragile, in, 100, sizeof in[0], out, sizeof out[0],
                   &co);
  printf("map with retry -> %s, out[37] = %lld\n", rc ? fp_err_name(rc) : "0",
         (long long)out[37]);
  /* [/retry] */
  ok = ok && rc == 0 && out[37] == 38;

  /* [timeout] 3. a per-call time limit of 0.1 s on a 10 s task */
  fp_writer args;
  fp_writer_init(&args);
  fp_write_int(&args, 10000);
  fp_call_opts to = {0};
  to.timeout = 0.1; /* seconds per item; the pool's task_timeout if 0 */
  fp_result *res;
  rc = fp_pool_apply_async(pool, nap, &args, &to, &res);
  if (rc == 0)
    rc = fp_result_get(res, 10.0);
  printf("apply -> %s: %s\n", fp_err_name(rc), fp_result_error(res));
  /* apply -> FP_ETIMEDOUT: item 0: exceeded its time limit of 0.1s; worker 0
   *          (pid 4243) was killed */
  fp_result_free(res);
  fp_writer_free(&args);
  /* [/timeout] */
  ok = ok && rc == FP_ETIMEDOUT;

  fp_pool_free(pool);
  munmap(g_sh, sizeof(shared));
  return ok ? 0 : 1;
}
