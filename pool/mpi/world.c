/* SPDX-License-Identifier: MIT */
/* world.c - libforkpool_mpi's entry point: MPI start-up and the split of
 * ranks into the master (rank 0) and worker ranks.
 *
 * The core calls fp_mpi_entry() (transport.h) and then prepare() on every
 * rank that runs fp_pool_new(). prepare() initializes MPI when the program
 * has not (asking for MPI_THREAD_MULTIPLE, so the program may keep making
 * MPI calls of its own; SERIALIZED is enough for us, as only one thread of
 * ours calls MPI at a time) and registers an atexit handler that finalizes
 * what it initialized. Worker ranks go on to serve (rank.c) and never
 * return; rank 0 gathers the worker ranks' HELLOs (hello.c) and returns
 * the total number of slots.
 *
 * One MPI pool per run: the worker ranks end with the first pool.
 */
#include "pool/mpi/mpi_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__)
#define FP_MPI_EXPORT __attribute__((visibility("default")))
#else
#define FP_MPI_EXPORT
#endif

fp__mpi_world fp__mpiw;

int64_t fp__mpi_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int fp__mpi_send_now(int peer, int op, int slot, int pid, int arg,
                     const void *payload, size_t len) {
  unsigned char buf[sizeof(fp__mhdr) + sizeof(fp__mhello)];
  fp__mhdr h = {.op = (uint8_t)op, .slot = slot, .pid = pid, .arg = arg};
  if (len > sizeof(buf) - sizeof(h))
    return FP_EMSGSIZE;
  memcpy(buf, &h, sizeof(h));
  if (len)
    memcpy(buf + sizeof(h), payload, len);
  return MPI_Send(buf, (int)(sizeof(h) + len), MPI_BYTE, peer, FP__MPI_TAG,
                  MPI_COMM_WORLD) == MPI_SUCCESS
             ? 0
             : FP_EPIPE;
}

/* The process that initialized MPI: the only one whose exit finalizes it.
 * Its forks (the fork server, workers, a user's child) inherit the atexit
 * handler, and MPI_Finalize in a forked copy spins forever, wedging the
 * job: a task calling exit() would hang its worker instead of failing. */
static pid_t finalize_pid;

static void finalize_at_exit(void) {
  int done = 0;
  if (getpid() != finalize_pid)
    return;
  MPI_Finalized(&done);
  if (!done)
    MPI_Finalize();
}

static const char *level_name(int level) {
  switch (level) {
  case MPI_THREAD_SINGLE:
    return "MPI_THREAD_SINGLE";
  case MPI_THREAD_FUNNELED:
    return "MPI_THREAD_FUNNELED";
  case MPI_THREAD_SERIALIZED:
    return "MPI_THREAD_SERIALIZED";
  default:
    return "MPI_THREAD_MULTIPLE";
  }
}

/* Initializes MPI unless the program did. Returns 0 or an error. */
static int mpi_up(fp__mpi_world *w) {
  int inited = 0, finalized = 0, level = MPI_THREAD_SINGLE;
  char msg[256];
  MPI_Finalized(&finalized);
  if (finalized) {
    w->core->set_last_error(FP_ENOTSUP, "FP_TRANSPORT_MPI: MPI was "
                                        "already finalized");
    return FP_ENOTSUP;
  }
  MPI_Initialized(&inited);
  if (!inited) {
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &level) !=
        MPI_SUCCESS) {
      w->core->set_last_error(FP_ENOTSUP, "FP_TRANSPORT_MPI: MPI_Init_thread "
                                          "failed");
      return FP_ENOTSUP;
    }
    w->we_initialized = 1;
    finalize_pid = getpid();
    atexit(finalize_at_exit);
  } else {
    MPI_Query_thread(&level);
  }
  if (level < MPI_THREAD_SERIALIZED) {
    snprintf(msg, sizeof(msg),
             "FP_TRANSPORT_MPI: MPI runs at %s; forkpool's progress thread "
             "needs MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE "
             "(MPI_Init_thread)",
             level_name(level));
    w->core->set_last_error(FP_ENOTSUP, msg);
    return FP_ENOTSUP;
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &w->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w->size);
  return 0;
}

/* Claims the run's one MPI pool for the calling thread, starting MPI on
 * the way. Serialized: two threads creating pools at once would both call
 * MPI_Init_thread, which MPI makes fatal for the whole job. */
static int claim(fp__mpi_world *w, const fp__core_api *core) {
  static pthread_mutex_t claim_mu = PTHREAD_MUTEX_INITIALIZER;
  pthread_mutex_lock(&claim_mu);
  w->core = core;
  int rc = w->used ? 0 : mpi_up(w);
  if (rc == 0 && w->used) {
    core->set_last_error(FP_ENOTSUP,
                         "FP_TRANSPORT_MPI: one MPI pool per run (the worker "
                         "ranks serve the first pool and end with it)");
    rc = FP_ENOTSUP;
  } else if (rc == 0 && w->size < 2) {
    core->set_last_error(FP_ENOTSUP, "FP_TRANSPORT_MPI: no worker ranks "
                                     "(run with mpirun -n 2 or more)");
    rc = FP_ENOTSUP;
  }
  if (rc == 0)
    w->used = 1;
  pthread_mutex_unlock(&claim_mu);
  return rc;
}

static int prepare(const fp__core_api *core, const fp_pool_opts *opts,
                   int *nworkers) {
  fp__mpi_world *w = &fp__mpiw;
  int rc = claim(w, core);
  if (rc != 0)
    return rc;
  if (w->rank != 0)
    fp__mpi_serve(w, opts); /* never returns */
  if ((rc = fp__mpi_hello_gather(w, opts)) != 0)
    return rc;
  *nworkers = w->total;
  return 0;
}

static void abandon(void) {
  fp__mpi_bye_all(&fp__mpiw, NULL);
}

static const fp__mpi_entry_t entry = {
    .abi = FP__TRANSPORT_ABI,
    .ops = &fp__link_mpi,
    .prepare = prepare,
    .abandon = abandon,
};

FP_MPI_EXPORT const fp__mpi_entry_t *fp_mpi_entry(const fp__core_api *core);

const fp__mpi_entry_t *fp_mpi_entry(const fp__core_api *core) {
  if (core == NULL || core->abi != FP__TRANSPORT_ABI ||
      core->size != sizeof(fp__core_api))
    return NULL;
  return &entry;
}
