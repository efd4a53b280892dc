/* local.h - the local link's own protocol: what its three kinds of process
 * (the master's link_local.c, the fork server, the workers) share.
 *
 * The scheduler never includes this header: it sees the local link only
 * through link.h. Shared memory here is mapped by link_local.c before the
 * fork server is forked, so every worker inherits it.
 */
#ifndef FP_POOL_LOCAL_H
#define FP_POOL_LOCAL_H

#include "pool/proto.h"

#include <signal.h>
#include <stdatomic.h>
#include <sys/types.h>
#include <sys/uio.h>

#define FP__SOCKBUF (2 << 20) /* requested SO_SNDBUF/SO_RCVBUF per socket */

/* ---- what a worker publishes ---------------------------------------------
 *
 * One per worker slot, in a MAP_SHARED mapping, so the worker (writer) and
 * the master (reader) see the same memory. The worker publishes what it is
 * running with relaxed atomic stores: a few nanoseconds per item, and after
 * a crash the master knows which item was executing without any message. */
typedef struct fp__slot {
  _Atomic int32_t pid;
  _Atomic int32_t cpu;        /* sched_getcpu() at the last chunk */
  _Atomic uint64_t seq;       /* chunk running, 0 when idle */
  _Atomic int64_t item;       /* item index running */
  _Atomic int64_t started_ns; /* start of that item; 0: clock stopped */
  char pad[64 - 32];
} fp__slot;

/* ---- result rings (ring.c) ------------------------------------------------
 *
 * Results of up to FP__RING_MAX bytes travel through a per-worker ring in
 * shared memory instead of the socket: the worker copies the RESULT frame
 * into the ring and publishes it with one store, with no system call. The
 * master drains the rings after every wake-up of its loop. Only when the
 * master is about to sleep (master_idle, set just before epoll) does a
 * worker send a one-frame KICK on its socket to wake it: Dekker-style, the
 * worker stores the tail, then reads master_idle; the master stores
 * master_idle, then reads the tails, all four accesses seq_cst, so at least
 * one side sees the other's store and a result is never left unseen.
 *
 * Results in the ring survive the worker: when a worker dies, the master
 * drains its ring before accounting for its chunks, so a chunk that
 * finished is never run twice or lost. Entries are frames (frame.h),
 * 8-byte aligned; FP__RING_WRAP in place of a frame header marks the unused
 * end before a wrap. */
#define FP__RING_SIZE (256 * 1024)
#define FP__RING_MAX (FP__RING_SIZE / 2)
#define FP__RING_WRAP 0xFFFFFFFFu

typedef struct fp__ring {
  _Atomic uint64_t head; /* consumer (master) position in bytes */
  char pad1[56];
  _Atomic uint64_t tail; /* producer (worker) position in bytes */
  char pad2[56];
  unsigned char data[FP__RING_SIZE];
} fp__ring;

/* The local link's shared mapping: one slot and one ring per worker. */
typedef struct fp__local_shm {
  _Atomic int master_idle; /* the pool thread is (about to be) asleep */
  char pad[60];
  int nslots;
  char pad2[60];
  fp__slot *slots;   /* nslots, inside this mapping */
  fp__ring *rings;   /* nslots, inside this mapping */
} fp__local_shm;

/* Worker side: copies a frame of `total` payload bytes (the iov parts)
 * into the ring and publishes it. Returns 0, or -1 when it does not fit
 * now (the caller sends it on the socket instead). */
int fp__ring_put(fp__ring *r, const struct iovec *iov, int n, size_t total);

/* Master side: the frame at *pos (a private copy of the head), if any.
 * Returns 1 and sets *payload and *len (valid until fp__ring_release), 0 when
 * the ring is empty, or -1 when the ring is corrupt (the caller treats the
 * worker as broken). Advances *pos past the frame. */
int fp__ring_next(fp__ring *r, uint64_t *pos, const unsigned char **payload,
                  size_t *len);

/* Master side: frees the space before pos for the worker to reuse. */
void fp__ring_release(fp__ring *r, uint64_t pos);

/* 1 when the worker published something the master has not taken. */
int fp__ring_pending(fp__ring *r);

/* ---- the fork server's protocol (SOCK_SEQPACKET, a message a packet) ---- */

enum {
  FP__FS_SPAWN = 1, /* master -> fs: fork a worker for slot */
  FP__FS_KILL,      /* master -> fs: kill(pid, sig) if pid is still ours */
  FP__FS_SPAWNED,   /* fs -> master: slot, pid, and the socket (SCM_RIGHTS) */
  FP__FS_EXITED,    /* fs -> master: slot, pid, wait status */
  FP__FS_FAILED     /* fs -> master: slot, errno of fork/socketpair */
};

typedef struct fp__fs_msg {
  int32_t op;
  int32_t slot;
  int32_t pid;
  int32_t arg; /* signal, wait status or errno */
} fp__fs_msg;

/* ---- starting the processes ---------------------------------------------- */

/* What the fork server hands a new worker besides the fp__wconf. */
typedef struct fp__wboot {
  int slot;
  int fd;                 /* the worker's end of its socket */
  pid_t parent;           /* the fork server, for PR_SET_PDEATHSIG */
  sigset_t mask;          /* the signal mask to run tasks with */
  fp__local_shm *shm;     /* slots and rings */
} fp__wboot;

/* The fork server's main loop (forkserver.c); never returns. master is the
 * pid of the process that forked it; by_main_thread says whether the
 * forking thread was its main thread (PR_SET_PDEATHSIG is then safe). */
void fp__forkserver_main(const fp__wconf *cfg, fp__local_shm *shm, int ctl,
                         pid_t master, int by_main_thread)
    __attribute__((noreturn));

/* A worker's main loop (worker.c); never returns. */
void fp__worker_main(const fp__wconf *cfg, const fp__wboot *boot)
    __attribute__((noreturn));

/* ---- descriptors (fdreg.c) ------------------------------------------------
 *
 * The registry of library-owned descriptors that fork servers close when
 * they start. Register right after opening; unregister before closing, so
 * a reused number is never closed by mistake. */
void fp__fdreg_add(int fd);
void fp__fdreg_del(int fd);
void fp__fdreg_close_all(int keep);

/* Moves fd above the standard descriptors (0-2) when it is one of them, so
 * a daemon that closed stdin/stdout/stderr never has a library socket
 * mistaken for a standard stream (libuv refuses to close fds 0-2).
 * Returns the descriptor to use (fd itself, or a close-on-exec copy; the
 * original is closed) or -errno. */
int fp__fd_above_stdio(int fd);

#endif
