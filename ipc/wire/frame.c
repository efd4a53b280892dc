/* SPDX-License-Identifier: MIT */
/* frame.c - length-prefixed frames over a byte stream.
 *
 * A frame is a 4-byte little-endian u32 payload length followed by the
 * payload. The length is checked against the caller's maximum as soon as
 * the 4 header bytes are known and before any buffer is sized for the
 * payload, so a hostile or corrupt peer cannot make us allocate 4 GiB.
 *
 * fp_frame_parse() serves callers that buffer a non-blocking stream (the
 * pool's libuv loop); fp_frame_write()/fp_frame_read() serve blocking
 * descriptors (workers). Writes go out as one sendmsg() with two iovecs
 * (header, payload) and MSG_NOSIGNAL, so a dead peer is an FP_EPIPE return
 * rather than a process-killing SIGPIPE. Descriptors that are not sockets
 * (pipes) cannot take MSG_NOSIGNAL; for them SIGPIPE is blocked in the
 * calling thread around writev() and a SIGPIPE we caused is consumed with a
 * zero-timeout sigtimedwait() before the old mask comes back, the usual way
 * for a library to stay out of the application's signal disposition.
 */
#include "forkpool.h"
#include "ipc/wire/alloc.h"
#include "ipc/wire/frame.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

int fp__frame_put_hdr(unsigned char out[FP__FRAME_HDR], size_t len) {
  if (len > UINT32_MAX)
    return FP_EMSGSIZE;
  out[0] = (unsigned char)len;
  out[1] = (unsigned char)(len >> 8);
  out[2] = (unsigned char)(len >> 16);
  out[3] = (unsigned char)(len >> 24);
  return 0;
}

size_t fp__frame_want(const unsigned char *buf, size_t have, size_t max) {
  size_t want = have + FP__FRAME_READ_MIN;
  if (have >= FP__FRAME_HDR) {
    uint32_t n = get_u32(buf);
    if (n <= max && FP__FRAME_HDR + (size_t)n > want)
      want = FP__FRAME_HDR + (size_t)n;
  }
  return want;
}

int fp_frame_parse(const void *buf, size_t len, size_t max,
                   size_t *payload_len) {
  uint32_t n;

  if ((buf == NULL && len != 0) || payload_len == NULL)
    return FP_EINVAL;
  if (len < 4)
    return 1;
  n = get_u32(buf);
  if (n > max)
    return FP_EMSGSIZE;
  *payload_len = n;
  return len - 4 >= n ? 0 : 1;
}

/* SIGPIPE blocked around a pipe write (see the file header). */
typedef struct sigpipe_guard {
  sigset_t old;
  int was_pending;
} sigpipe_guard;

static void sigpipe_block(sigpipe_guard *g) {
  sigset_t set, pending;

  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, &g->old);
  sigemptyset(&pending);
  sigpending(&pending);
  g->was_pending = sigismember(&pending, SIGPIPE) == 1;
}

/* Restores the signal mask; when our write failed with EPIPE and no
 * SIGPIPE was pending before, the pending one is ours: consume it. */
static void sigpipe_unblock(sigpipe_guard *g, int got_epipe) {
  if (got_epipe && !g->was_pending) {
    sigset_t set;
    struct timespec zero = {0, 0};

    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    while (sigtimedwait(&set, NULL, &zero) == -1 && errno == EINTR)
      ;
  }
  pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

int fp_frame_write(int fd, const void *payload, size_t len) {
  unsigned char hdr[4];
  struct iovec iov[2], *v = iov;
  int cnt, rc = 0, on_socket = 1, guarded = 0;
  sigpipe_guard guard;

  if (len > UINT32_MAX)
    return FP_EMSGSIZE;
  if (payload == NULL && len != 0)
    return FP_EINVAL;
  fp__frame_put_hdr(hdr, len);
  iov[0].iov_base = hdr;
  iov[0].iov_len = 4;
  iov[1].iov_base = (void *)payload;
  iov[1].iov_len = len;
  cnt = len != 0 ? 2 : 1;

  while (cnt > 0) {
    ssize_t k;

    if (on_socket) {
      struct msghdr msg = {0};
      msg.msg_iov = v;
      msg.msg_iovlen = (size_t)cnt;
      k = sendmsg(fd, &msg, MSG_NOSIGNAL);
      if (k < 0 && errno == ENOTSOCK) {
        on_socket = 0;
        sigpipe_block(&guard);
        guarded = 1;
        continue;
      }
    } else {
      k = writev(fd, v, cnt);
    }
    if (k < 0) {
      if (errno == EINTR)
        continue;
      rc = -errno;
      break;
    }
    if (k == 0) { /* no progress on a blocking fd: should not happen */
      rc = -EIO;
      break;
    }
    /* Drop what was written from the front of the iovec array. */
    while (k > 0) {
      if ((size_t)k >= v->iov_len) {
        k -= (ssize_t)v->iov_len;
        v++;
        cnt--;
      } else {
        v->iov_base = (char *)v->iov_base + k;
        v->iov_len -= (size_t)k;
        k = 0;
      }
    }
  }
  if (guarded)
    sigpipe_unblock(&guard, rc == FP_EPIPE);
  return rc;
}

/* Reads exactly n bytes into buf, looping over short reads and EINTR.
 * Returns 0 when all arrived, 1 at end of file (*got says how many bytes
 * came first), -errno on a read error. */
static int read_full(int fd, void *buf, size_t n, size_t *got) {
  size_t done = 0;

  while (done < n) {
    ssize_t k = read(fd, (char *)buf + done, n - done);
    if (k < 0) {
      if (errno == EINTR)
        continue;
      *got = done;
      return -errno;
    }
    if (k == 0) {
      *got = done;
      return 1;
    }
    done += (size_t)k;
  }
  *got = done;
  return 0;
}

int fp_frame_read(int fd, fp_writer *buf, size_t max) {
  unsigned char hdr[4];
  size_t got;
  uint32_t n;
  int rc;

  if (buf == NULL)
    return FP_EINVAL;
  fp_writer_reset(buf);
  rc = read_full(fd, hdr, sizeof(hdr), &got);
  if (rc < 0)
    return rc;
  if (rc == 1)
    return got == 0 ? FP_EOF : FP_EPROTO;
  n = get_u32(hdr);
  if (n > max)
    return FP_EMSGSIZE; /* decided before any allocation */
  if (fp_writer_reserve(buf, n) != 0) {
    fp_writer_reset(buf);
    return FP_ENOMEM;
  }
  if (n == 0)
    return 0;
  rc = read_full(fd, buf->data, n, &got);
  if (rc < 0)
    return rc;
  if (rc == 1)
    return FP_EPROTO;
  buf->len = n;
  return 0;
}
