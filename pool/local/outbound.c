/* SPDX-License-Identifier: MIT */
/* outbound.c - what the master sends a worker: task frames into its task
 * ring, or, when larger than FP__TRING_MAX, onto its stream socket behind
 * a SOCK marker in the ring (so the ring keeps the order), and FINISH
 * (llink.h). Borrowed items are copied by the kernel (usermem.h), so that
 * memory the caller unmapped gives -EFAULT instead of a crash.
 */
#include "pool/local/llink.h"
#include "ipc/wire/alloc.h"
#include "ipc/wire/frame.h"
#include "pool/clock.h"
#include "pool/usermem.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* The pipe of safe_copy, made once (registered like every library
 * descriptor, above the standard ones, non-blocking). 0 or -errno. */
static int copy_pipe_open(llink *l) {
  int p[2];
  if (l->copy_pipe[0] >= 0)
    return 0;
  fp__fdreg_lock();
  int rc = fp__fdreg_add_pair_locked(
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
    int rc =
        safe_copy(l, k->to[j].iov_base, k->from[j].iov_base, k->to[j].iov_len);
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
      k->to[k->n] =
          (struct iovec){payload + v[1].iov_len + v[2].iov_len, t[i].items_len};
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
 * only if it sleeps (local.h). Returns as link.h's send does; on a
 * failure *sent stays -1 and the caller kills the worker. */
int fp__llink_send(llink *l, int slot, const fp__task_out *t, int n,
                   int *sent) {
  static const unsigned char zeros[FP__FRAME_ALIGN];
  conn *c = l->slots[slot].c;
  fp__tring *tr = &l->v.trings[slot];
  uint64_t tail = l->slots[slot].ttail;
  unsigned char hdr[FP__LINK_MAX_BATCH][FP__FRAME_HDR];
  struct iovec iov[5 * FP__LINK_MAX_BATCH];
  uint64_t tail_at[FP__LINK_MAX_BATCH]; /* where frame i begins */
  size_t total = 0, total_at[FP__LINK_MAX_BATCH];
  int nio = 0, nio_at[FP__LINK_MAX_BATCH], bad = n;
  kcopy k = {.n = 0};
  int rc =
      c != NULL && c->out_len == 0 && n <= FP__LINK_MAX_BATCH ? 0 : FP_EINVAL;
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
  return rc;
}

/* FINISH in the ring (behind anything queued), and EOF on the socket for
 * a worker that waits there for a large frame's bytes. */
void fp__llink_finish(llink *l, int slot) {
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