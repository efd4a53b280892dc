/* SPDX-License-Identifier: MIT */
/* link_local.c - the local link: a fork server, a socket and two rings
 * (tasks out, results back) per worker (the master's side; see link.h for
 * the interface).
 *
 * open() maps the shared memory (a published-state slot, a result ring and
 * a task ring per worker, local.h) and forks the fork server, which forks
 * every worker on request. The master talks to the fork server over one
 * SOCK_SEQPACKET socket (SPAWN/KILL out; SPAWNED with the worker's socket,
 * EXITED, FAILED back) and to each worker through its task ring (task
 * frames, SOCK and FINISH markers; a futex wake only when the worker
 * sleeps) and its own stream socket: frames too large for the ring out;
 * READY, large RESULTs, RETIRE and KICKs back, and EOF when either side
 * dies. Small results come through the worker's result ring;
 * prepare/check hooks around every poll of the loop drain the rings, spin
 * for a while after recent work (within the CPU budget, local.h) instead
 * of sleeping, and tell workers (master_idle) when the loop is about to
 * sleep so that they kick it. A user thread waiting for a result may
 * drain the rings too (poll, with the pool's lock held; spin_begin/end
 * count it as a poller, local.h).
 *
 * Every SPAWN is answered by exactly one of: SPAWNED (then, later, one
 * EXITED) or FAILED. A worker whose socket cannot be taken here (the
 * descriptor table is full, say) is killed and reported start_failed();
 * its EXITED is then swallowed. When the fork server dies, every live
 * worker dies with it (PR_SET_PDEATHSIG): each gets its exited(), then
 * lost() says no worker can be made again.
 */
#include "pool/link.h"
#include "pool/local/local.h"
#include "ipc/wire/alloc.h"
#include "ipc/wire/frame.h"
#include "pool/clock.h"
#include "pool/usermem.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Frames at least this big that start the read buffer are handed to the
 * scheduler with the buffer itself instead of being copied out of it. */
#define KEEP_MIN (64 * 1024)

typedef struct llink llink;

typedef struct conn {
  uv_poll_t poll;        /* must stay first: handle -> conn */
  llink *l;
  int slot;
  int fd;
  int eof;               /* nothing more to read (or write) */
  int lost;              /* a result it sent could not be held: nothing
                            after it is processed (it is being killed) */
  int closing;
  int events;            /* current uv_poll events */
  unsigned char *in;     /* read buffer */
  size_t in_len, in_cap;
  unsigned char *out;    /* unsent bytes of the last send */
  size_t out_len, out_off, out_cap;
  unsigned char *part;   /* a RESULT arriving in PART frames (proto.h) */
  size_t part_len, part_cap;
} conn;

typedef struct lslot {
  conn *c;               /* current worker's socket, NULL when none */
  pid_t pid;             /* current worker, 0 when none */
  pid_t discard_pid;     /* killed at start: swallow its EXITED */
  int spawning;          /* SPAWN sent, no answer yet */
  int ready;
  int finished;          /* FINISH is in the task ring */
  uint64_t start_time;   /* the worker's, from /proc (0: unknown) */
  uint64_t ttail;        /* the task ring's tail: the master's own copy,
                            never read back from the ring, where any
                            worker's task could have rewritten it */
  int64_t exit_due_ns;   /* its EXITED is due by then (SIGKILL sent, or
                            its socket closed); 0: none expected */
} lslot;

struct llink {
  fp__link base;
  fp__link_events ev;
  fp__wconf cfg;         /* the fork server reads this copy */
  fp__local_shm *shm;
  fp__shm_view v;        /* where the mapping's parts are: never read back
                            from the mapping, which workers can write */
  size_t shm_len;
  lslot *slots;
  pid_t fs_pid;
  pid_t opener;          /* the process that opened the link */
  int fs_fd;             /* master end of the control socket */
  int started;           /* loop handles initialised */
  int lost;              /* the fork server is gone */
  uv_loop_t *loop;
  uv_poll_t fs_poll;
  uv_prepare_t prep;     /* before each poll: master_idle, ring check */
  uv_check_t chk;        /* after each poll: drain the rings */
  uv_idle_t spin;        /* keeps the poll from blocking while rings fill */
  uv_async_t flush;      /* a user thread left bytes to send */
  uv_timer_t watch;      /* runs while an EXITED is due (fs_watch) */
  int watching;          /* watch runs */
  int watch_wanted;      /* an EXITED became due: on_flush starts watch */
  int counted;           /* the pool thread is in the CPU budget */
  _Atomic int64_t last_work; /* fp__now_ns() of the last send or result */
  int copy_pipe[2];       /* safe_copy's fallback, made on first use */
  /* Control messages the socket had no room for, in order (fs_send). */
  fp__fs_msg *ctl_q;
  size_t ctl_len, ctl_cap;
};

/* The space bound of local.h: every chunk a worker may hold, one wrap's
 * waste and a marker fit in its task ring. */
_Static_assert(FP__SLOT_SKIPS >= FP__LINK_MAX_BATCH,
               "a skip entry for every chunk a worker may hold");
_Static_assert((FP__LINK_MAX_BATCH + 1) * FP__TRING_MAX + 64 <= FP__TRING_SIZE,
               "task ring too small for FP__LINK_MAX_BATCH frames");

/* Longest the pool thread spins between two looks at its loop's events. */
#define SPIN_SLICE_NS 20000


#define EV(l, name, ...) (l)->ev.name((l)->ev.ctx, __VA_ARGS__)

/* Hands a RESULT to the scheduler. Its chunk is done, so a skip mark the
 * master set for it once the worker had already finished it (a cancel
 * that crossed the result) would never be claimed: it is withdrawn here,
 * or the worker's 16 marks would fill up and later cancels stop working
 * (local.h, fp__slot_skip). */
static void result_in(llink *l, int slot, const unsigned char *p, size_t len,
                      fp__rbuf *keep) {
  if (len >= sizeof(fp__res_hdr)) {
    fp__res_hdr rh;
    memcpy(&rh, p, sizeof(rh));
    fp__slot_unskip(&l->v.slots[slot], rh.seq);
  }
  EV(l, result, slot, p, len, keep);
}

static void conn_on_io(uv_poll_t *h, int status, int events);
static void fs_on_io(uv_poll_t *h, int status, int events);
static void expect_exit(llink *l, int slot);
static void fs_watch(uv_timer_t *t);

/* ---- the control socket ---------------------------------------------------- */

/* Sends one message; 0, -EAGAIN when the socket is full, or -errno. */
static int fs_send_now(llink *l, const fp__fs_msg *m) {
  for (;;) {
    ssize_t n = send(l->fs_fd, m, sizeof(*m), MSG_NOSIGNAL);
    if (n == (ssize_t)sizeof(*m))
      return 0;
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EWOULDBLOCK)
      return -EAGAIN;
    return n < 0 ? -errno : FP_EPROTO;
  }
}

/* Sends what waits in the queue, in order, until the socket is full.
 * Returns 0 or -errno (not -EAGAIN). */
static int fs_flush_queue(llink *l) {
  size_t i = 0;
  int rc = 0;
  while (i < l->ctl_len && (rc = fs_send_now(l, &l->ctl_q[i])) == 0)
    i++;
  memmove(l->ctl_q, l->ctl_q + i, (l->ctl_len - i) * sizeof(*l->ctl_q));
  l->ctl_len -= i;
  return rc == -EAGAIN ? 0 : rc;
}

/* The events the loop watches on the control socket: writable only while
 * messages wait. Loop thread only. */
static void fs_poll_events(llink *l) {
  int ev = UV_READABLE | UV_DISCONNECT;
  if (l->ctl_len > 0)
    ev |= UV_WRITABLE;
  uv_poll_start(&l->fs_poll, ev, fs_on_io);
}

/* Sends a request to the fork server (the owner's lock held). The master's
 * end is non-blocking, and the server answers every SPAWN with a message
 * carrying a descriptor: a pool asking for hundreds of workers before its
 * loop reads any answer fills both directions, and a server blocked on
 * its answer reads no more requests. So what does not fit waits here, in
 * order, and the loop sends it when the socket drains (fs_on_io): a
 * request is never refused for a full socket. 0, FP_EPIPE (the server is
 * gone), FP_ENOMEM or -errno. */
static int fs_send(llink *l, int op, int slot, int pid, int arg, uint64_t aim) {
  fp__fs_msg m = {op, slot, pid, arg, aim};
  if (l->fs_fd < 0 || l->lost)
    return FP_EPIPE;
  int rc = l->ctl_len > 0 ? -EAGAIN : fs_send_now(l, &m);
  if (rc != -EAGAIN)
    return rc;
  if (l->ctl_len == l->ctl_cap) {
    size_t cap = l->ctl_cap ? 2 * l->ctl_cap : 64;
    fp__fs_msg *q = realloc(l->ctl_q, cap * sizeof(*q));
    if (q == NULL)
      return FP_ENOMEM;
    l->ctl_q = q;
    l->ctl_cap = cap;
  }
  l->ctl_q[l->ctl_len++] = m;
  if (l->started)
    uv_async_send(&l->flush); /* on_flush watches for room */
  return 0;
}

/* ---- worker sockets ---------------------------------------------------------- */

static void conn_set_events(conn *c, int events) {
  if (c->closing || c->events == events)
    return;
  c->events = events;
  if (events)
    uv_poll_start(&c->poll, events, conn_on_io);
  else
    uv_poll_stop(&c->poll);
}

static void conn_closed(uv_handle_t *h) {
  conn *c = (conn *)h;
  fp__free(c->in, c->in_cap);
  fp__free(c->out, c->out_cap);
  fp__free(c->part, c->part_cap); /* a worker that died mid-RESULT */
  free(c);
}

/* Stops polling first (uv_close takes the descriptor out of epoll at
 * once), then closes the descriptor: closed first, its number could be
 * reused by another thread before libuv's epoll_ctl(DEL) on it. */
static void conn_close(conn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->poll, conn_closed);
  fp__fdreg_close(c->fd);
}

/* Hands one RESULT frame at the start of c->in to the scheduler, letting
 * it keep the whole read buffer when the frame is large. What followed
 * the frame is saved first: the scheduler may free the buffer before the
 * event returns (a blocking call streams its results out at once). Returns
 * the offset in c->in where the unread bytes start now. */
static size_t deliver_result(conn *c, size_t off, const unsigned char *p,
                             size_t plen) {
  llink *l = c->l;
  unsigned char *nb = NULL;
  size_t rest = 0, cap = 0;
  fp__rbuf keep = {NULL, 0};
  if (off == FP__FRAME_HDR + plen && plen >= KEEP_MIN) {
    rest = c->in_len - off;
    cap = rest > FP__FRAME_READ_MIN ? rest : FP__FRAME_READ_MIN;
    if ((nb = fp__alloc(cap)) != NULL) {
      memcpy(nb, c->in + off, rest);
      keep = (fp__rbuf){c->in, c->in_cap};
    }
  }
  result_in(l, c->slot, p, plen, nb ? &keep : NULL);
  if (nb != NULL && keep.base == NULL) { /* the scheduler kept it */
    c->in = nb;
    c->in_cap = cap;
    c->in_len = rest;
    return 0;
  }
  fp__free(nb, cap);
  return off;
}

static int ring_drain(llink *l, int slot);

/* Appends n bytes to the RESULT being assembled. Returns 0, or -1 when
 * it would pass the results' limit or memory runs out. */
/* Appends a PART frame's slice. Returns 0, FP_EMSGSIZE (beyond the
 * limit the worker was told: a protocol violation) or FP_ENOMEM. */
static int part_append(conn *c, const unsigned char *p, size_t n) {
  if (n == 0)
    return 0; /* nothing to copy, and maybe no buffer yet */
  if (n > fp__wconf_result_limit(&c->l->cfg) - c->part_len)
    return FP_EMSGSIZE;
  if (n > c->part_cap - c->part_len) {
    size_t cap = c->part_cap ? c->part_cap : FP__FRAME_READ_MIN;
    while (cap - c->part_len < n)
      cap *= 2;
    unsigned char *nb = fp__realloc(c->part, c->part_cap, cap);
    if (nb == NULL)
      return FP_ENOMEM;
    c->part = nb;
    c->part_cap = cap;
  }
  memcpy(c->part + c->part_len, p, n);
  c->part_len += n;
  return 0;
}

/* A PART frame (proto.h): a slice of a RESULT larger than max_frame. The
 * last one hands the whole payload on, as one frame would have, and lets
 * the scheduler keep the buffer. */
static void conn_part(conn *c, const unsigned char *p, size_t plen) {
  llink *l = c->l;
  fp__part_hdr ph;
  if (plen < sizeof(ph)) {
    EV(l, violation, c->slot, "short PART frame");
    return;
  }
  memcpy(&ph, p, sizeof(ph));
  int rc = part_append(c, p + sizeof(ph), plen - sizeof(ph));
  if (rc != 0) {
    /* The result is lost: drop what came of it, and read nothing more
     * from this worker (a later slice must not complete a result with a
     * hole in it); the scheduler kills it. */
    fp__free(c->part, c->part_cap);
    c->part = NULL;
    c->part_len = c->part_cap = 0;
    c->lost = 1;
    if (rc == FP_ENOMEM)
      EV(l, no_memory, c->slot);
    else
      EV(l, violation, c->slot, "a chunk's results beyond the limit");
    return;
  }
  if (!ph.last)
    return;
  fp__rbuf keep = {c->part, c->part_cap};
  unsigned char *buf = c->part;
  size_t len = c->part_len;
  c->part = NULL;
  c->part_len = c->part_cap = 0;
  if (len < sizeof(fp__res_hdr) || buf[0] != FP__MSG_RESULT)
    EV(l, violation, c->slot, "PART frames that are not a RESULT");
  else
    result_in(l, c->slot, buf, len, &keep);
  if (keep.base != NULL) /* not kept by the scheduler */
    fp__free(keep.base, keep.cap);
}

/* Handles one message of a worker. */
static void conn_message(conn *c, const unsigned char *p, size_t plen) {
  llink *l = c->l;
  lslot *s = &l->slots[c->slot];
  switch (plen > 0 ? p[0] : 0) {
  case FP__MSG_READY:
    if (!s->ready) {
      s->ready = 1;
      EV(l, ready, c->slot);
    }
    break;
  case FP__MSG_RETIRE:
    EV(l, retired, c->slot);
    break;
  case FP__MSG_KICK:
    ring_drain(l, c->slot); /* the results are in the ring */
    break;
  default:
    EV(l, violation, c->slot, "unknown message");
  }
}

/* Handles every complete frame in the connection's read buffer. */
static void conn_process(conn *c) {
  size_t off = 0;
  while (!c->closing && !c->lost && c->in_len - off >= FP__FRAME_HDR) {
    size_t plen;
    int rc = fp_frame_parse(c->in + off, c->in_len - off, c->l->cfg.max_frame,
                            &plen);
    if (rc == 1)
      break;
    if (rc < 0) {
      EV(c->l, violation, c->slot, "over-long frame");
      c->eof = 1;
      off = c->in_len;
      break;
    }
    const unsigned char *p = c->in + off + FP__FRAME_HDR;
    off += FP__FRAME_HDR + plen;
    if (plen > 0 && p[0] == FP__MSG_RESULT)
      off = deliver_result(c, off, p, plen);
    else if (plen > 0 && p[0] == FP__MSG_PART)
      conn_part(c, p, plen);
    else
      conn_message(c, p, plen);
  }
  if (off > 0 && c->in != NULL) {
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
  }
}

/* Reads what the socket has. Returns 0, or 1 at EOF/error. */
static int conn_read(conn *c) {
  for (;;) {
    /* Size the buffer for the frame being received, so a large frame is
     * read straight into place instead of through many small copies. */
    size_t need = fp__frame_want(c->in, c->in_len, c->l->cfg.max_frame);
    if (need > c->in_cap) {
      unsigned char *nb = fp__realloc(c->in, c->in_cap, need);
      if (nb == NULL) { /* the stream stops here: as EOF, once told */
        EV(c->l, no_memory, c->slot);
        return 1;
      }
      c->in = nb;
      c->in_cap = need;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len,
                     MSG_DONTWAIT);
    if (n > 0) {
      size_t space = c->in_cap - c->in_len;
      c->in_len += (size_t)n;
      conn_process(c);
      /* A short read drained the socket: the level-triggered poll says
       * when more arrives, so skip the recv that would say EAGAIN. */
      if ((size_t)n < space || c->eof || c->lost)
        return c->eof || c->lost;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : 1;
  }
}

static void conn_flush(conn *c) {
  while (c->out_len > c->out_off) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c->out_off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    c->eof = 1; /* broken: the worker is dying */
    break;
  }
  fp__free(c->out, c->out_cap);
  c->out = NULL;
  c->out_cap = c->out_len = c->out_off = 0;
  conn_set_events(c, c->eof ? 0 : UV_READABLE | UV_DISCONNECT);
}

static void conn_on_io(uv_poll_t *h, int status, int events) {
  conn *c = (conn *)h;
  llink *l = c->l;
  l->ev.enter(l->ev.ctx);
  if (!c->closing) {
    ring_drain(l, c->slot);
    if (events & UV_WRITABLE)
      conn_flush(c);
    if (!c->closing && (status < 0 || (events & (UV_READABLE | UV_DISCONNECT))) &&
        (conn_read(c) != 0 || status < 0)) {
      /* EOF: the worker is gone or going; its EXITED report decides. */
      c->eof = 1;
      conn_set_events(c, 0);
      expect_exit(l, c->slot);
    }
  }
  l->ev.leave(l->ev.ctx);
}

/* ---- result rings ------------------------------------------------------------ */

/* Hands every result published in slot's ring to the scheduler. Returns
 * how many. */
static int ring_drain(llink *l, int slot) {
  fp__ring *r = &l->v.rings[slot];
  uint64_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
  const unsigned char *p;
  size_t len;
  int rc, got = 0;
  while ((rc = fp__ring_next(r, &pos, &p, &len)) == 1) {
    got++;
    if (len > 0 && p[0] == FP__MSG_RESULT)
      result_in(l, slot, p, len, NULL);
    else
      EV(l, violation, slot, "unexpected message in the result ring");
  }
  if (rc < 0) {
    /* A worker that corrupts its ring is killed like one that sends
     * nonsense on its socket; what it wrote is dropped. */
    EV(l, violation, slot, "corrupt result ring");
    pos = atomic_load_explicit(&r->tail, memory_order_acquire);
  }
  /* The scheduler copied what it keeps: the space can be reused. */
  fp__ring_release(r, pos);
  if (got)
    atomic_store_explicit(&l->last_work, fp__now_ns(), memory_order_relaxed);
  return got;
}

static int rings_pending(llink *l) {
  for (int i = 0; i < l->cfg.nworkers; i++)
    if (fp__ring_pending(&l->v.rings[i]))
      return 1;
  return 0;
}

static void idle_noop(uv_idle_t *h) {
  (void)h;
}

/* Spins (within the CPU budget) while work was seen in the last
 * FP__SPIN_NS, for at most SPIN_SLICE_NS, so that the loop's own events
 * are looked at in between. Returns 1 when the loop should poll without
 * sleeping: a result is waiting, or the spin may go on. */
static int pool_spin(llink *l) {
  int64_t last = atomic_load_explicit(&l->last_work, memory_order_relaxed);
  int64_t now = fp__now_ns(), end = now + SPIN_SLICE_NS;
  int rc = 0;
  fp__spinner sp;
  if (now - last >= FP__SPIN_NS)
    return 0;
  fp__spinner_start(&sp, now);
  atomic_store_explicit(&l->shm->pool_spinning, 1, memory_order_relaxed);
  /* A poller (a caller draining the rings itself) outranks this spin:
   * two spinners is all two CPUs hold, and the poller saves a wake-up. */
  while (fp__budget_ok(l->shm) &&
         atomic_load_explicit(&l->shm->pollers, memory_order_relaxed) == 0) {
    int i = 0;
    while (i < 64 && !rings_pending(l)) {
      fp__cpu_relax();
      i++;
    }
    now = fp__now_ns();
    if (i < 64 || now >= end) {
      rc = i < 64 || now - last < FP__SPIN_NS;
      break;
    }
    fp__spinner_tick(&sp, now);
  }
  atomic_store_explicit(&l->shm->pool_spinning, 0, memory_order_relaxed);
  return rc;
}

/* Before the loop polls: spin while work is recent; otherwise tell workers
 * to kick, then look at the rings once more (a result published before the
 * flag was seen would otherwise wait for the next event), and sleep out of
 * the CPU budget. */
static void on_prepare(uv_prepare_t *h) {
  llink *l = h->data;
  if (pool_spin(l)) {
    uv_idle_start(&l->spin, idle_noop); /* poll, don't wait */
    return;
  }
  atomic_store(&l->shm->master_idle, 1); /* seq_cst, as the tail */
  if (rings_pending(l)) {
    atomic_store(&l->shm->master_idle, 0);
    uv_idle_start(&l->spin, idle_noop);
    return;
  }
  uv_idle_stop(&l->spin);
  if (l->counted) {
    l->counted = 0;
    fp__budget_leave(l->shm);
  }
}

/* After the loop wakes: no kicks needed while we work; take the results. */
static void on_check(uv_check_t *h) {
  llink *l = h->data;
  atomic_store(&l->shm->master_idle, 0);
  if (!l->counted) {
    l->counted = 1;
    fp__budget_join(l->shm);
  }
  if (!rings_pending(l))
    return;
  l->ev.enter(l->ev.ctx);
  for (int i = 0; i < l->cfg.nworkers; i++)
    if (l->slots[i].pid != 0)
      ring_drain(l, i);
  l->ev.leave(l->ev.ctx);
}

/* A user thread left bytes to send, or made an EXITED due: libuv's
 * handles are the loop thread's, so it is the one to act on them. */
static void on_flush(uv_async_t *a) {
  llink *l = a->data;
  l->ev.enter(l->ev.ctx);
  for (int i = 0; i < l->cfg.nworkers; i++) {
    conn *c = l->slots[i].c;
    if (c && !c->eof && c->out_len > 0)
      conn_set_events(c, UV_READABLE | UV_WRITABLE | UV_DISCONNECT);
  }
  if (l->ctl_len > 0 && !l->lost)
    fs_poll_events(l); /* requests wait for room */
  if (l->watch_wanted && !l->watching && !l->lost) {
    uv_timer_start(&l->watch, fs_watch, 250, 250);
    l->watching = 1;
  }
  l->watch_wanted = 0;
  l->ev.leave(l->ev.ctx);
}

/* ---- a fork server that stopped answering ---------------------------------- */

/* How long a worker's EXITED may take after its SIGKILL was sent or its
 * socket closed before the fork server is looked at. It reaps and reports
 * within milliseconds; one that is stopped (SIGSTOP, a debugger) sends no
 * kill and reports no death: terminate would wait for ever, and so would
 * the work of a worker that died. A worker may also just take long to
 * die (a task that closed its own socket and runs on): that is no reason
 * to kill the fork server, which is why its state is checked. */
#define FS_STUCK_NS (2 * 1000000000LL)

/* Checks the due EXITED reports; past one, while the fork server is
 * stopped, kills it, and its end is then handled as any (fs_gone: every
 * worker dies with it, by PDEATHSIG). Stops when none is due. */
static void fs_watch(uv_timer_t *t) {
  llink *l = t->data;
  int64_t now = fp__now_ns();
  int due = 0;
  l->ev.enter(l->ev.ctx);
  for (int i = 0; i < l->cfg.nworkers; i++) {
    int64_t d = l->slots[i].pid != 0 ? l->slots[i].exit_due_ns : 0;
    due |= d != 0;
    if (d != 0 && now >= d && !l->lost && fp__proc_stopped(l->fs_pid)) {
      kill(l->fs_pid, SIGKILL); /* our child: reaped by free() only */
      break;
    }
  }
  if (!due || l->lost) {
    uv_timer_stop(&l->watch);
    l->watching = 0;
  }
  l->ev.leave(l->ev.ctx);
}

/* slot's EXITED is now due within FS_STUCK_NS (unless due already).
 * Any thread holding the owner's lock may get here (a caller draining the
 * rings, a submitter): the loop thread starts the watch (on_flush). */
static void expect_exit(llink *l, int slot) {
  lslot *s = &l->slots[slot];
  if (s->pid == 0 || s->exit_due_ns != 0 || !l->started)
    return;
  s->exit_due_ns = fp__now_ns() + FS_STUCK_NS;
  if (!l->watching && !l->watch_wanted) {
    l->watch_wanted = 1;
    uv_async_send(&l->flush);
  }
}

/* ---- fork server reports --------------------------------------------------- */

/* A worker's process ended: deliver what it wrote, then report it. */
static void worker_gone(llink *l, int slot, int status) {
  lslot *s = &l->slots[slot];
  conn *c = s->c;
  pid_t pid = s->pid;
  if (c != NULL && !c->eof)
    conn_read(c); /* results still in the socket */
  ring_drain(l, slot);
  s->c = NULL;
  s->pid = 0;
  s->ready = 0;
  s->exit_due_ns = 0;
  if (c != NULL)
    conn_close(c);
  fp__budget_drop_slot(l->shm, &l->v.slots[slot]); /* died counted */
  EV(l, exited, slot, pid, status);
}

/* SPAWNED: the worker's socket came with the message (fd, registered and
 * above stdio by fs_recv; or -errno when it could not be received). */
static void worker_spawned(llink *l, int slot, pid_t pid, int fd) {
  lslot *s = &l->slots[slot];
  conn *c = NULL;
  int err = fd < 0 ? fd : 0;
  s->spawning = 0;
  if (err == 0 && (c = calloc(1, sizeof(*c))) == NULL)
    err = FP_ENOMEM;
  if (err == 0 && (err = uv_poll_init(l->loop, &c->poll, fd)) != 0)
    free(c);
  if (err != 0) {
    fp__fdreg_close(fd);
    s->discard_pid = pid;
    fs_send(l, FP__FS_KILL, slot, pid, SIGKILL, 0);
    EV(l, start_failed, slot, err);
    return;
  }
  c->l = l;
  c->slot = slot;
  c->fd = fd;
  s->c = c;
  s->pid = pid;
  s->start_time = fp__proc_start_time(pid);
  conn_set_events(c, UV_READABLE | UV_DISCONNECT);
  EV(l, started, slot, pid);
}

static void fs_message(llink *l, const fp__fs_msg *m, int fd) {
  int ok = m->slot >= 0 && m->slot < l->cfg.nworkers;
  lslot *s = ok ? &l->slots[m->slot] : NULL;
  if (m->op == FP__FS_SPAWNED && ok && s->spawning) {
    worker_spawned(l, m->slot, m->pid, fd);
    return;
  }
  fp__fdreg_close(fd);
  if (m->op == FP__FS_EXITED && ok && m->pid == s->discard_pid) {
    s->discard_pid = 0;
  } else if (m->op == FP__FS_EXITED && ok && s->pid == m->pid && m->pid) {
    worker_gone(l, m->slot, m->arg);
  } else if (m->op == FP__FS_FAILED && ok && s->spawning) {
    s->spawning = 0;
    EV(l, start_failed, m->slot, -m->arg);
  }
}

/* Says how the fork server ended, for the pool's error message. Its wait
 * status is read without reaping it (WNOWAIT: free() reaps it). The EOF
 * that told us it died can come a moment before it is a zombie, so this
 * looks for up to 100 ms; a program that reaps every child itself (a
 * SIGCHLD handler calling waitpid(-1)) leaves nothing to read. */
static void fs_death_message(const llink *l, char *buf, size_t len) {
  static const char what[] = "the pool's fork server died";
  for (int i = 0; i < 100; i++) {
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid(P_PID, l->fs_pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
      break;
    if (si.si_pid == l->fs_pid && si.si_code == CLD_EXITED) {
      snprintf(buf, len, "%s (it exited with status %d)", what, si.si_status);
      return;
    }
    if (si.si_pid == l->fs_pid) { /* worded as deaths.c words workers' */
      const char *abbrev = sigabbrev_np(si.si_status);
      const char *descr = sigdescr_np(si.si_status);
      snprintf(buf, len, "%s (killed by signal SIG%s (%s))", what,
               abbrev ? abbrev : "?", descr ? descr : "unknown");
      return;
    }
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
  }
  snprintf(buf, len, "%s", what);
}

/* Workers die with their fork server (PDEATHSIG), except those whose
 * credentials a task changed (setuid, setgid ...): the kernel clears the
 * parent-death signal then. Those that still run are SIGKILLed here (no
 * reused pid is hit: fp__proc_kill_same), and awaited for up to a second
 * in all, so that "every worker is dead" holds when terminate returns. */
static void kill_orphans(llink *l) {
  int64_t end = fp__now_ns() + 1000000000LL;
  for (int i = 0; i < l->cfg.nworkers; i++) {
    lslot *s = &l->slots[i];
    int fd = s->pid != 0 ? fp__proc_kill_same(s->pid, s->start_time) : -1;
    if (fd < 0)
      continue;
    int64_t left = (end - fp__now_ns()) / 1000000;
    struct pollfd pf = {fd, POLLIN, 0};
    while (left > 0 && poll(&pf, 1, (int)left) < 0 && errno == EINTR)
      left = (end - fp__now_ns()) / 1000000;
    close(fd);
  }
}

/* The fork server is gone: so are its workers (PDEATHSIG, or
 * kill_orphans). */
static void fs_gone(llink *l) {
  if (l->lost)
    return;
  l->lost = 1;
  uv_poll_stop(&l->fs_poll);
  kill_orphans(l);
  for (int i = 0; i < l->cfg.nworkers; i++) {
    lslot *s = &l->slots[i];
    if (s->pid != 0)
      worker_gone(l, i, SIGKILL);
    if (s->spawning) {
      s->spawning = 0;
      EV(l, start_failed, i, FP_EWORKER);
    }
  }
  char why[128];
  fs_death_message(l, why, sizeof(why));
  l->ev.lost(l->ev.ctx, why);
}

/* Takes the descriptor that came with a message (if any): above stdio and
 * registered, in the same fdreg section as the recvmsg() that made it.
 * Returns it, -EMFILE when none came (a SPAWNED whose socket did not fit
 * in the descriptor table arrives without it), or -errno. */
static int take_passed_fd(const struct msghdr *mh) {
  struct cmsghdr *cm = CMSG_FIRSTHDR(mh);
  if (cm == NULL || cm->cmsg_level != SOL_SOCKET ||
      cm->cmsg_type != SCM_RIGHTS)
    return -EMFILE;
  int fd;
  memcpy(&fd, CMSG_DATA(cm), sizeof(int));
  int above = fp__fd_above_stdio(fd);
  if (above < 0) {
    close(fd);
    return above;
  }
  fp__fdreg_add_locked(above);
  return above;
}

/* Receives one fork server message; returns 0, 1 when none is waiting,
 * -1 at EOF. *fd: see take_passed_fd(). */
static int fs_recv(llink *l, fp__fs_msg *m, int *fd) {
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct iovec iov = {m, sizeof(*m)};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1,
                      .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
  *fd = -EMFILE;
  ssize_t n;
  fp__fdreg_lock();
  do
    n = recvmsg(l->fs_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  int err = errno;
  if (n > 0)
    *fd = take_passed_fd(&mh);
  fp__fdreg_unlock();
  if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK))
    return 1;
  if (n <= 0)
    return -1;
  if (n != (ssize_t)sizeof(*m)) {
    fp__fdreg_close(*fd);
    *fd = -EMFILE;
    m->op = 0; /* ignored */
  }
  return 0;
}

static void fs_on_io(uv_poll_t *h, int status, int events) {
  llink *l = h->data;
  fp__fs_msg m;
  int fd, rc;
  (void)status;
  l->ev.enter(l->ev.ctx);
  /* Answers first: reading them is what lets a server blocked on one
   * read our requests again. */
  while (!l->lost && (rc = fs_recv(l, &m, &fd)) != 1) {
    if (rc < 0)
      fs_gone(l);
    else
      fs_message(l, &m, fd);
  }
  if (!l->lost && (events & UV_WRITABLE)) {
    if (fs_flush_queue(l) != 0) {
      /* The socket failed with requests the caller was told were sent:
       * the server must not serve on without them. It ends, its workers
       * with it, and the pool learns why (fs_gone). */
      kill(l->fs_pid, SIGKILL);
      fs_gone(l);
    } else if (l->ctl_len == 0) {
      fs_poll_events(l);
    }
  }
  l->ev.leave(l->ev.ctx);
}

/* ---- operations ---------------------------------------------------------- */

static void llink_release(llink *l) {
  if (l->shm != NULL) {
    fp__mapreg_remove(l->shm);
    munmap(l->shm, l->shm_len);
  }
  free(l->ctl_q);
  free(l->slots);
  free(l);
}

/* The CPUs this process may run on: the spinning budget (local.h). */
static int usable_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0)
    return 1;
  int n = CPU_COUNT(&set);
  return n > 0 ? n : 1;
}

/* Maps the slots and rings. Rings are reserved, not touched: a page costs
 * memory once used. */
fp__shm_view fp__local_layout(void *base, int nslots, size_t *len) {
  size_t n = (size_t)nslots;
  size_t hdr = (sizeof(fp__local_shm) + 63) & ~(size_t)63;
  size_t rings_off = (hdr + sizeof(fp__slot) * n + FP__RING_ALIGN - 1) &
                     ~(size_t)(FP__RING_ALIGN - 1);
  size_t trings_off = rings_off + sizeof(fp__ring) * n;
  *len = trings_off + sizeof(fp__tring) * n;
  return (fp__shm_view){.hdr = base,
                        .slots = (fp__slot *)((char *)base + hdr),
                        .rings = (fp__ring *)((char *)base + rings_off),
                        .trings = (fp__tring *)((char *)base + trings_off),
                        .nslots = nslots};
}

static int map_shared(llink *l) {
  fp__local_layout(NULL, l->cfg.nworkers, &l->shm_len);
  void *p = mmap(NULL, l->shm_len, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return -errno;
  l->shm = p;
  l->v = fp__local_layout(p, l->cfg.nworkers, &l->shm_len);
  fp__mapreg_add(p, l->shm_len);
  l->shm->ncpu = usable_cpus();
  return 0;
}

/* A pair of descriptors just made under the registry's lock (rc: how
 * making them went): both moved above stdio and registered, so that a
 * fork server another thread forks meanwhile closes them. Returns 0, or
 * -errno with both closed. */
static int register_pair_locked(int fds[2], int rc) {
  for (int k = 0; rc == 0 && k < 2; k++) {
    int fd = fp__fd_above_stdio(fds[k]);
    if (fd < 0) { /* fds[k] is still open then (fdreg.c) */
      rc = fd;
      close(fds[0]);
      close(fds[1]);
    }
    fds[k] = fd;
  }
  if (rc == 0) {
    fp__fdreg_add_locked(fds[0]);
    fp__fdreg_add_locked(fds[1]);
  }
  return rc;
}

/* Makes the control socket pair (registered, above stdio). */
static int control_pair(int sv[2]) {
  fp__fdreg_lock();
  int rc = socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0
               ? -errno
               : 0;
  rc = register_pair_locked(sv, rc);
  fp__fdreg_unlock();
  return rc;
}

/* Forks the fork server with the control socket. */
static int fork_server(llink *l) {
  int sv[2];
  int rc = fp__fdreg_init();
  if (rc == 0)
    rc = control_pair(sv);
  if (rc != 0)
    return rc;
  pid_t master = getpid();
  /* Every signal waits while the child is being set up: until it resets
   * its dispositions it would run the program's handlers, and a Ctrl-C
   * before it ignores the group signals would kill it. It gets what
   * arrived once its own dispositions are in place. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int by_main = gettid() == master, pid = fork();
  if (pid == 0) /* closes sv[0] with the other registered descriptors */
    fp__forkserver_main(&l->cfg, &l->v, sv[1], master, by_main, &old);
  rc = pid < 0 ? -errno : 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    fp__fdreg_close(sv[0]);
    fp__fdreg_close(sv[1]);
    return rc;
  }
  fp__fdreg_close(sv[1]);
  l->fs_pid = pid;
  l->fs_fd = sv[0];
  return 0;
}

static int local_open(fp__link **out, const fp__wconf *cfg,
                      const fp__link_events *ev) {
  llink *l = calloc(1, sizeof(*l));
  if (l == NULL)
    return FP_ENOMEM;
  l->base.ops = &fp__link_local;
  l->ev = *ev;
  l->cfg = *cfg;
  l->fs_fd = -1;
  l->copy_pipe[0] = l->copy_pipe[1] = -1;
  l->opener = getpid();
  l->slots = calloc((size_t)cfg->nworkers, sizeof(*l->slots));
  /* Without it, borrowed items simply all take the socket. */
  int rc = l->slots ? map_shared(l) : FP_ENOMEM;
  if (rc == 0)
    rc = fork_server(l);
  if (rc != 0) {
    llink_release(l);
    return rc;
  }
  *out = &l->base;
  return 0;
}

static int local_start(fp__link *base, uv_loop_t *loop) {
  llink *l = (llink *)base;
  l->loop = loop;
  int rc = uv_poll_init(loop, &l->fs_poll, l->fs_fd);
  if (rc != 0)
    return rc;
  l->fs_poll.data = l;
  fs_poll_events(l); /* with what spawn queued before the loop ran */
  uv_prepare_init(loop, &l->prep);
  uv_check_init(loop, &l->chk);
  uv_idle_init(loop, &l->spin);
  uv_async_init(loop, &l->flush, on_flush);
  uv_timer_init(loop, &l->watch);
  l->prep.data = l->chk.data = l->flush.data = l->watch.data = l;
  uv_prepare_start(&l->prep, on_prepare);
  uv_check_start(&l->chk, on_check);
  /* prepare/check must not keep the loop alive on their own. */
  uv_unref((uv_handle_t *)&l->prep);
  uv_unref((uv_handle_t *)&l->chk);
  l->started = 1;
  return 0;
}

static int local_spawn(fp__link *base, int slot) {
  llink *l = (llink *)base;
  lslot *s = &l->slots[slot];
  if (s->spawning || s->pid != 0)
    return FP_EINVAL;
  fp__slot *pub = &l->v.slots[slot];
  atomic_store(&pub->pid, 0);
  atomic_store(&pub->seq, 0);
  atomic_store(&pub->taken, 0);
  atomic_store(&pub->started_ns, 0);
  atomic_store(&pub->item, -1);
  fp__budget_drop_slot(l->shm, pub); /* if worker_gone did not */
  for (int i = 0; i < FP__SLOT_SKIPS; i++)
    atomic_store(&pub->skip[i], 0); /* the old process's marks */
  /* The previous process's ring was drained when it died. */
  atomic_store(&l->v.rings[slot].head, 0);
  atomic_store(&l->v.rings[slot].tail, 0);
  fp__tring *tr = &l->v.trings[slot];
  atomic_store(&tr->head, 0);
  atomic_store(&tr->tail, 0);
  s->ttail = 0;
  atomic_store(&tr->sleeping, 0);
  atomic_store(&tr->feeder_cpu, -1); /* nobody fed it yet */
  int rc = fs_send(l, FP__FS_SPAWN, slot, 0, 0, 0);
  if (rc == 0)
    s->spawning = 1;
  s->finished = 0;
  return rc;
}

static int local_can_send(fp__link *base, int slot) {
  lslot *s = &((llink *)base)->slots[slot];
  return s->c != NULL && s->ready && !s->c->eof && s->c->out_len == 0;
}

static int local_kill(fp__link *base, int slot, int sig, uint64_t aim) {
  llink *l = (llink *)base;
  lslot *s = &l->slots[slot];
  if (s->pid == 0)
    return FP_EINVAL;
  if (sig == SIGKILL)
    expect_exit(l, slot);
  return fs_send(l, FP__FS_KILL, slot, s->pid, sig, aim);
}

/* The pipe of safe_copy, made once (registered like every library
 * descriptor, above the standard ones, non-blocking). 0 or -errno. */
static int copy_pipe_open(llink *l) {
  int p[2];
  if (l->copy_pipe[0] >= 0)
    return 0;
  fp__fdreg_lock();
  int rc = register_pair_locked(
      p, pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0 ? -errno : 0);
  if (rc == 0) {
    l->copy_pipe[0] = p[0];
    l->copy_pipe[1] = p[1];
  }
  fp__fdreg_unlock();
  return rc;
}

/* Copies n bytes that may lie in memory the caller unmapped, through the
 * kernel (usermem.h): process_vm_readv, else the link's pipe. Returns 0,
 * or -EFAULT (or another -errno) instead of crashing. Without a pipe (no
 * descriptor left) the first answer stands: -EFAULT means the memory
 * cannot be read; only a refused process_vm_readv (a seccomp filter)
 * gives the pipe's error, the one reason left. */
static int safe_copy(llink *l, void *dst, const void *src, size_t n) {
  struct iovec to = {dst, n}, from = {(void *)src, n};
  int rc = fp__mem_readv_direct(&to, &from, 1), prc;
  if (rc == 0)
    return 0;
  if ((prc = copy_pipe_open(l)) != 0)
    return rc == -EFAULT ? rc : prc;
  return fp__mem_read_piped(dst, src, n, l->copy_pipe);
}

/* Keeps the unsent tail (skip bytes of iov already written) for the pool
 * thread to finish on POLLOUT. Returns 0, FP_ENOMEM, or -EFAULT when
 * borrowed items became unreadable (see fp__task_out). */
static int keep_tail(llink *l, conn *c, const struct iovec *iov, int n,
                     size_t total, size_t skip) {
  size_t rest = total - skip, off = 0;
  unsigned char *buf = fp__alloc(rest);
  if (buf == NULL)
    return FP_ENOMEM;
  for (int i = 0; i < n; i++) {
    size_t len = iov[i].iov_len;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    if (safe_copy(l, buf + off, (const char *)iov[i].iov_base + skip,
                  len - skip) != 0) {
      fp__free(buf, rest);
      return -EFAULT;
    }
    off += len - skip;
    skip = 0;
  }
  c->out = buf;
  c->out_cap = c->out_len = rest;
  c->out_off = 0;
  uv_async_send(&l->flush); /* arms POLLOUT on the pool thread */
  return 0;
}

/* Puts a marker (FP__TRING_SOCK or FP__TRING_FINISH) at *tail. */
static int put_marker(fp__tring *tr, uint64_t *tail, int type) {
  unsigned char m[FP__TRING_MARK_LEN] = {(unsigned char)type};
  struct iovec iov = {m, sizeof(m)};
  return fp__tring_put(tr, tail, &iov, 1, sizeof(m), NULL);
}

/* Writes the frames in iov (nio parts, total bytes) to the socket with
 * one sendmsg; an unsent tail is left for the pool thread. Returns 0 or a
 * negative code. */
static int sock_send(llink *l, conn *c, struct iovec *iov, int nio,
                     size_t total) {
  struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)nio};
  ssize_t w;
  do
    w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (w < 0 && errno == EINTR);
  if (w < 0 && (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN))
    return FP_EPIPE; /* the worker is dying: link.h */
  if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    return -errno;
  if ((size_t)(w < 0 ? 0 : w) < total)
    return keep_tail(l, c, iov, nio, total, (size_t)(w < 0 ? 0 : w));
  return 0;
}

/* The borrowed items (a map's `in`: memory the caller could unmap while
 * the call runs) of the frames put in the ring: their bytes are copied by
 * the kernel straight into the frames' payloads, which gives -EFAULT
 * instead of a crash when they became unreadable (link.h). */
typedef struct kcopy {
  struct iovec to[FP__LINK_MAX_BATCH], from[FP__LINK_MAX_BATCH];
  int frame[FP__LINK_MAX_BATCH]; /* the index in t[] of each copy */
  int n;
} kcopy;

/* Copies them all with one process_vm_readv; when that fails, one by one
 * with safe_copy (which also reads memory process_vm_readv refuses).
 * Returns 0, or -errno with *bad = the first frame whose items could not
 * be read. */
static int kcopy_run(llink *l, const kcopy *k, int *bad) {
  if (k->n == 0)
    return 0;
  if (fp__mem_readv_direct(k->to, k->from, k->n) == 0)
    return 0;
  for (int j = 0; j < k->n; j++) {
    int rc = safe_copy(l, k->to[j].iov_base, k->from[j].iov_base,
                       k->to[j].iov_len);
    if (rc != 0) {
      *bad = k->frame[j];
      return rc;
    }
  }
  return 0;
}

/* Puts frame i (its parts in v[1..4], flen bytes) in the task ring at
 * *tail; borrowed items are left to k. Returns 0, or -1 when it does not
 * go in the ring (too large, or no room). */
static int ring_frame(fp__tring *tr, uint64_t *tail, const fp__task_out *t,
                      int i, struct iovec *v, size_t flen, kcopy *k) {
  unsigned char *payload;
  int kernel = t[i].borrowed && t[i].items_len > 0;
  if (flen > FP__TRING_MAX)
    return -1;
  if (kernel)
    v[3].iov_base = NULL;
  int rc = fp__tring_put(tr, tail, v + 1, 4, flen, &payload);
  if (kernel) {
    v[3].iov_base = (void *)t[i].items;
    if (rc == 0) {
      k->to[k->n] = (struct iovec){payload + v[1].iov_len + v[2].iov_len,
                                   t[i].items_len};
      k->from[k->n] = (struct iovec){(void *)t[i].items, t[i].items_len};
      k->frame[k->n] = i;
      k->n++;
    }
  }
  return rc;
}

/* Sends the frames of t[0..n): each into the task ring, or, when larger
 * than FP__TRING_MAX, onto the socket behind a SOCK marker in the ring (so
 * the ring keeps the order). Borrowed items of ring frames are copied in
 * by the kernel (kcopy) before anything is sent or published: when some
 * cannot be read, only the frames before them go, and the worker is left
 * alone (*sent says how many went). Socket frames go with one sendmsg; the
 * ring's entries become visible with one store, and the worker is woken
 * only if it sleeps (local.h). */
static int local_send(fp__link *base, int slot, const fp__task_out *t,
                      int n, int *sent) {
  static const unsigned char zeros[FP__FRAME_ALIGN];
  llink *l = (llink *)base;
  conn *c = l->slots[slot].c;
  fp__tring *tr = &l->v.trings[slot];
  uint64_t tail = l->slots[slot].ttail;
  unsigned char hdr[FP__LINK_MAX_BATCH][FP__FRAME_HDR];
  struct iovec iov[5 * FP__LINK_MAX_BATCH];
  uint64_t tail_at[FP__LINK_MAX_BATCH]; /* where frame i begins */
  size_t total = 0, total_at[FP__LINK_MAX_BATCH];
  int nio = 0, nio_at[FP__LINK_MAX_BATCH], bad = n;
  kcopy k = {.n = 0};
  int rc = c != NULL && c->out_len == 0 && n <= FP__LINK_MAX_BATCH
               ? 0 : FP_EINVAL;
  *sent = -1;
  for (int i = 0; rc == 0 && i < n; i++) {
    size_t pad = FP__ITEMS_PAD(t[i].items_len);
    size_t flen = sizeof(t[i].hdr) + FP__HDR_PAD + t[i].items_len + pad;
    struct iovec *v = iov + nio;
    tail_at[i] = tail;
    nio_at[i] = nio;
    total_at[i] = total;
    v[1] = (struct iovec){(void *)&t[i].hdr, sizeof(t[i].hdr)};
    v[2] = (struct iovec){(void *)zeros, FP__HDR_PAD};
    v[3] = (struct iovec){(void *)t[i].items, t[i].items_len};
    v[4] = (struct iovec){(void *)zeros, pad};
    if (ring_frame(tr, &tail, t, i, v, flen, &k) == 0)
      continue;
    if ((rc = fp__frame_put_hdr(hdr[i], flen)) != 0)
      break;
    if (put_marker(tr, &tail, FP__TRING_SOCK) != 0) {
      rc = FP_EPROTO; /* the bound of local.h broke: a corrupt head */
      break;
    }
    v[0] = (struct iovec){hdr[i], FP__FRAME_HDR};
    nio += 5;
    total += FP__FRAME_HDR + flen;
  }
  int unread = rc == 0 ? kcopy_run(l, &k, &bad) : 0;
  if (unread != 0) { /* frames from `bad` on stay here: nothing is lost */
    tail = tail_at[bad];
    nio = nio_at[bad];
    total = total_at[bad];
  }
  if (rc == 0 && nio > 0)
    rc = sock_send(l, c, iov, nio, total);
  if (rc == 0) {
    atomic_store_explicit(&l->last_work, fp__now_ns(), memory_order_relaxed);
    l->slots[slot].ttail = tail;
    if (fp__tring_publish(tr, tail))
      fp__tring_wake(tr);
    *sent = bad;
    return unread;
  }
  if (l->slots[slot].pid != 0) {
    /* A worker that cannot be fed must not sit idle holding chunks: kill
     * it; its exited() hands its chunks back to the scheduler. */
    if (c != NULL)
      c->eof = 1;
    local_kill(base, slot, SIGKILL, 0);
  }
  return rc;
}

/* Delivers what every live worker published in its result ring (any
 * thread, the owner's lock held). Returns how many results. */
static int local_poll(fp__link *base) {
  llink *l = (llink *)base;
  int got = 0;
  for (int i = 0; i < l->cfg.nworkers; i++)
    if (l->slots[i].pid != 0 && fp__ring_pending(&l->v.rings[i]))
      got += ring_drain(l, i);
  return got;
}

/* A poller starts: counted in the budget and in `pollers` (local.h) when
 * the budget has room for it. No lock needed. */
static int local_spin_begin(fp__link *base) {
  llink *l = (llink *)base;
  if (!fp__budget_ok_poller(l->shm, 1))
    return 0;
  fp__budget_join(l->shm);
  atomic_fetch_add_explicit(&l->shm->pollers, 1, memory_order_seq_cst);
  return 1;
}

static int local_spin_check(fp__link *base) {
  llink *l = (llink *)base;
  if (rings_pending(l))
    return 1;
  return fp__budget_ok_poller(l->shm, 0) ? 0 : -1;
}

/* A poller stops. The pollers store, then the tails' loads (seq_cst):
 * a result a worker did not kick for is seen here. */
static int local_spin_end(fp__link *base) {
  llink *l = (llink *)base;
  atomic_fetch_sub_explicit(&l->shm->pollers, 1, memory_order_seq_cst);
  fp__budget_leave(l->shm);
  return rings_pending(l);
}

static int local_skip(fp__link *base, int slot, uint64_t seq) {
  llink *l = (llink *)base;
  if (l->slots[slot].pid == 0)
    return 0;
  return fp__slot_skip(&l->v.slots[slot], seq);
}

static int local_recall(fp__link *base, int slot, uint64_t seq, uint64_t nth) {
  llink *l = (llink *)base;
  if (l->slots[slot].pid == 0)
    return 1;
  return fp__slot_recall(&l->v.slots[slot], seq, nth);
}

static int local_running(fp__link *base, int slot, fp__running *out) {
  llink *l = (llink *)base;
  fp__slot *pub = &l->v.slots[slot];
  out->seq = atomic_load(&pub->seq);
  out->item = atomic_load(&pub->item);
  out->started_ns =
      atomic_load_explicit(&pub->started_ns, memory_order_acquire);
  out->cpu = atomic_load_explicit(&pub->cpu, memory_order_relaxed);
  return 0;
}

/* FINISH in the ring (behind anything queued), and EOF on the socket for
 * a worker that waits there for a large frame's bytes. */
static void local_finish(fp__link *base, int slot) {
  llink *l = (llink *)base;
  conn *c = l->slots[slot].c;
  if (c == NULL || c->eof || c->out_len != 0 || l->slots[slot].finished)
    return;
  l->slots[slot].finished = 1;
  fp__tring *tr = &l->v.trings[slot];
  uint64_t tail = l->slots[slot].ttail;
  if (put_marker(tr, &tail, FP__TRING_FINISH) == 0) {
    l->slots[slot].ttail = tail;
    if (fp__tring_publish(tr, tail))
      fp__tring_wake(tr);
  }
  shutdown(c->fd, SHUT_WR); /* EOF: the worker exits */
}

static void closed_noop(uv_handle_t *h) {
  (void)h;
}

static void local_close(fp__link *base) {
  llink *l = (llink *)base;
  if (!l->started)
    return;
  l->started = 0;
  uv_close((uv_handle_t *)&l->fs_poll, closed_noop);
  uv_close((uv_handle_t *)&l->prep, closed_noop);
  uv_close((uv_handle_t *)&l->chk, closed_noop);
  uv_close((uv_handle_t *)&l->spin, closed_noop);
  uv_close((uv_handle_t *)&l->flush, closed_noop);
  uv_close((uv_handle_t *)&l->watch, closed_noop);
  for (int i = 0; i < l->cfg.nworkers; i++) {
    if (l->slots[i].c != NULL)
      conn_close(l->slots[i].c);
    l->slots[i].c = NULL;
  }
  /* EOF for the fork server: it ends what is left of its workers, reaps
   * them and exits; free() waits for it. */
  shutdown(l->fs_fd, SHUT_RDWR);
}

/* Closes one of the link's descriptors. In a copy of the opener (the
 * user's fork, or a worker of another pool, whose fork server closed
 * them all and whose task may own the numbers now), only while the
 * registry still says it is ours. */
static void close_own_fd(int copy, int fd) {
  if (copy)
    fp__fdreg_close_if_registered(fd);
  else
    fp__fdreg_close(fd);
}

/* Reaps the fork server after the EOF on its socket, which it answers
 * within milliseconds: it SIGKILLs what is left of its workers, reaps
 * them and exits. One that is stopped (SIGSTOP, a debugger, a freezer)
 * never would, and join or free would wait for ever: as fs_watch does
 * while the pool runs, a stopped one is SIGKILLed, and so is one that has
 * not exited after FS_STUCK_NS. It is waited for on a pidfd, which wakes
 * the caller the moment it exits; without one, by polls that back off
 * from 20 us to 10 ms. */
static void reap_fork_server(pid_t pid) {
  int64_t deadline = fp__now_ns() + FS_STUCK_NS;
  int pfd = fp__pidfd_open(pid);
  long pause_ns = 20000;
  pid_t r;

  while ((r = waitpid(pid, NULL, WNOHANG)) == 0 || (r < 0 && errno == EINTR)) {
    if (r == 0 && pfd >= 0) {
      struct pollfd p = {.fd = pfd, .events = POLLIN};
      if (poll(&p, 1, 10) == 1)
        continue; /* it exited: reap it */
    } else if (r == 0) {
      nanosleep(&(struct timespec){0, pause_ns}, NULL);
      pause_ns = pause_ns < 10000000 ? pause_ns * 2 : pause_ns;
    }
    if (r == 0 && (fp__proc_stopped(pid) || fp__now_ns() >= deadline)) {
      kill(pid, SIGKILL);
      while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
      }
      break;
    }
  }
  if (pfd >= 0)
    close(pfd);
}

static void local_free(fp__link *base) {
  llink *l = (llink *)base;
  int copy = getpid() != l->opener;
  /* After the loop ended, or in a forked copy of the master whose loop
   * never ran here: no libuv call, and no shutdown(), which would act on
   * the socket the parent still uses. */
  for (int i = 0; i < l->cfg.nworkers; i++) {
    conn *c = l->slots[i].c;
    if (c != NULL) { /* a forked copy: its handles were never closed */
      close_own_fd(copy, c->fd);
      fp__free(c->in, c->in_cap);
      fp__free(c->out, c->out_cap);
      free(c);
    }
  }
  if (l->fs_fd >= 0) {
    close_own_fd(copy, l->fs_fd);
    /* A copy never owns the fork server: it is the opener's child. */
    if (!copy)
      reap_fork_server(l->fs_pid);
  }
  for (int k = 0; k < 2; k++)
    if (l->copy_pipe[k] >= 0)
      close_own_fd(copy, l->copy_pipe[k]);
  llink_release(l);
}

const fp__link_ops fp__link_local = {
    .name = "local",
    .open = local_open,
    .start = local_start,
    .spawn = local_spawn,
    .can_send = local_can_send,
    .send = local_send,
    .kill = local_kill,
    .kill_aims = 1,
    .lazy_depth = FP__DEFER_QUEUED,
    .running = local_running,
    .skip = local_skip,
    .recall = local_recall,
    .finish = local_finish,
    .close = local_close,
    .free = local_free,
    .poll = local_poll,
    .spin_begin = local_spin_begin,
    .spin_check = local_spin_check,
    .spin_end = local_spin_end,
};
