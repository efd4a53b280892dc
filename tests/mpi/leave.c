/* SPDX-License-Identifier: MIT */
/* leave.c - every way rank 0 can leave ends the worker ranks, so mpirun
 * returns (each case would hang it otherwise; run.sh bounds the run).
 *
 *   mpirun -n 3 leave --no-free   rank 0 makes a pool, runs a task and
 *                                 returns from main without fp_pool_free:
 *                                 the link's exit handler tells every rank
 *                                 BYE before MPI is finalized.
 *   mpirun -n 3 leave --late      rank 2 reaches fp_pool_new() after rank
 *                                 0 gave up waiting for it
 *                                 (FP_MPI_HELLO_TIMEOUT=1): rank 0 fails
 *                                 with FP_ETIMEDOUT naming rank 2, and rank
 *                                 2, which had not said HELLO, still gets
 *                                 its BYE once it serves.
 */
#include "forkpool.h"
#include "mpitest.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int one(fp_reader *args, fp_writer *out) {
  (void)args;
  return fp_write_int(out, 1);
}

static fp_pool *pool;

static void c_no_free(void *a) {
  (void)a;
  fp_writer out;
  fp_writer_init(&out);
  int rc = fp_pool_apply(pool, one, NULL, &out);
  EXPECT(rc == 0, "apply: %s", fp_last_error());
  fp_writer_free(&out);
}

static void c_late(void *a) {
  int rc = *(int *)a;
  EXPECT(rc == FP_ETIMEDOUT && pool == NULL, "fp_pool_new: %s",
         fp_err_name(rc));
  EXPECT(strstr(fp_last_error(), "rank 2") != NULL, "message: %s",
         fp_last_error());
}

int main(int argc, char **argv) {
  int late = argc > 1 && strcmp(argv[1], "--late") == 0, rank = 0, level;
  if (late) {
    /* MPI up on every rank first (its start-up waits for all of them),
     * then rank 2 is slow to reach the pool. */
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &level);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    setenv("FP_MPI_HELLO_TIMEOUT", "1", 1);
    if (rank == 2) /* past rank 0's 1 s wait */
      nanosleep(&(struct timespec){2, 500000000}, NULL);
  }
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1};
  int rc = fp_pool_new(&pool, &o); /* worker ranks serve, then exit */
  if (late) {
    mt_run("late_rank_gets_bye", c_late, &rc);
    rc = mt_done();
    MPI_Finalize(); /* ours: the library finalizes only what it started */
    return rc;
  }
  EXPECT(rc == 0, "fp_pool_new: %s", fp_last_error());
  if (rc != 0)
    return mt_done();
  mt_run("exit_without_pool_free", c_no_free, NULL);
  return mt_done(); /* no fp_pool_free: the exit handler ends the ranks */
}
