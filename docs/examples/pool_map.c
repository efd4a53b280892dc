/* SPDX-License-Identifier: MIT */
/* pool_map.c - fp_pool_map and fp_pool_map_values, Python's pool.map
 * (docs/pool.md).
 *
 * First the fixed-size fast path: a C array of int64_t squared in place of
 * `pool.map(square, range(N))`; whole chunks of elements travel with memcpy.
 * The array is filled before fp_pool_new(), so the workers could also read
 * it directly (fork inheritance), which the second task shows. Then
 * map over codec values (strings), for items that are not fixed-size.
 * Exits 0 when every result is right.
 */
#include <forkpool.h>

#include <stdio.h>
#include <string.h>

#define N 100000

/* [inherit] Filled before the pool exists: every worker sees it for free. */
static int64_t g_table[N];

/* Reads the inherited table instead of receiving the data. */
static int lookup(const void *in, void *out) {
  int64_t i = *(const int64_t *)in;
  *(int64_t *)out = g_table[i] + 1;
  return 0;
}
/* [/inherit] */

/* [map-task] A fixed-size task: qsort style, one element in, one out. */
static int square(const void *in, void *out) {
  int64_t v = *(const int64_t *)in;
  *(int64_t *)out = v * v;
  return 0;
}
/* [/map-task] */

/* [map-values-task] A codec task: one string in, one string out. */
static int shout(fp_reader *args, fp_writer *out) {
  const char *s;
  size_t n;
  char buf[64];
  int rc = fp_read_str(args, &s, &n);
  if (rc != 0)
    return rc;
  if (n + 1 > sizeof(buf))
    return fp_task_fail("string of %zu bytes is too long", n);
  for (size_t i = 0; i < n; i++)
    buf[i] = (char)(s[i] >= 'a' && s[i] <= 'z' ? s[i] - 32 : s[i]);
  buf[n] = '!';
  return fp_write_strn(out, buf, n + 1);
}
/* [/map-values-task] */

static int64_t in[N], out[N];

int main(void) {
  for (int64_t i = 0; i < N; i++)
    g_table[i] = 10 * i;

  fp_pool *pool;
  fp_pool_opts opts = {0};
  opts.processes = 2;
  if (fp_pool_new(&pool, &opts) != 0)
    return 1;
  int ok = 1;

  /* [map] out = pool.map(square, in) over a C array */
  for (int64_t i = 0; i < N; i++)
    in[i] = i;
  int rc = fp_pool_map(pool, square, in, N, sizeof in[0], out, sizeof out[0],
                       NULL); /* default chunks: at most 48 KiB of input */
  if (rc != 0)
    fprintf(stderr, "map: %s\n", fp_last_error());
  /* [/map] */
  for (int64_t i = 0; i < N; i++)
    ok = ok && out[i] == i * i;
  printf("map(square, 0..%d): out[%d] = %lld\n", N - 1, N - 1,
         (long long)out[N - 1]);

  /* Same call, explicit chunksize, a task that reads inherited memory. */
  fp_call_opts co = {0};
  co.chunksize = 1000;
  rc = fp_pool_map(pool, lookup, in, N, sizeof in[0], out, sizeof out[0], &co);
  ok = ok && rc == 0 && out[123] == 1231;
  printf("map(lookup) reads the inherited table: out[123] = %lld\n",
         (long long)out[123]);

  /* [map-values] pool.map(shout, ["spam", "eggs", "ham"]) */
  const char *words[] = {"spam", "eggs", "ham"};
  fp_writer items, results;
  fp_writer_init(&items);
  fp_writer_init(&results);
  for (int i = 0; i < 3; i++)
    fp_write_str(&items, words[i]); /* one value per item */
  rc = fp_pool_map_values(pool, shout, &items, &results, NULL);
  fp_reader rd;
  fp_reader_init(&rd, results.data, results.len); /* one value per item */
  for (int i = 0; rc == 0 && i < 3; i++) {
    const char *s;
    if (fp_read_str(&rd, &s, NULL) != 0)
      ok = 0;
    else
      printf("%s -> %s\n", words[i], s);
  }
  /* [/map-values] */
  ok = ok && rc == 0 && fp_reader_at_end(&rd);

  fp_pool_free(pool); /* like leaving `with Pool() as pool:` */
  fp_writer_free(&items);
  fp_writer_free(&results);
  return ok ? 0 : 1;
}
