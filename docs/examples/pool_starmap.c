/* SPDX-License-Identifier: MIT */
/* pool_starmap.c - fp_pool_starmap, Python's pool.starmap (docs/pool.md).
 *
 * Each item is a packed tuple -- a codec list -- whose elements are the
 * task's arguments: `pool.starmap(power, [(2, 10), (3, 4), (10, 3)])`.
 * Then the same with fp_pool_starmap_async and fp_result_value(), and the
 * fixed-size form: an array of structs through fp_pool_map. Exits 0 when
 * all three agree.
 */
#include <forkpool.h>

#include <stdio.h>

/* [starmap-task] Receives the elements of one tuple as its arguments. */
static int power(fp_reader *args, fp_writer *out) {
  int64_t base, exp, r = 1;
  int rc = fp_unpack(args, "i i", &base, &exp);
  if (rc != 0)
    return rc;
  for (int64_t i = 0; i < exp; i++)
    r *= base;
  return fp_write_int(out, r);
}
/* [/starmap-task] */

/* The fixed-size form of starmap: a struct per item. */
typedef struct pair {
  int64_t base, exp;
} pair;

static int power_pair(const void *in, void *out) {
  const pair *p = in;
  int64_t r = 1;
  for (int64_t i = 0; i < p->exp; i++)
    r *= p->base;
  *(int64_t *)out = r;
  return 0;
}

int main(void) {
  static const int64_t expect[3] = {1024, 81, 1000};
  fp_pool *pool;
  fp_pool_opts opts = {0};
  opts.processes = 2;
  if (fp_pool_new(&pool, &opts) != 0)
    return 1;
  int ok = 1;

  /* [starmap] pool.starmap(power, [(2, 10), (3, 4), (10, 3)]) */
  fp_writer items, out;
  fp_writer_init(&items);
  fp_writer_init(&out);
  fp_pack(&items, "[i i] [i i] [i i]", (int64_t)2, (int64_t)10, (int64_t)3,
          (int64_t)4, (int64_t)10, (int64_t)3); /* three tuples */
  int rc = fp_pool_starmap(pool, power, &items, &out, NULL);
  fp_reader rd;
  fp_reader_init(&rd, out.data, out.len);
  for (int i = 0; rc == 0 && i < 3; i++) {
    int64_t v = 0;
    fp_read_int(&rd, &v);
    printf("starmap item %d = %lld\n", i, (long long)v);
    ok = ok && v == expect[i];
  }
  /* [/starmap] */
  ok = ok && rc == 0;

  /* [starmap-async] pool.starmap_async(power, items).get(timeout=10) */
  fp_result *res;
  rc = fp_pool_starmap_async(pool, power, &items, NULL, &res);
  fp_writer_free(&items); /* copied at the call: free it at once */
  if (rc == 0 && (rc = fp_result_get(res, 10.0)) == 0 &&
      (rc = fp_result_value(res, &rd)) == 0) {
    int64_t a, b, c;
    fp_unpack(&rd, "i i i", &a, &b, &c); /* valid until fp_result_free */
    printf("starmap_async = %lld %lld %lld\n", (long long)a, (long long)b,
           (long long)c);
    ok = ok && a == 1024 && b == 81 && c == 1000;
  }
  fp_result_free(res); /* NULL-safe: res is NULL if the call failed */
  /* [/starmap-async] */
  ok = ok && rc == 0;

  /* A tuple that is not a list fails the whole call before any work. */
  fp_writer bad;
  fp_writer_init(&bad);
  fp_pack(&bad, "[i i] i", (int64_t)2, (int64_t)3, (int64_t)4);
  rc = fp_pool_starmap(pool, power, &bad, &out, NULL);
  printf("non-list item -> %s\n", fp_err_name(rc));
  ok = ok && rc == FP_ETYPE;
  fp_writer_free(&bad);

  /* [starmap-fixed] the fixed-size form: an array of structs */
  pair pairs[3] = {{2, 10}, {3, 4}, {10, 3}};
  int64_t res3[3];
  rc = fp_pool_map(pool, power_pair, pairs, 3, sizeof(pair), res3,
                   sizeof(int64_t), NULL);
  /* [/starmap-fixed] */
  for (int i = 0; i < 3; i++)
    ok = ok && rc == 0 && res3[i] == expect[i];
  printf("map over structs = %lld %lld %lld\n", (long long)res3[0],
         (long long)res3[1], (long long)res3[2]);

  fp_pool_free(pool);
  fp_writer_free(&out);
  return ok ? 0 : 1;
}
