/* SPDX-License-Identifier: MIT */
/* pool_apply.c - fp_pool_apply, Python's pool.apply(f, args) (docs/pool.md).
 *
 * Packs a task's arguments into a writer, runs the task in a worker and
 * reads its one result value back. Then a task that refuses its input with
 * fp_task_fail(): the call returns FP_ETASK and fp_last_error() holds the
 * task's message, prefixed with the item index. Exits 0 when both behave.
 */
#include <forkpool.h>

#include <stdio.h>
#include <string.h>

/* [apply-task] Runs in a worker: reads two ints, writes their sum. */
static int add(fp_reader *args, fp_writer *out) {
  int64_t a, b;
  int rc = fp_unpack(args, "i i", &a, &b);
  if (rc != 0)
    return rc; /* e.g. FP_ETYPE: the item fails with that code */
  if (a < 0 || b < 0)
    return fp_task_fail("negative input (%lld, %lld)", (long long)a,
                        (long long)b);
  return fp_write_int(out, a + b);
}
/* [/apply-task] */

int main(void) {
  fp_pool *pool;
  fp_pool_opts opts = {0};
  opts.processes = 2;
  int rc = fp_pool_new(&pool, &opts);
  if (rc != 0) {
    fprintf(stderr, "fp_pool_new: %s (%s)\n", fp_err_name(rc), fp_last_error());
    return 1;
  }

  /* [apply] pool.apply(add, (40, 2)) */
  fp_writer args, out;
  fp_reader rd;
  int64_t sum = 0;
  fp_writer_init(&args);
  fp_writer_init(&out);
  fp_pack(&args, "i i", (int64_t)40, (int64_t)2); /* copied by the call */
  rc = fp_pool_apply(pool, add, &args, &out);     /* blocks */
  fp_reader_init(&rd, out.data, out.len);
  if (rc == 0 && fp_read_int(&rd, &sum) == 0)
    printf("add(40, 2) = %lld\n", (long long)sum);
  /* [/apply] */
  int ok = rc == 0 && sum == 42;

  /* [apply-fail] A task failure: a code and a message, not an exception. */
  fp_writer_reset(&args);
  fp_writer_reset(&out);
  fp_pack(&args, "i i", (int64_t)-1, (int64_t)2);
  rc = fp_pool_apply(pool, add, &args, &out);
  printf("add(-1, 2) -> %s: %s\n", fp_err_name(rc), fp_last_error());
  /* prints: add(-1, 2) -> FP_ETASK: item 0: negative input (-1, 2) */
  /* [/apply-fail] */
  ok = ok && rc == FP_ETASK && out.len == 0 &&
       strstr(fp_last_error(), "negative input") != NULL;

  /* [lifecycle] pool.close(); pool.join() -- then free. */
  fp_pool_close(pool); /* no new work; queued work still runs */
  fp_pool_join(pool);  /* waits for the workers and the fork server */
  fp_pool_free(pool);
  /* [/lifecycle] */

  fp_writer_free(&args);
  fp_writer_free(&out);
  return ok ? 0 : 1;
}
