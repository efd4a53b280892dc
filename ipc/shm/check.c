/* SPDX-License-Identifier: MIT */
/* check.c - the manager's consistency checker.
 *
 * fp__shm_check() is the test suite's proof that a manager is sound. It
 * first settles: reclaims the heap of every dead thread (which repairs the
 * update that thread was making) and takes and releases every lock. Then
 * it accounts for every byte of the carved area [heap, brk): the
 * allocator's walk (free spans, slab headers and free chunks, the global
 * limbo), each heap's walk (cached and retired chunks), and each object's
 * walk (its own chunk and every chunk it owns) claim 16-byte granules in a
 * bitmap, so that a chunk claimed twice fails; at the end the handed-out
 * bytes must equal the allocator's `used` and, with the allocator's own,
 * cover [heap, brk) exactly (nothing leaked).
 *
 * This file is the only one that knows every object type: it dispatches to
 * the per-type walkers and settlers (dict.c, list.c), so that the arena
 * and the object files depend on each other in one direction only.
 */
#include "ipc/shm/check.h"

#include <stdlib.h>
#include <string.h>

/* Reclaims dead threads' heaps, then takes and releases every lock of
 * every object. The registry does not change meanwhile: the checker's
 * caller guarantees that nobody else uses the manager. */
static int settle_all(fp_manager *m) {
  int rc = fp__shm_reclaim_dead(m);

  if (rc != 0)
    return rc;
  for (uint64_t off = m->objects; off != 0;) {
    fp__shm_obj *o = fp__shm_ptr(m, off);
    if (o->type == FP__SHM_DICT)
      fp__shm_dict_settle(o);
    else if (o->type == FP__SHM_LIST)
      fp__shm_list_settle(o);
    off = o->next;
  }
  return 0;
}

/* Checks one object's header and hands it to its type's walker. */
static int check_object(fp__shm_checker *c, fp__shm_obj *o, uint64_t off,
                        uint64_t prev) {
  int rc;

  if (o->magic != FP__SHM_OBJ_MAGIC(o->type) || o->self != off ||
      o->prev != prev)
    return fp__shm_fail(c, "object at %llu: bad header",
                        (unsigned long long)off);
  if ((rc = fp__shm_claim(c, off, "object")) != 0)
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
    if (off % 64 != 0 || !fp__shm_carved(m, off, sizeof(fp__shm_obj)) ||
        nobj > m->nobjects)
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

/* Every heap in use or not: free heaps must be empty. */
static int check_heaps(fp__shm_checker *c) {
  fp_manager *m = c->m;
  int rc = 0;

  for (uint64_t i = 0; i < m->nheaps && rc == 0; i++) {
    fp__shm_heap *h = fp__shm_heap_at(m, (int)i);
    uint64_t s = atomic_load(&h->state);
    if (s & FP__HS_RECLAIM)
      return fp__shm_fail(c, "heap %d: reclaim left unfinished", (int)i);
    if (i >= atomic_load(&m->heap_hw) && s != 0)
      return fp__shm_fail(c, "heap %d: used above the high-water mark", (int)i);
    rc = fp__shm_heap_check(c, h);
  }
  return rc;
}

/* Compares what the walks found with the allocator's counters. */
static int check_totals(fp__shm_checker *c) {
  fp_manager *m = c->m;

  if (c->out_bytes != m->used)
    return fp__shm_fail(c,
                        "handed-out chunks hold %llu bytes, header says "
                        "%llu",
                        (unsigned long long)c->out_bytes,
                        (unsigned long long)m->used);
  if (c->out_bytes + c->pool_bytes != fp__shm_carved_bytes(m))
    return fp__shm_fail(c, "leak: out %llu + allocator %llu != carved %llu",
                        (unsigned long long)c->out_bytes,
                        (unsigned long long)c->pool_bytes,
                        (unsigned long long)fp__shm_carved_bytes(m));
  return 0;
}

/* One walk over the whole arena with a fresh bitmap. */
static int walk(fp__shm_checker *c) {
  int rc;

  c->bits = calloc(fp__shm_carved_bytes(c->m) / 16 / 64 + 1, 8);
  if (c->bits == NULL)
    return FP_ENOMEM;
  rc = fp__shm_arena_check(c);
  if (rc == 0)
    rc = check_heaps(c);
  if (rc == 0)
    rc = check_objects(c);
  if (rc == 0)
    rc = check_totals(c);
  free(c->bits);
  return rc;
}

/* After a granule was claimed twice: walks again to find what claimed it
 * first, and appends that to the message (the message alone names only
 * the second claimant, which is often not the culprit: a chunk freed while
 * still retired shows up as a limbo overlapping the slab's free list). */
static void name_first_claimant(fp__shm_checker *c) {
  fp__shm_checker again = {.m = c->m, .probe = c->twice};
  size_t len = c->err != NULL ? strlen(c->err) : 0;

  if (walk(&again) == FP_ENOMEM || again.first[0] == '\0' || len == 0)
    return;
  snprintf(c->err + len, c->errlen - len, " (granule %llu first claimed: %s)",
           (unsigned long long)(c->twice - 1), again.first);
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
  if (m->brk < m->heap || m->brk > m->top || m->top > m->size ||
      m->brk % FP__SHM_PAGE != 0 || m->top % FP__SHM_PAGE != 0)
    return fp__shm_fail(&c, "brk %llu or top %llu out of range",
                        (unsigned long long)m->brk, (unsigned long long)m->top);
  rc = walk(&c);
  if (rc == FP_EPROTO && c.twice != 0)
    name_first_claimant(&c);
  return rc;
}
