/* SPDX-License-Identifier: MIT */
/* pool_imap.c - imap, imap_unordered and the producer-fed imap
 * (docs/pool.md).
 *
 * Python's `for r in pool.imap(f, items)` is a loop over fp_iter_next():
 * results come in input order (imap) or as they complete (imap_unordered,
 * with fp_iter_index() telling which input each one belongs to). The
 * producer-fed form pulls its input from a callback with bounded
 * read-ahead, so an input larger than memory streams in constant memory.
 * Exits 0 when every result arrives exactly once.
 */
#include <forkpool.h>

#include <stdio.h>

static int cube(fp_reader *args, fp_writer *out) {
  int64_t v;
  int rc = fp_read_int(args, &v);
  if (rc != 0)
    return rc;
  return fp_write_int(out, v * v * v);
}

/* 1/v as an int: fails (ZeroDivisionError in Python) for v == 0. */
static int inverse_milli(fp_reader *args, fp_writer *out) {
  int64_t v;
  int rc = fp_read_int(args, &v);
  if (rc != 0)
    return rc;
  if (v == 0)
    return fp_task_fail("division by zero");
  return fp_write_int(out, 1000 / v);
}

/* [producer] The input as a generator: one item per call, 0 at the end. */
typedef struct range {
  int64_t next, end;
} range;

static int produce(void *arg, fp_writer *item) {
  range *r = arg;
  if (r->next == r->end)
    return 0; /* end of input */
  return fp_write_int(item, r->next++) == 0 ? 1 : FP_ENOMEM;
}
/* [/producer] */

int main(void) {
  fp_pool *pool;
  fp_pool_opts opts = {0};
  opts.processes = 2;
  if (fp_pool_new(&pool, &opts) != 0)
    return 1;
  int ok = 1, rc;
  int64_t v;
  fp_reader rd;

  /* [imap] for r in pool.imap(cube, range(8)): */
  fp_writer items;
  fp_writer_init(&items);
  for (int64_t i = 0; i < 8; i++)
    fp_write_int(&items, i);
  fp_iter *it;
  rc = fp_pool_imap(pool, cube, &items, NULL, &it); /* chunksize 1 */
  printf("imap:");
  while (rc == 0 && (rc = fp_iter_next(it, &rd, FP_FOREVER)) == 0) {
    fp_read_int(&rd, &v); /* rd is valid until the next call */
    printf(" %lld", (long long)v);
    ok = ok && v == fp_iter_index(it) * fp_iter_index(it) * fp_iter_index(it);
  }
  printf("\n");
  ok = ok && rc == FP_EOF; /* FP_EOF: every result was returned */
  fp_iter_free(it);
  /* [/imap] */

  /* [imap-unordered] as completed; fp_iter_index names the input */
  int seen = 0;
  rc = fp_pool_imap_unordered(pool, cube, &items, NULL, &it);
  while (rc == 0 && (rc = fp_iter_next(it, &rd, 10.0)) == 0) {
    fp_read_int(&rd, &v);
    int64_t i = fp_iter_index(it);
    ok = ok && v == i * i * i;
    seen |= 1 << i;
  }
  fp_iter_free(it);
  /* [/imap-unordered] */
  ok = ok && rc == FP_EOF && seen == 0xff;
  printf("imap_unordered: all 8 results, each once: %s\n",
         seen == 0xff ? "yes" : "no");
  fp_writer_free(&items);

  /* [imap-keep-going] a failed item does not end the loop; a short wait
   * that expires (FP_EAGAIN) is not a failure either */
  fp_writer some;
  fp_writer_init(&some);
  for (int64_t i = -2; i <= 2; i++)
    fp_write_int(&some, i);
  int good = 0, failed = 0;
  rc = fp_pool_imap(pool, inverse_milli, &some, NULL, &it);
  while (it != NULL && rc != FP_EOF) { /* it is NULL if the call failed */
    switch (rc = fp_iter_next(it, &rd, 0.05)) {
    case 0:
      good++;
      break;
    case FP_EAGAIN: /* nothing ready yet: do other work, then ask again */
      break;
    case FP_EOF: /* every item was handed out */
      break;
    default: /* this item failed, with its own code and message */
      printf("item %lld failed: %s\n", (long long)fp_iter_index(it),
             fp_iter_error(it));
      failed++;
    }
  }
  fp_iter_free(it);
  fp_writer_free(&some);
  /* [/imap-keep-going] */
  ok = ok && rc == FP_EOF && good == 4 && failed == 1;

  /* [imap-producer] 200,000 items, at most 4096 in flight */
  range src = {0, 200000};
  fp_call_opts co = {0};
  co.chunksize = 512;  /* items per task */
  co.readahead = 4096; /* produced and not yet consumed, at most */
  int64_t count = 0, total = 0;
  rc = fp_pool_imap_producer(pool, cube, produce, &src, &co, &it);
  while (rc == 0 && (rc = fp_iter_next(it, &rd, FP_FOREVER)) == 0) {
    fp_read_int(&rd, &v);
    total += v % 1000;
    count++;
  }
  fp_iter_free(it);
  /* [/imap-producer] */
  ok = ok && rc == FP_EOF && count == 200000;
  printf("imap_producer: %lld results, checksum %lld\n", (long long)count,
         (long long)total);

  fp_pool_free(pool);
  return ok ? 0 : 1;
}
