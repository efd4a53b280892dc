/* SPDX-License-Identifier: MIT */
/* tour.c - a one-minute tour of the forkpool API (the README's example):
 * apply, map over a C array, starmap of packed tuples, imap, apply_async
 * with a callback, then close and join. Each step prints what it did. */
#include <stdio.h>

#include "forkpool.h"
#include "lib/demo.h" /* the demos' common options */

/* Tasks run in the worker processes. Codec tasks read args, write one value. */
static int square(fp_reader *args, fp_writer *out) {
  int64_t x;
  int rc = fp_unpack(args, "i", &x);
  return rc < 0 ? rc : fp_write_int(out, x * x);
}
static int add(fp_reader *args, fp_writer *out) { /* args: one (a, b) tuple */
  int64_t a, b;
  int rc = fp_unpack(args, "i i", &a, &b);
  return rc < 0 ? rc : fp_write_int(out, a + b);
}
static int triple(const void *in, void *out) { /* fixed-size: int64 -> int64 */
  *(int64_t *)out = 3 * *(const int64_t *)in;
  return 0;
}
static int keep(int *first, int rc) { /* remembers the first failure */
  if (*first == 0 && rc < 0)
    *first = rc;
  return rc;
}
static void done(fp_result *res, void *arg) { /* runs on the pool thread */
  fp_reader rd;
  int64_t v;
  if (fp_result_value(res, &rd) == 0 && fp_read_int(&rd, &v) == 0)
    printf("apply_async(square, 12) -> callback got %lld\n", (long long)v);
}

int main(int argc, char **argv) {
  fp_pool *pool;
  fp_writer args, out;
  fp_reader rd;
  fp_iter *it;
  fp_result *res;
  int64_t in[5] = {1, 2, 3, 4, 5}, tripled[5] = {0}, v, a, b, c;
  fp_call_opts cb = {.callback = done};
  demo_opts o; /* --workers N, --transport; the tour times nothing */
  demo_parse(argc, argv, &o,
             "tour: apply, map, starmap, imap and apply_async, once each "
             "(nothing is timed:\n--full, --quiet and --repeat change "
             "nothing here)");
  fp_pool_opts po = {.processes = o.workers, .transport = o.transport};
  int rc = fp_pool_new(&pool, &po);
  if (rc < 0)
    return fprintf(stderr, "fp_pool_new: %s\n", fp_strerror(rc)), 1;
  printf("pool of %d workers\n", fp_pool_size(pool));

  fp_writer_init(&args), fp_writer_init(&out);
  fp_pack(&args, "i", (int64_t)7); /* Python: pool.apply(square, (7,)) */
  fp_reader_init(&rd, NULL, 0);
  if (keep(&rc, fp_pool_apply(pool, square, &args, &out)) == 0)
    fp_reader_init(&rd, out.data, out.len);
  if (fp_read_int(&rd, &v) == 0)
    printf("apply(square, 7) -> %lld\n", (long long)v);

  keep(&rc,
       fp_pool_map(pool, triple, in, 5, sizeof in[0], tripled, sizeof v, NULL));
  printf("map(triple, [1..5]) -> %lld %lld %lld %lld %lld\n",
         (long long)tripled[0], (long long)tripled[1], (long long)tripled[2],
         (long long)tripled[3], (long long)tripled[4]);

  fp_writer_reset(&args), fp_writer_reset(&out); /* starmap: list of tuples */
  fp_pack(&args, "[i i] [i i] [i i]", (int64_t)1, (int64_t)2, (int64_t)3,
          (int64_t)4, (int64_t)5, (int64_t)6);
  keep(&rc, fp_pool_starmap(pool, add, &args, &out, NULL));
  fp_reader_init(&rd, out.data, out.len);
  if (fp_unpack(&rd, "i i i", &a, &b, &c) == 0)
    printf("starmap(add, [(1,2), (3,4), (5,6)]) -> %lld %lld %lld\n",
           (long long)a, (long long)b, (long long)c);

  fp_writer_reset(&args); /* imap: results one at a time, in order */
  for (int64_t i = 1; i <= 4; i++)
    fp_write_int(&args, i);
  int ok = keep(&rc, fp_pool_imap(pool, square, &args, NULL, &it)) == 0;
  printf("imap(square, [1..4]) ->");
  while (ok && fp_iter_next(it, &rd, FP_FOREVER) == 0)
    if (fp_read_int(&rd, &v) == 0)
      printf(" %lld", (long long)v);
  printf("\n");
  if (ok)
    fp_iter_free(it);

  fp_writer_reset(&args);
  fp_pack(&args, "i", (int64_t)12);
  if (fp_pool_apply_async(pool, square, &args, &cb, &res) == 0) {
    keep(&rc,
         fp_result_get(res, FP_FOREVER)); /* the callback ran before this */
    fp_result_free(res);
  }

  fp_pool_close(pool); /* no more work; workers exit when done */
  fp_pool_join(pool);
  fp_pool_free(pool);
  fp_writer_free(&args), fp_writer_free(&out);
  printf("closed and joined: %s\n", rc == 0 ? "all ok" : fp_strerror(rc));
  return rc == 0 ? 0 : 1;
}
