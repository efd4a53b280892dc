/* SPDX-License-Identifier: MIT */
/* pool_async.c - apply_async, map_async, callbacks and result objects
 * (docs/pool.md).
 *
 * Python's `r = pool.apply_async(f, args, callback=..., error_callback=...)`
 * then `r.get(timeout)`. Callbacks run on the pool thread, once, before
 * anyone waiting on the result wakes up. Shows fp_result_get() timing out
 * on a slow task and succeeding later, a failing task reaching its
 * error_callback, fp_result_cancel() on a running task, and map_async,
 * whose arrays are NOT copied. Exits 0 when every step behaves.
 */
#include <forkpool.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

/* Sleeps the given number of milliseconds, then returns it. */
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

static int twice(const void *in, void *out) {
  *(double *)out = 2 * *(const double *)in;
  return 0;
}

/* [callbacks] They run on the pool thread: keep them short, no blocking
 * pool calls (those return FP_EINVAL there). */
static atomic_int g_ok, g_failed;

static void on_success(fp_result *res, void *arg) {
  fp_reader rd;
  int64_t v = 0;
  fp_result_value(res, &rd); /* readable inside its own callback */
  fp_read_int(&rd, &v);
  printf("callback (%s): %lld\n", (const char *)arg, (long long)v);
  atomic_fetch_add(&g_ok, 1);
}

static void on_error(fp_result *res, void *arg) {
  printf("error_callback (%s): %s\n", (const char *)arg, fp_result_error(res));
  atomic_fetch_add(&g_failed, 1);
}
/* [/callbacks] */

int main(void) {
  fp_pool *pool;
  fp_pool_opts opts = {0};
  opts.processes = 2;
  if (fp_pool_new(&pool, &opts) != 0)
    return 1;
  int ok = 1;
  fp_writer args;
  fp_writer_init(&args);

  /* [cancel] cancel a running task: its worker is killed and replaced */
  fp_result *slow;
  fp_write_int(&args, 60000); /* a minute */
  fp_pool_apply_async(pool, nap, &args, NULL, &slow);
  int rc = fp_result_get(slow, 0.05); /* still running */
  fp_result_cancel(slow);
  int rc2 = fp_result_get(slow, FP_FOREVER); /* FP_ECANCELED, at once */
  printf("cancel: get(0.05) -> %s, after cancel -> %s\n", fp_err_name(rc),
         fp_err_name(rc2));
  fp_result_free(slow);
  /* [/cancel] */
  ok = ok && rc == FP_ETIMEDOUT && rc2 == FP_ECANCELED;

  /* [apply-async] apply_async with both callbacks, get with a timeout */
  fp_result *res;
  fp_call_opts co = {0};
  co.callback = on_success;
  co.error_callback = on_error;
  co.arg = "nap 200";
  fp_writer_reset(&args);
  fp_write_int(&args, 200);
  rc = fp_pool_apply_async(pool, nap, &args, &co, &res);
  if (rc != 0) /* no result exists and no callback will run */
    return 1;
  rc = fp_result_get(res, 0.01); /* FP_ETIMEDOUT: not ready yet */
  printf("get(0.01) -> %s, ready = %d\n", fp_err_name(rc),
         fp_result_ready(res));
  ok = ok && rc == FP_ETIMEDOUT;
  rc = fp_result_get(res, 10.0); /* 0: the callback has already run */
  printf("get(10) -> %s, successful = %d\n", rc ? fp_err_name(rc) : "0",
         fp_result_successful(res));
  fp_result_free(res);
  /* [/apply-async] */
  ok = ok && rc == 0 && atomic_load(&g_ok) == 1;

  /* [apply-async-fail] a failing task reaches error_callback */
  fp_writer_reset(&args);
  fp_write_str(&args, "not a number");
  co.arg = "bad args";
  fp_pool_apply_async(pool, nap, &args, &co, &res);
  rc = fp_result_get(res, 10.0); /* the task's code: FP_ETYPE */
  printf("failed: %s, index %lld, successful = %d\n", fp_err_name(rc),
         (long long)fp_result_error_index(res), fp_result_successful(res));
  fp_result_free(res);
  /* [/apply-async-fail] */
  ok = ok && rc == FP_ETYPE && atomic_load(&g_failed) == 1;

  /* [map-async] in and out are NOT copied: keep them until ready */
  static double in[1000], out[1000];
  for (int i = 0; i < 1000; i++)
    in[i] = i;
  rc = fp_pool_map_async(pool, twice, in, 1000, sizeof(double), out,
                         sizeof(double), NULL, &res);
  /* ... do other work here, without touching `out` ... */
  if (rc == 0)
    rc = fp_result_get(res, 10.0);
  fp_result_free(res);
  printf("map_async: out[999] = %g\n", out[999]);
  /* [/map-async] */
  ok = ok && rc == 0 && out[999] == 1998.0;

  fp_pool_free(pool);
  fp_writer_free(&args);
  return ok ? 0 : 1;
}
