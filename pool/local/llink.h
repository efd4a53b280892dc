/* SPDX-License-Identifier: MIT */
/* llink.h - the local link's master side, shared by its files (private to
 * pool/local/; see link.h for the interface they implement together):
 *
 *   link_local.c  the operations, the loop's hooks (spinning, draining),
 *                 and what the fork server reports (workers started and
 *                 gone, the server itself gone)
 *   inbound.c     what workers send: their sockets' frames and their
 *                 result rings, handed to the scheduler
 *   outbound.c    what goes to workers: task frames into the task ring or
 *                 onto the socket, and FINISH
 *   fsclient.c    the fork server from the master's side: forking it, its
 *                 control socket, watching and reaping it
 *
 * Calls go one way: link_local.c uses the other three, inbound.c uses
 * fsclient.c (a worker's EOF makes its EXITED due), and none calls back
 * into link_local.c; events reach the scheduler through l->ev.
 */
#ifndef FP_POOL_LOCAL_LLINK_H
#define FP_POOL_LOCAL_LLINK_H

#include "pool/link.h"
#include "pool/local/local.h"

#include <sys/types.h>
#include <uv.h>

typedef struct llink llink;

/* A worker's stream socket as the loop watches it, with its buffers. */
typedef struct conn {
  uv_poll_t poll; /* must stay first: handle -> conn */
  llink *l;
  int slot;
  int fd;
  int eof;  /* nothing more to read (or write) */
  int lost; /* a result it sent could not be held: nothing
               after it is processed (it is being killed) */
  int closing;
  int events;        /* current uv_poll events */
  unsigned char *in; /* read buffer */
  size_t in_len, in_cap;
  unsigned char *out; /* unsent bytes of the last send */
  size_t out_len, out_off, out_cap;
  unsigned char *part; /* a RESULT arriving in PART frames (proto.h) */
  size_t part_len, part_cap;
} conn;

/* What the master knows of one worker slot (never read back from the
 * shared mapping). */
typedef struct lslot {
  conn *c;           /* current worker's socket, NULL when none */
  pid_t pid;         /* current worker, 0 when none */
  pid_t discard_pid; /* killed at start: swallow its EXITED */
  int spawning;      /* SPAWN sent, no answer yet */
  int ready;
  int finished;        /* FINISH is in the task ring */
  uint64_t start_time; /* the worker's, from /proc (0: unknown) */
  uint64_t ttail;      /* the task ring's tail: the master's own copy,
                          never read back from the ring, where any
                          worker's task could have rewritten it */
  int64_t exit_due_ns; /* its EXITED is due by then (SIGKILL sent, or
                          its socket closed); 0: none expected */
} lslot;

/* The local link: the scheduler's fp__link, and everything behind it. */
struct llink {
  fp__link base;
  fp__link_events ev;
  fp__wconf cfg; /* the fork server reads this copy */
  fp__local_shm *shm;
  fp__shm_view v; /* where the mapping's parts are: never read back
                     from the mapping, which workers can write */
  size_t shm_len;
  lslot *slots;
  pid_t fs_pid;
  pid_t opener; /* the process that opened the link */
  int fs_fd;    /* master end of the control socket */
  int started;  /* loop handles initialised */
  int lost;     /* the fork server is gone */
  uv_loop_t *loop;
  uv_poll_t fs_poll;
  uv_prepare_t prep;         /* before each poll: master_idle, ring check */
  uv_check_t chk;            /* after each poll: drain the rings */
  uv_idle_t spin;            /* keeps the poll from blocking while rings fill */
  uv_async_t flush;          /* a user thread left bytes to send */
  uv_timer_t watch;          /* runs while an EXITED is due (fp__fs_watch) */
  int watching;              /* watch runs */
  int watch_wanted;          /* an EXITED became due: on_flush starts watch */
  int counted;               /* the pool thread is in the CPU budget */
  _Atomic int64_t last_work; /* fp__now_ns() of the last send or result */
  int copy_pipe[2];          /* safe_copy's fallback, made on first use */
  /* Control messages the socket had no room for, in order (fp__fs_send). */
  fp__fs_msg *ctl_q;
  size_t ctl_len, ctl_cap;
};

/* Calls one of the scheduler's events (link.h, fp__link_events). */
#define FP__LL_EV(l, name, ...) (l)->ev.name((l)->ev.ctx, __VA_ARGS__)

/* How long a worker's EXITED may take after its SIGKILL was sent or its
 * socket closed, and the fork server after the EOF on its socket, before
 * the fork server is looked at (fsclient.c). It reaps and reports within
 * milliseconds; one that is stopped (SIGSTOP, a debugger) sends no kill
 * and reports no death: terminate would wait for ever, and so would the
 * work of a worker that died. A worker may also just take long to die (a
 * task that closed its own socket and runs on): that is no reason to kill
 * the fork server, which is why its state is checked. */
#define FP__FS_STUCK_NS (2 * 1000000000LL)

/* ---- inbound.c ----------------------------------------------------------- */

/* Sets the events the loop watches on a worker's socket (loop thread). */
void fp__conn_set_events(conn *c, int events);
/* Stops watching the socket and closes it; the conn is freed by libuv's
 * close callback. */
void fp__conn_close(conn *c);
/* Reads and handles what the socket has. Returns 0, or 1 at EOF/error. */
int fp__conn_read(conn *c);
/* Hands every result published in slot's ring to the scheduler. Returns
 * how many. */
int fp__llink_drain(llink *l, int slot);
/* 1 when some worker's result ring holds a result. */
int fp__llink_pending(llink *l);

/* ---- outbound.c ---------------------------------------------------------- */

/* Sends the frames of t[0..n) to slot's worker (link.h, send). On a
 * failure *sent stays -1: the caller kills the worker. */
int fp__llink_send(llink *l, int slot, const fp__task_out *t, int n, int *sent);
/* Puts FINISH in slot's task ring and EOF on its socket (link.h). */
void fp__llink_finish(llink *l, int slot);

/* ---- fsclient.c ---------------------------------------------------------- */

/* Forks the fork server with its control socket (l->fs_pid, l->fs_fd).
 * 0 or -errno. */
int fp__fs_fork(llink *l);
/* Sends a request, or queues it when the socket is full. 0, FP_EPIPE (the
 * server is gone), FP_ENOMEM or -errno. */
int fp__fs_send(llink *l, int op, int slot, int pid, int arg, uint64_t aim);
/* Sends the queued requests until the socket is full; 0 or -errno. */
int fp__fs_flush_queue(llink *l);
/* Receives one message: 0, 1 when none waits, -1 at EOF; *fd is the
 * descriptor that came with it or -errno. */
int fp__fs_recv(llink *l, fp__fs_msg *m, int *fd);
/* slot's EXITED is now due within FP__FS_STUCK_NS (any thread holding the
 * owner's lock); the loop thread starts l->watch (fp__fs_watch). */
void fp__fs_expect_exit(llink *l, int slot);
/* l->watch's callback: kills a stopped fork server once an EXITED is
 * overdue; stops when none is due. */
void fp__fs_watch(uv_timer_t *t);
/* Says how the fork server ended, for the pool's error message. */
void fp__fs_death_message(const llink *l, char *buf, size_t len);
/* Reaps the fork server after the EOF on its socket (free()). */
void fp__fs_reap(pid_t pid);

#endif
