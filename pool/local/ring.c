/* ring.c - the per-worker result ring (single producer, single consumer).
 *
 * The worker (producer) owns the tail, the master (consumer) the head; both
 * are byte positions that only grow, so tail - head is the space in use.
 * Entries are frames written with the wire's own header (frame.h), each
 * starting 8-byte aligned. An entry never wraps: when it does not fit
 * before the end, FP__RING_WRAP is written where its header would be and
 * the entry starts at offset 0. See local.h for the kick protocol.
 */
#include "pool/local/local.h"
#include "ipc/wire/frame.h"

#include <string.h>

#define ALIGN8(n) (((n) + 7) & ~(size_t)7)

int fp__ring_put(fp__ring *r, const struct iovec *iov, int n, size_t total) {
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  uint64_t h = atomic_load_explicit(&r->head, memory_order_acquire);
  size_t need = ALIGN8(FP__FRAME_HDR + total);
  size_t pos = (size_t)(t % FP__RING_SIZE);
  size_t waste = pos + need > FP__RING_SIZE ? FP__RING_SIZE - pos : 0;
  if (total > FP__RING_MAX || FP__RING_SIZE - (t - h) < waste + need)
    return -1;
  if (waste > 0) { /* 8-aligned positions: waste >= 8, room for a marker */
    uint32_t wrap = FP__RING_WRAP;
    memcpy(r->data + pos, &wrap, 4);
    t += waste;
    pos = 0;
  }
  fp__frame_put_hdr(r->data + pos, total);
  size_t off = pos + FP__FRAME_HDR;
  for (int i = 0; i < n; i++) {
    if (iov[i].iov_len > 0)
      memcpy(r->data + off, iov[i].iov_base, iov[i].iov_len);
    off += iov[i].iov_len;
  }
  /* seq_cst, not just release: this store and the caller's load of
   * master_idle are the worker's half of the kick protocol. */
  atomic_store_explicit(&r->tail, t + need, memory_order_seq_cst);
  return 0;
}

int fp__ring_next(fp__ring *r, uint64_t *pos, const unsigned char **payload,
                  size_t *len) {
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
  for (;;) {
    uint64_t h = *pos;
    if (h == t)
      return 0;
    if (t - h > FP__RING_SIZE || h % 8 != 0)
      return -1;
    size_t at = (size_t)(h % FP__RING_SIZE);
    uint32_t mark;
    memcpy(&mark, r->data + at, 4);
    if (mark == FP__RING_WRAP) {
      *pos = h + (FP__RING_SIZE - at);
      continue;
    }
    size_t plen;
    if (fp_frame_parse(r->data + at, FP__RING_SIZE - at, FP__RING_MAX,
                       &plen) != 0 ||
        ALIGN8(FP__FRAME_HDR + plen) > t - h)
      return -1; /* over-long, cut by the end, or past the tail */
    *payload = r->data + at + FP__FRAME_HDR;
    *len = plen;
    *pos = h + ALIGN8(FP__FRAME_HDR + plen);
    return 1;
  }
}

void fp__ring_release(fp__ring *r, uint64_t pos) {
  atomic_store_explicit(&r->head, pos, memory_order_release);
}

int fp__ring_pending(fp__ring *r) {
  return atomic_load_explicit(&r->tail, memory_order_seq_cst) !=
         atomic_load_explicit(&r->head, memory_order_relaxed);
}
