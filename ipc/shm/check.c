/* check.c - the manager's consistency checker.
 *
 * fp__shm_check() is the test suite's proof that a manager is sound: it
 * first settles every lock (a lock whose holder died repairs its structure
 * when taken), then accounts for every byte of the arena's carved area
 * [heap, brk): each chunk on an allocator free list and each chunk that a
 * live object owns is claimed once in a bitmap of 16-byte granules, so an
 * overlap or a chunk claimed twice fails, and at the end free plus live
 * bytes must equal the carved bytes (nothing leaked) and agree with the
 * counters in the arena header.
 *
 * This file is the only one that knows every object type: it dispatches to
 * the per-type walkers (fp__shm_dict_check, fp__shm_list_check) and lock
 * settlers, so that the arena itself (arena.c) knows none of them and the
 * object files depend on the arena, never the other way round.
 */
#include "ipc/shm/check.h"

#include <stdlib.h>
#include <string.h>

/* Takes and releases every lock of every object so that a structure whose
 * holder died gets repaired, and the allocator's lock likewise. */
static int settle_all(fp_manager *m) {
  uint64_t off;
  int rc;

  if ((rc = fp__shm_alock(m)) != 0)
    return rc;
  fp__shm_aunlock(m);
  /* The registry may change under our feet only if someone else is active,
   * which the checker's contract excludes. */
  for (off = m->objects; off != 0;) {
    fp__shm_obj *o = fp__shm_ptr(m, off);
    if (o->type == FP__SHM_DICT)
      rc = fp__shm_dict_settle(o);
    else if (o->type == FP__SHM_LIST)
      rc = fp__shm_list_settle(o);
    if (rc != 0)
      return rc;
    off = o->next;
  }
  return 0;
}

/* Claims every chunk on the allocator's free lists. The walks are bounded:
 * a cycle would claim a chunk twice and fail. */
static int check_free_lists(fp__shm_checker *c) {
  fp_manager *m = c->m;
  int rc = 0;

  for (uint32_t k = FP__SHM_MIN_SHIFT; k < FP__SHM_NCLASS && rc == 0; k++) {
    uint64_t off = m->free_head[k];
    while (off != 0 && rc == 0) {
      rc = fp__shm_claim_range(c, off, (uint64_t)1 << k, "free list");
      c->free_bytes += (uint64_t)1 << k;
      if (rc == 0)
        off = *(uint64_t *)fp__shm_ptr(m, off);
    }
  }
  return rc;
}

/* Checks one object's header and hands it to its type's walker. */
static int check_object(fp__shm_checker *c, fp__shm_obj *o, uint64_t off,
                        uint64_t prev) {
  int rc;

  if (o->magic != FP__SHM_OBJ_MAGIC(o->type) || o->self != off ||
      o->prev != prev)
    return fp__shm_fail(c, "object at %llu: bad header",
                        (unsigned long long)off);
  if ((rc = fp__shm_claim(c, off, o->size, "object")) != 0)
    return rc;
  if (o->type == FP__SHM_DICT)
    return fp__shm_dict_check(c, o);
  if (o->type == FP__SHM_LIST)
    return fp__shm_list_check(c, o);
  return 0;
}

/* Walks the registry; every object must be in range and linked both ways. */
static int check_objects(fp__shm_checker *c) {
  fp_manager *m = c->m;
  uint64_t nobj = 0, prev = 0;
  int rc = 0;

  for (uint64_t off = m->objects; off != 0 && rc == 0;) {
    if (off < m->heap || off % 64 != 0 || off + sizeof(fp__shm_obj) > m->brk)
      return fp__shm_fail(c, "registry link %llu out of range",
                          (unsigned long long)off);
    fp__shm_obj *o = fp__shm_ptr(m, off);
    rc = check_object(c, o, off, prev);
    nobj++;
    prev = off;
    off = o->next;
  }
  if (rc == 0 && nobj != m->nobjects)
    rc =
        fp__shm_fail(c, "registry holds %llu objects, header says %llu",
                     (unsigned long long)nobj, (unsigned long long)m->nobjects);
  return rc;
}

/* Compares what the walk found with the header's counters. */
static int check_totals(fp__shm_checker *c) {
  fp_manager *m = c->m;

  if (c->live_bytes != m->used)
    return fp__shm_fail(c, "live chunks hold %llu bytes, header says %llu",
                        (unsigned long long)c->live_bytes,
                        (unsigned long long)m->used);
  if (c->live_chunks != m->nlive)
    return fp__shm_fail(c, "%llu live chunks, header says %llu",
                        (unsigned long long)c->live_chunks,
                        (unsigned long long)m->nlive);
  if (c->live_bytes + c->free_bytes != m->brk - m->heap)
    return fp__shm_fail(c, "leak: live %llu + free %llu != carved %llu bytes",
                        (unsigned long long)c->live_bytes,
                        (unsigned long long)c->free_bytes,
                        (unsigned long long)(m->brk - m->heap));
  return 0;
}

int fp__shm_check(fp_manager *m, char *err, size_t errlen) {
  fp__shm_checker c;
  int rc;

  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (m == NULL || m->magic != FP__SHM_MAGIC)
    return FP_EINVAL;
  if ((rc = settle_all(m)) != 0)
    return rc;
  memset(&c, 0, sizeof(c));
  c.m = m;
  c.err = err;
  c.errlen = errlen;
  if (m->anundo != 0)
    return fp__shm_fail(&c, "allocator log not empty");
  if (m->brk < m->heap || m->brk > m->size || m->brk % FP__SHM_PAGE != 0)
    return fp__shm_fail(&c, "brk %llu out of range",
                        (unsigned long long)m->brk);
  c.bits = calloc((m->brk - m->heap) / 16 / 64 + 1, 8);
  if (c.bits == NULL)
    return FP_ENOMEM;
  rc = check_free_lists(&c);
  if (rc == 0)
    rc = check_objects(&c);
  if (rc == 0)
    rc = check_totals(&c);
  free(c.bits);
  return rc;
}
