/* SPDX-License-Identifier: MIT */
/* inbound.c - what workers send to the master, handed to the scheduler:
 * the frames on each worker's stream socket (READY, RETIRE, KICK, large
 * RESULTs, whole or in PART frames) and the RESULTs in its result ring
 * (llink.h). A worker that breaks the protocol is reported as a
 * violation; the scheduler kills it.
 */
#include "pool/local/llink.h"
#include "ipc/wire/alloc.h"
#include "ipc/wire/frame.h"
#include "pool/clock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Frames at least this big that start the read buffer are handed to the
 * scheduler with the buffer itself instead of being copied out of it. */
#define KEEP_MIN (64 * 1024)

static void conn_on_io(uv_poll_t *h, int status, int events);

/* ---- worker sockets ------------------------------------------------------ */

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
  FP__LL_EV(l, result, slot, p, len, keep);
}

void fp__conn_set_events(conn *c, int events) {
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
void fp__conn_close(conn *c) {
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
    FP__LL_EV(l, violation, c->slot, "short PART frame");
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
      FP__LL_EV(l, no_memory, c->slot);
    else
      FP__LL_EV(l, violation, c->slot, "a chunk's results beyond the limit");
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
    FP__LL_EV(l, violation, c->slot, "PART frames that are not a RESULT");
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
      FP__LL_EV(l, ready, c->slot);
    }
    break;
  case FP__MSG_RETIRE:
    FP__LL_EV(l, retired, c->slot);
    break;
  case FP__MSG_KICK:
    fp__llink_drain(l, c->slot); /* the results are in the ring */
    break;
  default:
    FP__LL_EV(l, violation, c->slot, "unknown message");
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
      FP__LL_EV(c->l, violation, c->slot, "over-long frame");
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
int fp__conn_read(conn *c) {
  for (;;) {
    /* Size the buffer for the frame being received, so a large frame is
     * read straight into place instead of through many small copies. */
    size_t need = fp__frame_want(c->in, c->in_len, c->l->cfg.max_frame);
    if (need > c->in_cap) {
      unsigned char *nb = fp__realloc(c->in, c->in_cap, need);
      if (nb == NULL) { /* the stream stops here: as EOF, once told */
        FP__LL_EV(c->l, no_memory, c->slot);
        return 1;
      }
      c->in = nb;
      c->in_cap = need;
    }
    ssize_t n =
        recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
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
  fp__conn_set_events(c, c->eof ? 0 : UV_READABLE | UV_DISCONNECT);
}

static void conn_on_io(uv_poll_t *h, int status, int events) {
  conn *c = (conn *)h;
  llink *l = c->l;
  l->ev.enter(l->ev.ctx);
  if (!c->closing) {
    fp__llink_drain(l, c->slot);
    if (events & UV_WRITABLE)
      conn_flush(c);
    if (!c->closing &&
        (status < 0 || (events & (UV_READABLE | UV_DISCONNECT))) &&
        (fp__conn_read(c) != 0 || status < 0)) {
      /* EOF: the worker is gone or going; its EXITED report decides. */
      c->eof = 1;
      fp__conn_set_events(c, 0);
      fp__fs_expect_exit(l, c->slot);
    }
  }
  l->ev.leave(l->ev.ctx);
}

/* ---- result rings -------------------------------------------------------- */

/* Hands every result published in slot's ring to the scheduler. Returns
 * how many. */
int fp__llink_drain(llink *l, int slot) {
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
      FP__LL_EV(l, violation, slot, "unexpected message in the result ring");
  }
  if (rc < 0) {
    /* A worker that corrupts its ring is killed like one that sends
     * nonsense on its socket; what it wrote is dropped. */
    FP__LL_EV(l, violation, slot, "corrupt result ring");
    pos = atomic_load_explicit(&r->tail, memory_order_acquire);
  }
  /* The scheduler copied what it keeps: the space can be reused. */
  fp__ring_release(r, pos);
  if (got)
    atomic_store_explicit(&l->last_work, fp__now_ns(), memory_order_relaxed);
  return got;
}

int fp__llink_pending(llink *l) {
  for (int i = 0; i < l->cfg.nworkers; i++)
    if (fp__ring_pending(&l->v.rings[i]))
      return 1;
  return 0;
}