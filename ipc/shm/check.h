/* check.h - the manager's consistency checker (internal header).
 *
 * The checker (check.c) accounts for every byte of an arena: the allocator
 * claims its free chunks, and each object type's walker claims the chunks
 * its object owns and verifies the type's invariants. The walkers live with
 * their types (dict.c, list.c) and use the claim primitives below, which
 * the arena (arena.c) provides; check.c alone dispatches on object types.
 */
#ifndef FP_IPC_SHM_CHECK_H
#define FP_IPC_SHM_CHECK_H

#include "ipc/shm/arena.h"

/* --- consistency checker ---------------------------------------------- */

/* State of one check run: a bitmap of 16-byte granules of [heap, brk)
 * already claimed by a free chunk or a live chunk. */
typedef struct fp__shm_checker {
  fp_manager *m;
  uint64_t *bits;
  uint64_t free_bytes; /* class bytes in free lists */
  uint64_t live_bytes; /* class bytes reachable from objects */
  uint64_t live_chunks;
  char *err;
  size_t errlen;
} fp__shm_checker;

/* Claims the live chunk at off of `size` requested bytes for the walk and
 * counts it as live. Returns 0
 * or FP_EPROTO (out of range, misaligned, overlapping another chunk) with a
 * message in the checker. */
FP__SHM_HIDDEN int fp__shm_claim(fp__shm_checker *c, uint64_t off,
                                 uint64_t size, const char *what);
/* Claims a free chunk of `size` class bytes (not counted as live). */
FP__SHM_HIDDEN int fp__shm_claim_range(fp__shm_checker *c, uint64_t off,
                                       uint64_t size, const char *what);
FP__SHM_HIDDEN int fp__shm_fail(fp__shm_checker *c, const char *fmt, ...)
    FP_PRINTF(2, 3);

/* Per-type walkers called by fp__shm_check (after the object's own chunk
 * was claimed): claim every chunk the object owns and verify its
 * invariants. Return 0 or FP_EPROTO. */
FP__SHM_HIDDEN int fp__shm_dict_check(fp__shm_checker *c, fp__shm_obj *o);
FP__SHM_HIDDEN int fp__shm_list_check(fp__shm_checker *c, fp__shm_obj *o);
FP__SHM_HIDDEN int fp__shm_check_journal(fp__shm_checker *c,
                                         const fp__shm_journal *j);

/* Per-type "take and release every lock" hooks, used by fp__shm_check to
 * make each lock repair what a dead holder left. */
FP__SHM_HIDDEN int fp__shm_dict_settle(fp__shm_obj *o);
FP__SHM_HIDDEN int fp__shm_list_settle(fp__shm_obj *o);

/* Full consistency check of a manager: settles every lock (repairing
 * structures whose holder died), then walks the allocator's free lists and
 * every object, claiming each chunk exactly once, and verifies that free
 * plus live chunks account for every byte of [heap, brk) (no leak, no
 * overlap) and that the counters in the header agree. Call it only while
 * no other process uses the manager. Returns 0, or FP_EPROTO with a
 * description in err (may be NULL), or FP_ENOMEM for its own bitmap. */
FP__SHM_HIDDEN int fp__shm_check(fp_manager *m, char *err, size_t errlen);

#endif /* FP_IPC_SHM_CHECK_H */
