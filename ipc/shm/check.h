/* SPDX-License-Identifier: MIT */
/* check.h - the manager's consistency checker (internal header).
 *
 * The checker (check.c) accounts for every byte of an arena's carved area
 * [heap, brk) + [top, size): each 16-byte granule must be claimed exactly
 * once, either by the allocator's side (free spans, slab headers, free
 * slab chunks) or as a chunk handed out (live in an object, cached in a
 * heap, retired in a limbo). The allocator (arena.c) and the heaps (heap.c) walk their own
 * parts; each object type's walker (dict.c, list.c) claims the chunks its
 * object owns and verifies the type's invariants; check.c alone dispatches
 * on object types. The claim primitives are inline here, so the walkers
 * depend on no other file for them.
 */
#ifndef FP_IPC_SHM_CHECK_H
#define FP_IPC_SHM_CHECK_H

#include "ipc/shm/arena.h"

#include <stdarg.h>
#include <stdio.h>

/* State of one check run. */
typedef struct fp__shm_checker {
  fp_manager *m;
  uint64_t *bits;      /* one bit per 16-byte granule of the carved area:
                          [heap, brk), then [top, size) */
  uint64_t pool_bytes; /* the allocator's own: free and overhead */
  uint64_t out_bytes;  /* chunks handed out */
  char *err;
  size_t errlen;
  /* A granule claimed twice, and then, in a second walk that looks for
   * it, what claimed it first: the failure names both claimants. */
  uint64_t twice; /* its offset + 1, 0 when none */
  uint64_t probe; /* the granule the second walk looks for + 1 */
  char first[128]; /* what claimed it first, and where */
} fp__shm_checker;

/* Records the first failure's message; returns FP_EPROTO. */
static inline int fp__shm_fail(fp__shm_checker *c, const char *fmt, ...)
    FP_PRINTF(2, 3);
static inline int fp__shm_fail(fp__shm_checker *c, const char *fmt, ...) {
  va_list ap;

  if (c->err != NULL && c->errlen > 0 && c->err[0] == '\0') {
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
  }
  return FP_EPROTO;
}

/* Claims [off, off + bytes) for the walk; fails when it leaves one part
 * of the carved area or overlaps anything claimed before. */
static inline int fp__shm_claim_bytes(fp__shm_checker *c, uint64_t off,
                                      uint64_t bytes, const char *what) {
  fp_manager *m = c->m;

  if (bytes == 0 && off % 16 == 0)
    return 0; /* an empty tail, possibly at the end of a part */
  if (!fp__shm_carved(m, off, bytes) || off % 16 != 0 || bytes % 16 != 0)
    return fp__shm_fail(c,
                        "%s: %llu+%llu outside [%llu,%llu)+[%llu,%llu) or "
                        "misaligned",
                        what, (unsigned long long)off,
                        (unsigned long long)bytes, (unsigned long long)m->heap,
                        (unsigned long long)m->brk, (unsigned long long)m->top,
                        (unsigned long long)m->size);
  if (c->probe > off && c->probe <= off + bytes && c->first[0] == '\0')
    snprintf(c->first, sizeof(c->first), "%s %llu+%llu", what,
             (unsigned long long)off, (unsigned long long)bytes);
  uint64_t g0 = off < m->brk ? off - m->heap : m->brk - m->heap + off - m->top;
  for (uint64_t g = g0 / 16, n = bytes / 16; n > 0; g++, n--) {
    if (c->bits[g / 64] & ((uint64_t)1 << (g % 64))) {
      c->twice = off + (g - g0 / 16) * 16 + 1;
      return fp__shm_fail(c, "%s: chunk %llu+%llu overlaps another", what,
                          (unsigned long long)off, (unsigned long long)bytes);
    }
    c->bits[g / 64] |= (uint64_t)1 << (g % 64);
  }
  return 0;
}

/* Claims the handed-out chunk at off (its size from the allocator). */
static inline int fp__shm_claim(fp__shm_checker *c, uint64_t off,
                                const char *what) {
  uint64_t bytes = fp__shm_chunk_bytes(c->m, off);

  if (bytes == 0)
    return fp__shm_fail(c, "%s: %llu is not a chunk", what,
                        (unsigned long long)off);
  c->out_bytes += bytes;
  return fp__shm_claim_bytes(c, off, bytes, what);
}

/* Claims every chunk of a list linked through word 0 (a limbo); *n gets
 * the count. Bounded: a cycle claims a chunk twice and fails. */
static inline int fp__shm_claim_list(fp__shm_checker *c, uint64_t head,
                                     uint64_t *n, const char *what) {
  int rc = 0;

  *n = 0;
  for (uint64_t off = head; off != 0 && rc == 0; (*n)++) {
    if ((rc = fp__shm_claim(c, off, what)) == 0)
      off = *(uint64_t *)fp__shm_ptr(c->m, off);
  }
  return rc;
}

/* The allocator's and the heaps' own walks (arena.c, heap.c). */
FP__SHM_HIDDEN int fp__shm_arena_check(fp__shm_checker *c);
FP__SHM_HIDDEN int fp__shm_heap_check(fp__shm_checker *c, fp__shm_heap *h);

/* Per-type walkers called by fp__shm_check (after the object's own chunk
 * was claimed): claim every chunk the object owns and verify its
 * invariants. Return 0 or FP_EPROTO. */
FP__SHM_HIDDEN int fp__shm_dict_check(fp__shm_checker *c, fp__shm_obj *o);
FP__SHM_HIDDEN int fp__shm_list_check(fp__shm_checker *c, fp__shm_obj *o);

/* The stripe a dict key falls in (for tests that fill one stripe). */
FP__SHM_HIDDEN int fp__shm_dict_stripe_of(const void *key, size_t klen);

/* Per-type "take and release every lock" hooks: a lock whose holder died
 * is taken over, which repairs its structure. */
FP__SHM_HIDDEN void fp__shm_dict_settle(fp__shm_obj *o);
FP__SHM_HIDDEN void fp__shm_list_settle(fp__shm_obj *o);

/* Full consistency check of a manager: reclaims the heaps of dead threads
 * and settles every lock (repairing interrupted updates), then claims
 * every granule of [heap, brk) exactly once (no leak, no overlap) and
 * checks that the allocator's counters agree. Call it only while no other
 * process uses the manager. Returns 0, or FP_EPROTO with a description in
 * err (may be NULL), or FP_ENOMEM for its own bitmap. */
FP__SHM_HIDDEN int fp__shm_check(fp_manager *m, char *err, size_t errlen);

#endif /* FP_IPC_SHM_CHECK_H */
