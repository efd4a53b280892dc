/* SPDX-License-Identifier: MIT */
/* bench.c - rough figures for docs/mpi.md: the MPI link next to the local
 * pool on the same machine. Not a test: run it by hand,
 *   mpirun --oversubscribe -n 3 build/tests/mpi/bench
 * Rank 0 measures an MPI pool (one worker per worker rank), frees it (the
 * worker ranks leave), then a local pool with as many workers: apply round
 * trip, apply_async throughput of empty tasks, and fixed-size map
 * throughput of a trivial element function.
 */
#include "forkpool.h"
#include "mpitest.h"

#include <string.h>

static int nop(fp_reader *args, fp_writer *out) {
  (void)args;
  return fp_write_nil(out);
}

static int sq_elem(const void *in, void *out) {
  int64_t x;
  memcpy(&x, in, sizeof(x));
  x *= x;
  memcpy(out, &x, sizeof(x));
  return 0;
}

static void measure(const char *name, fp_pool *p) {
  enum { RT = 2000, AS = 20000, MAPN = 4000000 };
  static int64_t in[MAPN], out[MAPN];
  static fp_result *r[AS];
  double t0 = mt_now();
  for (int i = 0; i < RT; i++)
    fp_pool_apply(p, nop, NULL, NULL);
  double rt = (mt_now() - t0) / RT * 1e6;
  t0 = mt_now();
  for (int i = 0; i < AS; i++)
    fp_pool_apply_async(p, nop, NULL, NULL, &r[i]);
  for (int i = 0; i < AS; i++) {
    fp_result_get(r[i], 60);
    fp_result_free(r[i]);
  }
  double as = AS / (mt_now() - t0);
  t0 = mt_now();
  fp_pool_map(p, sq_elem, in, MAPN, 8, out, 8, NULL);
  double mp = MAPN / (mt_now() - t0);
  printf("%-6s workers %d: apply round trip %.1f us, apply_async %.0f "
         "tasks/s, map %.1f M items/s (%.0f MB/s each way)\n",
         name, fp_pool_size(p), rt, as, mp / 1e6, mp * 8 / 1e6);
}

int main(void) {
  fp_pool *p = NULL;
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1};
  if (fp_pool_new(&p, &o) != 0) {
    printf("fp_pool_new: %s\n", fp_last_error());
    return 1;
  }
  int n = fp_pool_size(p);
  measure("mpi", p);
  fp_pool_free(p);
  fp_pool_opts lo = {.processes = n};
  if (fp_pool_new(&p, &lo) != 0)
    return 1;
  measure("local", p);
  fp_pool_free(p);
  return 0;
}
