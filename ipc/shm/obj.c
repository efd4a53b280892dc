/* SPDX-License-Identifier: MIT */
/* obj.c - shared objects: their headers, the registry, refs.
 *
 * Every dict, list, counter, lock and array starts with an fp__shm_obj
 * header (64 bytes, 64-aligned) and is linked into the registry, a doubly
 * linked list in the arena header that the checker walks. Creating an
 * object is one step of the global allocator (allocate, build, link), so a
 * crash leaves either no object or a complete one; freeing one is one step
 * too (unlink, clear the magic, retire the chunk through the global limbo,
 * so that a call still inside the object never sees it reused), followed
 * by a collection: arrays, counters and locks make no other call that
 * would ever collect, and a destroyed array's pages should serve the next
 * request at once.
 *
 * Handles are pointers into the arena; fp__shm_obj_check validates one
 * (magic, type, the arena's own magic and base) before every call. A ref
 * is a handle made portable: type, a 27-bit tag mixing the manager's
 * random identity with the object's creation number, and the offset.
 */
#include "ipc/shm/arena.h"
#include <string.h>

/* Why obj_header_check refused o: sets the message and returns the code.
 * Out of line and cold, so that the check itself stays small enough to
 * inline into every Manager call. */
__attribute__((cold, noinline)) static int header_refuse(const fp__shm_obj *o,
                                                         int type) {
  const fp_manager *m;
  uint32_t mg, t;

  if (o == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL %s handle",
                          fp__shm_type_name(type));
  /* Each word read once: another thread may destroy the object, and make
   * another at the same place, while we look. */
  mg = o->magic;
  t = o->type;
  if ((mg & 0xffffff00u) != (FP__SHM_OBJ_MAGIC(0) & 0xffffff00u) ||
      t < FP__SHM_DICT || t > FP__SHM_ARRAY || mg != FP__SHM_OBJ_MAGIC(t))
    return fp__shm_refuse(FP_EINVAL,
                          "not a live Manager %s: a destroyed object, or "
                          "not a handle at all",
                          fp__shm_type_name(type));
  m = fp__shm_of(o);
  if (m->magic != FP__SHM_MAGIC || m->base != (uint64_t)(uintptr_t)m)
    return fp__shm_refuse(FP_EINVAL, "the %s's manager is not intact",
                          fp__shm_type_name(type));
  if (t == (uint32_t)type) /* it failed the fast check a moment ago */
    return fp__shm_refuse(FP_EINVAL,
                          "the %s was destroyed while the call began",
                          fp__shm_type_name(type));
  return fp__shm_refuse(FP_ETYPE, "the handle is a %s, not a %s",
                        fp__shm_type_name(t), fp__shm_type_name(type));
}

/* Header checks shared by fp__shm_obj_check and begin_destroy: o is a
 * live object of the given type in an intact arena, or header_refuse says
 * what it is instead. */
static inline int obj_header_check(const fp__shm_obj *o, int type) {
  if (o != NULL && o->type == (uint32_t)type &&
      o->magic == FP__SHM_OBJ_MAGIC(type)) {
    const fp_manager *m = fp__shm_of(o);
    if (m->magic == FP__SHM_MAGIC && m->base == (uint64_t)(uintptr_t)m)
      return 0;
  }
  return header_refuse(o, type);
}

int fp__shm_obj_check(const void *p, int type) {
  const fp__shm_obj *o = p;
  int rc = obj_header_check(o, type);
  if (rc == 0 && !fp__shm_obj_alive(o))
    return fp__shm_refuse(FP_EINVAL, "the %s was destroyed",
                          fp__shm_type_name(type));
  return rc;
}

int fp__shm_obj_begin_destroy(void *p, int type, uint64_t *gen) {
  fp__shm_obj *o = p;
  fp__shm_heap *h;
  fp_manager *m;
  int rc = obj_header_check(o, type);

  if (rc != 0)
    return rc;
  m = fp__shm_of(o);
  if ((h = fp__shm_heap_get(m)) == NULL)
    return FP_ENOMEM;
  fp__shm_alock(m, h);
  if (o->magic != FP__SHM_OBJ_MAGIC(type)) {
    rc = FP_EINVAL; /* freed by a racing destroy since the check */
  } else {
    *gen = o->gen;
    atomic_store(&o->dying, 1); /* one word: crash-safe as it stands */
  }
  fp__shm_aunlock(m);
  return rc;
}

int fp__shm_obj_pin(void *o, int type, fp__shm_heap **h) {
  fp_manager *m = fp__shm_of(o);
  int rc;

  if ((*h = fp__shm_heap_get(m)) == NULL)
    return FP_ENOMEM;
  fp__shm_pin(m, *h);
  if ((rc = fp__shm_obj_check(o, type)) != 0)
    fp__shm_unpin(*h);
  return rc;
}

int fp__shm_obj_begin_clearing_destroy(void *p, int type, fp_manager **m,
                                       fp__shm_heap **h, uint64_t *gen) {
  int rc = obj_header_check(p, type);

  if (rc != 0)
    return rc;
  *m = fp__shm_of(p);
  if ((*h = fp__shm_heap_get(*m)) == NULL)
    return FP_ENOMEM;
  fp__shm_pin(*m, *h);
  if ((rc = fp__shm_obj_begin_destroy(p, type, gen)) != 0)
    fp__shm_unpin(*h);
  return rc;
}

int fp__shm_obj_destroy(void *p, int type) {
  fp__shm_obj *o = p;
  uint64_t gen;
  int rc = fp__shm_obj_begin_destroy(o, type, &gen);
  return rc != 0 ? rc : fp__shm_obj_free(fp__shm_of(o), o, gen);
}

/* Builds the object in the chunk at off and links it into the registry
 * (inside the caller's allocator step). */
static int obj_build(fp_manager *m, uint64_t off, int type, uint64_t size,
                     int (*init)(void *obj, void *arg), void *arg) {
  fp__shm_obj *o = fp__shm_ptr(m, off);
  int rc;

  /* Word 0 of a chunk off a slab's free list is that list's link, which a
   * rollback puts back in use: log it, then build the rest unlogged (the
   * chunk was unreachable). */
  fp__shm_alog(m, &o->link, 0);
  memset((char *)o + 8, 0, size - 8);
  o->type = (uint32_t)type;
  o->self = off;
  o->size = size;
  o->gen = m->gen + 1;
  if (init != NULL && (rc = init(o, arg)) != 0)
    return rc;
  o->magic = FP__SHM_OBJ_MAGIC(type);
  o->next = m->objects;
  if (m->objects != 0)
    fp__shm_alog(m, &((fp__shm_obj *)fp__shm_ptr(m, m->objects))->prev, off);
  fp__shm_alog(m, &m->objects, off);
  fp__shm_alog(m, &m->nobjects, m->nobjects + 1);
  fp__shm_alog(m, &m->gen, m->gen + 1);
  return 0;
}

/* One attempt of fp__shm_obj_new, as one step of the global allocator. */
static int obj_new_step(fp_manager *m, fp__shm_heap *h, int type, uint64_t size,
                        int (*init)(void *obj, void *arg), void *arg,
                        void **out) {
  /* The heap's idle journal lends its alloc slot to this step. */
  uint64_t *slot = &h->j.alloc[0];
  int rc;

  fp__shm_alock(m, h);
  rc = fp__shm_alloc_locked(m, slot, size);
  if (rc == 0)
    rc = obj_build(m, *slot, type, size, init, arg);
  if (rc == 0) {
    *out = fp__shm_ptr(m, *slot);
    fp__shm_alog(m, slot, 0);
    fp__shm_acommit(m);
  } else {
    fp__shm_aabort(m);
  }
  fp__shm_aunlock(m);
  return rc;
}

int fp__shm_obj_new(fp_manager *m, int type, uint64_t size,
                    int (*init)(void *obj, void *arg), void *arg, void **out) {
  fp__shm_heap *h = fp__shm_heap_get(m);
  int rc;

  *out = NULL;
  if (h == NULL)
    return FP_ENOMEM;
  if (size > m->size - m->heap)
    return fp__shm_refuse(FP_EMSGSIZE,
                          "a new %s of %llu bytes with its header: more than "
                          "the manager's arena holds (arena_size %llu)",
                          fp__shm_type_name(type), (unsigned long long)size,
                          (unsigned long long)m->size);
  rc = obj_new_step(m, h, type, size, init, arg, out);
  if (rc == FP_ENOMEM) {
    /* Objects are the large requests (arrays) and need long runs of
     * pages, which the one empty slab each class keeps can cut: those go
     * back at once here (structure calls give them back only when making
     * room was not enough, fp__shm_alloc). Not pinned, no lock held: the
     * collection may free anything retired. */
    fp__shm_make_room(m, h);
    fp__shm_trim(m, h);
    rc = obj_new_step(m, h, type, size, init, arg, out);
  }
  if (rc == FP_ENOMEM)
    fp__shm_refuse(rc,
                   "the manager's arena is full: no room for a new %s of "
                   "%llu bytes with its header (arena_size %llu, %llu in use)",
                   fp__shm_type_name(type), (unsigned long long)size,
                   (unsigned long long)m->size, (unsigned long long)m->used);
  return rc;
}

int fp__shm_obj_free(fp_manager *m, fp__shm_obj *o, uint64_t gen) {
  fp__shm_heap *h = fp__shm_heap_get(m);
  uint64_t word, e;
  int b;

  if (h == NULL)
    return FP_ENOMEM;
  fp__shm_alock(m, h);
  if (o->magic != FP__SHM_OBJ_MAGIC(o->type) || o->gen != gen) {
    /* freed by a racing destroy (and maybe made again at the same place) */
    fp__shm_aunlock(m);
    return fp__shm_refuse(FP_EINVAL,
                          "the %s was destroyed by another call "
                          "meanwhile",
                          fp__shm_type_name(o->type));
  }
  if (o->prev != 0)
    fp__shm_alog(m, &((fp__shm_obj *)fp__shm_ptr(m, o->prev))->next, o->next);
  else
    fp__shm_alog(m, &m->objects, o->next);
  if (o->next != 0)
    fp__shm_alog(m, &((fp__shm_obj *)fp__shm_ptr(m, o->next))->prev, o->prev);
  fp__shm_alog(m, &m->nobjects, m->nobjects - 1);
  /* magic and type share a word: clear the magic half. */
  memcpy(&word, &o->magic, 8);
  fp__shm_alog(m, (uint64_t *)&o->magic, word & ~(uint64_t)0xffffffffu);
  /* Retire the chunk (see heap.c): the epoch is read after the magic is
   * cleared, so a call that begins later sees the object gone. */
  atomic_thread_fence(memory_order_seq_cst);
  e = atomic_load(&m->epoch);
  b = (int)(e % 3);
  if (m->glimbo_epoch[b] != e)
    fp__shm_alog(m, &m->glimbo_epoch[b], e); /* older chunks wait too */
  fp__shm_push_locked(m, &m->glimbo[b], o->self);
  fp__shm_acommit(m);
  fp__shm_aunlock(m);
  /* Every destroy calls this unpinned, so the two advances of a collect
   * free the chunk now unless another call is inside (heap.c). */
  fp__shm_collect(m, h, 0);
  return 0;
}

/* --- refs ----------------------------------------------------------------- */

#define REF_OFF_BITS 34
#define REF_TAG_BITS 27

/* The 27-bit tag of an object's ref: the manager's identity mixed with the
 * object's creation number (splitmix64's finaliser). */
static uint64_t ref_tag(const fp_manager *m, const fp__shm_obj *o) {
  uint64_t x = m->id ^ (o->gen * 0x9e3779b97f4a7c15ULL);
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x & (((uint64_t)1 << REF_TAG_BITS) - 1);
}

uint64_t fp__shm_obj_ref(const fp__shm_obj *o) {
  return (uint64_t)o->type << (REF_OFF_BITS + REF_TAG_BITS) |
         ref_tag(fp__shm_of(o), o) << REF_OFF_BITS | o->self / 64;
}

void *fp__shm_obj_from_ref(fp_manager *m, uint64_t ref, int type, int *err) {
  uint64_t off = (ref & (((uint64_t)1 << REF_OFF_BITS) - 1)) * 64;
  uint64_t tag = (ref >> REF_OFF_BITS) & (((uint64_t)1 << REF_TAG_BITS) - 1);
  uint64_t rtype = ref >> (REF_OFF_BITS + REF_TAG_BITS);
  fp__shm_obj *o;

  *err = FP_EINVAL;
  static const char *const call[] = {"from_ref",         "fp_dict_from_ref",
                                     "fp_list_from_ref", "fp_counter_from_ref",
                                     "fp_lock_from_ref", "fp_array_from_ref"};
  if (fp__shm_ref_refused(m, call[type >= 0 && type <= 5 ? type : 0], err))
    return NULL; /* on an MPI worker rank: see arena.h */
  if (m == NULL || m->magic != FP__SHM_MAGIC) {
    fp__shm_refuse(FP_EINVAL, m == NULL ? "NULL manager"
                                        : "not a live manager (freed, or "
                                          "not a manager at all)");
    return NULL;
  }
  o = fp__shm_carved(m, off, sizeof(*o)) ? fp__shm_ptr(m, off) : NULL;
  /* rtype != o->type: a ref naming a type its object has not, forged. */
  if (o == NULL || o->self != off || o->magic != FP__SHM_OBJ_MAGIC(o->type) ||
      !fp__shm_obj_alive(o) || ref_tag(m, o) != tag || rtype != o->type) {
    fp__shm_refuse(FP_EINVAL,
                   "ref %#llx names no live object of this "
                   "manager (destroyed, forged, or another "
                   "manager's)",
                   (unsigned long long)ref);
    return NULL;
  }
  if ((int)o->type != type) {
    *err = fp__shm_refuse(FP_ETYPE, "the ref names a %s, not a %s",
                          fp__shm_type_name(o->type), fp__shm_type_name(type));
    return NULL;
  }
  *err = 0;
  return o;
}

int fp__shm_check_arg(const void *v, size_t vlen) {
  int rc = fp__shm_check_value(v, vlen);
  if (rc == FP_EINVAL)
    return fp__shm_refuse(rc, "NULL value");
  if (rc == FP_EMSGSIZE)
    return fp__shm_refuse(rc, "a value of %zu bytes: more than 4 GiB", vlen);
  if (rc != 0)
    return fp__shm_refuse(rc, "the value is not one well-formed encoded "
                              "value");
  return 0;
}

int fp__shm_check_value(const void *v, size_t vlen) {
  size_t n = 0;

  if (v == NULL)
    return FP_EINVAL;
  if (vlen > UINT32_MAX)
    return FP_EMSGSIZE;
  if (fp_values_count(v, vlen, &n) != 0 || n != 1)
    return FP_EPROTO;
  return 0;
}
