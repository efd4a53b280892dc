/* SPDX-License-Identifier: MIT */
/* nolink_close.c - close and join across ranks, the MPI link found by
 * dlopen().
 *
 * Linked with the core only, by the plain compiler: no MPI library in the
 * program. Run under mpirun with FP_MPI_LIBRARY naming the built
 * libforkpool_mpi.so.0, which brings Open MPI in at run time. Rank 0 queues
 * a map_async, closes the pool, joins (the queued work finishes first) and
 * checks every result; the worker ranks exit 0 when the pool is freed.
 */
#include "forkpool.h"
#include "mpitest.h"

#include <string.h>

static fp_pool *pool;

static int cube(const void *in, void *out) {
  int64_t x;
  memcpy(&x, in, sizeof(x));
  x = x * x * x;
  memcpy(out, &x, sizeof(x));
  return 0;
}

static void c_close_join(void *a) {
  (void)a;
  enum { N = 3000 };
  static int64_t in[N], out[N];
  fp_result *r = NULL;
  for (int i = 0; i < N; i++)
    in[i] = i;
  fp_call_opts co = {.chunksize = 50};
  EXPECT(fp_pool_map_async(pool, cube, in, N, 8, out, 8, &co, &r) == 0,
         "submit");
  EXPECT(fp_pool_close(pool) == 0, "close");
  EXPECT(fp_pool_map(pool, cube, in, 1, 8, out, 8, NULL) == FP_ECLOSED,
         "submit after close");
  EXPECT(fp_pool_join(pool) == 0, "join");
  EXPECT(fp_result_ready(r) == 1 && fp_result_get(r, 0) == 0,
         "ready after join: %s", fp_result_error(r));
  int bad = 0;
  for (int i = 0; i < N; i++)
    bad += out[i] != in[i] * in[i] * in[i];
  EXPECT(bad == 0, "%d wrong", bad);
  fp_result_free(r);
}

int main(void) {
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1};
  int rc = fp_pool_new(&pool, &o);
  if (rc != 0) {
    printf("fp_pool_new: %s: %s\n0 passed, 1 failed\n", fp_err_name(rc),
           fp_last_error());
    return 1;
  }
  mt_run("close_then_join_finishes_queued_work", c_close_join, NULL);
  fp_pool_free(pool);
  return mt_done();
}
