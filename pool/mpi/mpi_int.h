/* SPDX-License-Identifier: MIT */
/* mpi_int.h - what the files of libforkpool_mpi share: the messages between
 * rank 0 and the worker ranks, the MPI world, and the progress thread.
 *
 * Processes:
 *
 *   rank 0: user threads -> scheduler -> link_mpi.c --+
 *                          (pool thread)              | progress thread
 *                                                     | (progress.c), the
 *   rank r: rank.c's loop -> the local link -> workers| only caller of MPI
 *                                                     | once a pool runs
 *
 * Every message is one MPI_BYTE message on MPI_COMM_WORLD with tag
 * FP__MPI_TAG: an fp__mhdr, then a payload. All messages between two ranks
 * share that tag, so MPI's non-overtaking rule keeps them in order: a KILL
 * for a worker always arrives before the SPAWN of its replacement, and a
 * worker's results before its EXITED. Slots in messages are the worker
 * rank's local slots; rank 0 maps them to the scheduler's (link_mpi.c).
 *
 * A TASK message carries the frames exactly as the local link would write
 * them on a worker's socket (u32 length, fp__task_hdr, padding, items,
 * padding); a RESULT carries one RESULT payload as a worker wrote it. So
 * the bytes a task sees and a result carries are the same as locally.
 */
#ifndef FP_POOL_MPI_INT_H
#define FP_POOL_MPI_INT_H

#include "pool/transport.h"

#include <mpi.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdint.h>

/* The tag of every forkpool message on MPI_COMM_WORLD (reserved while a
 * pool lives; docs/mpi.md). MPI guarantees tags up to 32767. */
#define FP__MPI_TAG 32123
/* The largest payload of one message: MPI counts are int, and the header
 * comes on top. Longer tasks are refused when made (FP_EMSGSIZE); a longer
 * result is reported as a violation by its rank (rank.c). */
#define FP__MPI_PAYLOAD_MAX ((size_t)INT32_MAX - 64)

enum {
  /* worker rank -> rank 0 */
  FP__M_HELLO = 1,    /* arg: slots offered (or a negative code); payload:
                         fp__mhello */
  FP__M_STARTED,      /* slot, pid */
  FP__M_READY,        /* slot */
  FP__M_RESULT,       /* slot; payload: a RESULT payload */
  FP__M_RETIRED,      /* slot */
  FP__M_VIOLATION,    /* slot; payload: what (text) */
  FP__M_EXITED,       /* slot, pid, arg: wait status; payload: fp__mrun */
  FP__M_START_FAILED, /* slot, arg: error */
  FP__M_RUNNING,      /* slot, pid; payload: fp__mrun */
  FP__M_LOST,         /* the rank's fork server died */
  FP__M_BYE_ACK,      /* the rank ended its workers and leaves */
  FP__M_NO_MEMORY,    /* slot: the rank had no memory for a worker's results */
  /* rank 0 -> worker rank */
  FP__M_SPAWN,  /* slot */
  FP__M_TASK,   /* slot, arg: frames; payload: the frames */
  FP__M_KILL,   /* slot, pid, arg: signal */
  FP__M_FINISH, /* slot */
  FP__M_BYE     /* end every worker and leave */
};

typedef struct fp__mhdr {
  uint8_t op;
  uint8_t pad[3];
  int32_t slot;
  int32_t pid;
  int32_t arg;
} fp__mhdr;

/* What a worker runs, as a worker rank reports it. Clocks of two machines
 * are not comparable, so the start of an item travels as its age when the
 * report was made; rank 0 turns it back into its own clock. */
typedef struct fp__mrun {
  uint64_t seq;
  int64_t item;
  int64_t age_ns; /* -1: not known (untimed chunk) */
  int32_t cpu;
  int32_t pad;
} fp__mrun;

#define FP__MPI_HOST 64

typedef struct fp__mhello {
  char host[FP__MPI_HOST];
  char err[256]; /* why the rank cannot serve (arg < 0) */
} fp__mhello;

/* ---- one message (progress.c) ------------------------------------------- */

typedef struct fp__mbuf {
  struct fp__mbuf *next;
  int peer;           /* destination, or source of a received message */
  size_t len;         /* bytes of data */
  MPI_Request req;
  unsigned char *data; /* starts with an fp__mhdr */
} fp__mbuf;

/* A message of sizeof(fp__mhdr) + extra bytes with its header filled;
 * NULL when out of memory. The payload starts at FP__MPAYLOAD(m). */
fp__mbuf *fp__mbuf_new(int peer, int op, int slot, int pid, int arg,
                       size_t extra);
void fp__mbuf_free(fp__mbuf *m);
#define FP__MHDR(m) ((const fp__mhdr *)(m)->data)
#define FP__MPAYLOAD(m) ((m)->data + sizeof(fp__mhdr))
#define FP__MPAYLOAD_LEN(m) ((m)->len - sizeof(fp__mhdr))

/* ---- the progress thread (progress.c) -------------------------------------
 *
 * Owns every MPI call once started: sends what others post, receives every
 * message with FP__MPI_TAG, and calls notify(arg) (uv_async_send) when it
 * queued incoming messages. */
typedef struct fp__mprog {
  pthread_mutex_t mu;
  pthread_cond_t wake;     /* the thread sleeps on it between polls */
  pthread_cond_t arrived;  /* fp__mprog_wait() sleeps on it */
  fp__mbuf *out, *out_tail;    /* posted, not yet handed to MPI */
  fp__mbuf *in, *in_tail;      /* received, not yet taken */
  fp__mbuf *sending;           /* handed to MPI (the thread's own) */
  int sleeping, stop, running;
  int64_t stop_by_ns;          /* give up unsent messages then */
  void (*notify)(void *arg);
  void *arg;
  pthread_t thread;
} fp__mprog;

int fp__mprog_start(fp__mprog *p, void (*notify)(void *), void *arg);
/* Queues m for sending (takes it; the thread frees it once sent). */
void fp__mprog_post(fp__mprog *p, fp__mbuf *m);
/* No more notify() calls: when it returns, none is under way (call it
 * before closing the async handle notify() pokes). Messages still queue. */
void fp__mprog_mute(fp__mprog *p);
/* Takes every received message, oldest first (a list; NULL: none). */
fp__mbuf *fp__mprog_take(fp__mprog *p);
/* As take, but waits until something arrived or fp__now_ns() passes
 * deadline_ns. */
fp__mbuf *fp__mprog_wait(fp__mprog *p, int64_t deadline_ns);
/* Sends what is queued (until deadline_ns at most), stops the thread and
 * frees what it held. After it, MPI may be called by the caller again. */
void fp__mprog_stop(fp__mprog *p, int64_t deadline_ns);
/* The same, but keeps the queues and their lock: other threads may still
 * post and take (nothing is sent any more). For leaving at exit, while
 * the pool thread may still run. */
void fp__mprog_halt(fp__mprog *p, int64_t deadline_ns);
/* After a halt, once no other thread can post or take: frees what the
 * halt kept. */
void fp__mprog_release(fp__mprog *p);
/* Calls notify() one last time, unless fp__mprog_mute() came first, and
 * mutes: the caller's last word to the loop, which may close right
 * after (under the lock, as every notify()). */
void fp__mprog_notify_last(fp__mprog *p);

/* ---- the world (world.c) --------------------------------------------------- */

typedef struct fp__mpi_world {
  const fp__core_api *core;
  int rank, size;
  int we_initialized;     /* MPI_Init was ours: finalize at exit */
  int used;               /* a pool was made in this process */
  /* rank 0: what each worker rank offers (index: rank) */
  int *base, *count;      /* first scheduler slot, slots */
  char (*host)[FP__MPI_HOST];
  int total;
  /* rank 0: the MPI link while it lives, so that a program that exits
   * without freeing its pool still ends the worker ranks (link_mpi.c) */
  void *_Atomic live;
  int exit_hooked;
} fp__mpi_world;

/* The process's MPI world: MPI itself is process-wide state. */
extern fp__mpi_world fp__mpiw;

int64_t fp__mpi_now(void);
/* A blocking send from the calling thread (only while no progress thread
 * runs). Returns 0 or FP_EPIPE. */
int fp__mpi_send_now(int peer, int op, int slot, int pid, int arg,
                     const void *payload, size_t len);

/* rank 0 (hello.c): waits for every worker rank's HELLO, bounded; fills
 * the world's slot map. Returns 0 or an error (last error set); on error
 * every rank but those that said they cannot serve is told BYE: also one
 * that has not said HELLO yet (it gets the BYE once it serves). */
int fp__mpi_hello_gather(fp__mpi_world *w, const fp_pool_opts *opts);
/* rank 0: tells every worker rank to leave, from the calling thread, but
 * those with said[r] == 2 (they leave on their own; said NULL: all). */
void fp__mpi_bye_all(const fp__mpi_world *w, const int *said);

/* worker ranks (rank.c): serves the pool, then finalizes MPI and exits
 * with status 0 (1 when the rank could not serve). */
void fp__mpi_serve(fp__mpi_world *w, const fp_pool_opts *opts)
    __attribute__((noreturn));

/* rank 0: the link (link_mpi.c). */
extern const fp__link_ops fp__link_mpi;

#endif
