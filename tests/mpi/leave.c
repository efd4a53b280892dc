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
 *   mpirun -n 3 leave --finalize  rank 0 calls MPI_Finalize with its pool
 *                                 alive: the link's MPI_COMM_SELF
 *                                 attribute says BYE from inside it, and
 *                                 the pool then fails calls with
 *                                 FP_EWORKER instead of waiting.
 *   mpirun -n 3 leave --bad-option [pin]   an option out of range
 *                                 (pin_ncpus, or the pin policy): every
 *                                 rank returns FP_EINVAL before any MPI
 *                                 call.
 *   mpirun -n 2 leave --many      1024 workers on the worker rank:
 *                                 fp_pool_free returns within its 10 s
 *                                 BYE bound (the pool told each worker
 *                                 FINISH at every loop iteration, 744,000
 *                                 messages queued, and free took minutes)
 *   mpirun -n 3 leave --stopped   rank 1 is stopped (SIGSTOP) before
 *                                 rank 0 frees the pool: fp_pool_free
 *                                 gives the silent rank up and returns
 *                                 (it waited forever); rank 1 is then let
 *                                 go so that the job can end
 *   mpirun -n 3 leave --threads   two threads of every rank make an MPI
 *                                 pool at once: one gets it (rank 0) or
 *                                 serves, the other gets FP_ENOTSUP; MPI
 *                                 is started once.
 */
#include "forkpool.h"
#include "mpitest.h"

#include <mpi.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
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

/* Runs until its rank ends it (20 s at most). */
static int hold(fp_reader *args, fp_writer *out) {
  (void)args;
  double end = mt_now() + 20;
  while (mt_now() < end)
    nanosleep(&(struct timespec){0, 10000000}, NULL);
  return fp_write_int(out, 0);
}

/* Whether a timed task runs on slot 0 (its rank reports it every 5 ms). */
static int holding(void) {
  fp_worker_info wi;
  return fp_pool_worker_info(pool, 0, &wi) == 0 && wi.last_cpu >= 0;
}

static void c_finalize(void *a) {
  (void)a;
  fp_call_opts co = {.timeout = 30}; /* timed: the rank reports the run */
  fp_result *held;
  int rc = fp_pool_apply_async(pool, hold, NULL, &co, &held);
  EXPECT(rc == 0, "apply_async: %s", fp_last_error());
  for (double end = mt_now() + 10; !holding() && mt_now() < end;)
    nanosleep(&(struct timespec){0, 10000000}, NULL);
  MPI_Finalize(); /* returns: the ranks were told BYE from inside it */
  /* The running task fails with the reason, not as a crash of its own. */
  rc = fp_result_get(held, 10);
  EXPECT(rc == FP_EWORKER && strstr(fp_result_error(held), "MPI_Finalize"),
         "running task: %s: %s", fp_err_name(rc), fp_result_error(held));
  fp_result_free(held);
  fp_writer out;
  fp_writer_init(&out);
  rc = fp_pool_apply(pool, one, NULL, &out);
  EXPECT(rc == FP_EWORKER, "apply after MPI_Finalize: %s", fp_err_name(rc));
  EXPECT(strstr(fp_last_error(), "MPI_Finalize") != NULL, "message: %s",
         fp_last_error());
  fp_worker_info wi; /* no replacement was asked of the gone ranks */
  EXPECT(fp_pool_worker_info(pool, 0, &wi) == 0 && wi.restarts == 0,
         "restarts %llu", (unsigned long long)wi.restarts);
  fp_writer_free(&out);
  fp_pool_free(pool);
}

static const char *g_bad_name;

static void c_refused(void *a) {
  int rc = *(int *)a;
  EXPECT(rc == FP_EINVAL && pool == NULL, "fp_pool_new: %s",
         fp_err_name(rc));
  EXPECT(strstr(fp_last_error(), g_bad_name) != NULL, "message: %s",
         fp_last_error());
}

/* --bad-option: no rank may serve, so each one reports; only rank 0's
 * line is counted (mpirun sets the rank in the environment). */
static int bad_option(const char *which) {
  const char *r = getenv("OMPI_COMM_WORLD_RANK");
  static const int cpu0 = 0;
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1};
  if (strcmp(which, "pin") == 0) { /* not a worker rank's "cannot serve" */
    o.pin = (fp_pin_policy)99;
    g_bad_name = "invalid pool option pin ";
  } else {
    o.pin_cpus = &cpu0;
    o.pin_ncpus = SIZE_MAX;
    g_bad_name = "pin_ncpus";
  }
  int rc = fp_pool_new(&pool, &o);
  if (r != NULL && strcmp(r, "0") != 0)
    return rc == FP_EINVAL ? 0 : 1;
  mt_run("option_out_of_range_refused_on_every_rank", c_refused, &rc);
  return mt_done();
}

static int made[2];
static fp_pool *pools[2];

static void *make_pool(void *arg) {
  intptr_t i = (intptr_t)arg;
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1};
  made[i] = fp_pool_new(&pools[i], &o); /* a worker rank serves here */
  return NULL;
}

static void c_threads(void *a) {
  (void)a;
  int one_ok = (made[0] == 0) + (made[1] == 0) == 1;
  EXPECT(one_ok, "fp_pool_new: %s and %s", fp_err_name(made[0]),
         fp_err_name(made[1]));
  EXPECT(made[0] == FP_ENOTSUP || made[1] == FP_ENOTSUP, "%s and %s",
         fp_err_name(made[0]), fp_err_name(made[1]));
  for (int i = 0; i < 2; i++)
    if (made[i] == 0) {
      pool = pools[i];
      c_no_free(NULL);
      fp_pool_free(pools[i]);
    }
}

static int threads(void) {
  pthread_t th[2];
  for (intptr_t i = 0; i < 2; i++)
    pthread_create(&th[i], NULL, make_pool, (void *)i);
  for (int i = 0; i < 2; i++)
    pthread_join(th[i], NULL);
  mt_run("pools_made_by_two_threads_at_once", c_threads, NULL);
  return mt_done();
}

static void c_many(void *a) {
  (void)a;
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1024};
  int rc = fp_pool_new(&pool, &o);
  EXPECT(rc == 0, "fp_pool_new: %s", fp_last_error());
  if (rc != 0)
    return;
  c_no_free(NULL);
  double t0 = mt_now();
  fp_pool_free(pool);
  double took = mt_now() - t0;
  EXPECT(took < 10, "fp_pool_free took %.1f s, past the 10 s BYE bound",
         took);
}

static int rank_pids[16];

static void c_stopped(void *a) {
  (void)a;
  c_no_free(NULL); /* every rank serves */
  kill(rank_pids[1], SIGSTOP);
  double t0 = mt_now();
  fp_pool_free(pool);
  double took = mt_now() - t0;
  kill(rank_pids[1], SIGCONT); /* MPI_Finalize needs it */
  /* SIGKILL after kill_grace, given up UNRESPONSIVE_NS (10 s) later. */
  EXPECT(took < 40, "fp_pool_free took %.1f s with rank 1 stopped", took);
}

/* --stopped: every rank says its pid before the pool is made. */
static int stopped(int argc, char **argv) {
  int level, rank = 0, size = 0, pid = (int)getpid();
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &level);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size > 16 || size < 2)
    return 1;
  MPI_Gather(&pid, 1, MPI_INT, rank_pids, 1, MPI_INT, 0, MPI_COMM_WORLD);
  fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1};
  int rc = fp_pool_new(&pool, &o); /* worker ranks serve in here */
  EXPECT(rc == 0, "fp_pool_new: %s", fp_last_error());
  if (rc == 0)
    mt_run("free_gives_up_a_stopped_rank", c_stopped, NULL);
  rc = mt_done();
  MPI_Finalize(); /* ours: the library finalizes only what it started */
  return rc;
}

/* --many: worker ranks serve inside fp_pool_new, rank 0 runs the case. */
static int many(void) {
  const char *r = getenv("OMPI_COMM_WORLD_RANK");
  if (r != NULL && strcmp(r, "0") != 0) {
    fp_pool_opts o = {.transport = FP_TRANSPORT_MPI, .processes = 1024};
    return fp_pool_new(&pool, &o) == 0 ? 0 : 1;
  }
  mt_run("free_of_a_thousand_workers_per_rank_is_bounded", c_many, NULL);
  return mt_done();
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  if (strcmp(mode, "--many") == 0)
    return many();
  if (strcmp(mode, "--stopped") == 0)
    return stopped(argc, argv);
  int late = strcmp(mode, "--late") == 0, rank = 0, level;
  if (strcmp(mode, "--bad-option") == 0)
    return bad_option(argc > 2 ? argv[2] : "");
  if (strcmp(mode, "--threads") == 0)
    return threads();
  if (late || strcmp(mode, "--finalize") == 0) {
    /* MPI up on every rank first (its start-up waits for all of them),
     * then rank 2 is slow to reach the pool. */
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &level);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  }
  if (late) {
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
  if (strcmp(mode, "--finalize") == 0)
    mt_run("finalize_with_the_pool_alive", c_finalize, NULL);
  return mt_done(); /* no fp_pool_free: the exit handler ends the ranks */
}
