/* SPDX-License-Identifier: MIT */
/* list.c - the manager's shared list of codec values.
 *
 * A list is one arena object with one lock and a table of item chunks:
 *   list.items -> table: u64 link | u64 unused | u64 slot[cap] (crefs)
 *   item chunk: u64 link | u64 vlen | the encoded value
 * The table is a ring: item i is in slot[(head + i) mod cap], cap a power
 * of two. Popping the first item moves head on, so a queue (append,
 * pop(0)) costs O(1) and its table needs no memory once it is big enough.
 *
 * Invariants while the lock is free: len <= cap; cap is 0 (items 0, head
 * 0) or a power of two, the table's size, and head < cap; every item
 * slot names a distinct live item chunk holding exactly one encoded
 * value; the other slots are garbage.
 *
 * Mutations follow the journal protocol (journal.c). An append builds its
 * item chunk before it takes the lock (the journal's alloc slot keeps it
 * accounted for if the process dies while waiting), then, under the lock,
 * writes the slot after the last item (unreachable) and publishes it with
 * one logged store of len, first moving the items to a table twice as big
 * if every slot is taken (published with the items, cap and head words).
 * The lock is held for a few stores, which is what lets two processes
 * appending at once keep up with one.
 * set publishes a new chunk with one logged store into its slot. pop of
 * the last item is one logged store of len, of the first one of head and
 * len; pop of any other index publishes a copy of the table without that
 * slot (a shift in place could not be undone from a small log), so only
 * it needs memory. clear detaches the table and releases it deep (its
 * item slots, from head round the ring). Unlinked chunks are retired
 * after the commit, outside the lock.
 */
#include "ipc/shm/check.h"

#include <stdlib.h>
#include <string.h>

#define VAL_HDR 16
#define TBL_HDR 16

struct fp_list {
  fp__shm_obj hdr;
  fp__shm_mutex mu;
  uint32_t pad;
  _Atomic uint64_t items; /* offset of the table, 0 when cap is 0 */
  _Atomic uint64_t len;
  _Atomic uint64_t cap;
  uint64_t head; /* slot of item 0 (read under the lock only) */
};

typedef struct value {
  uint64_t link;
  uint64_t vlen;
  unsigned char data[];
} value;

static fp_manager *mgr(fp_list *l) {
  return fp__shm_of(&l->hdr);
}

static uint64_t *table(fp_manager *m, fp_list *l) {
  return (uint64_t *)fp__shm_ptr(m, l->items) + 2;
}

/* The slot of item i (i < cap: an item, or the free slot after them). */
static uint64_t *slot_of(fp_manager *m, fp_list *l, uint64_t i) {
  return &table(m, l)[(l->head + i) & (l->cap - 1)];
}

/* Copies the item slots, in order and without slot `skip` (len or more:
 * none), to dst. */
static void copy_items(fp_manager *m, fp_list *l, uint64_t *dst,
                       uint64_t skip) {
  for (uint64_t i = 0, k = 0; i < l->len; i++)
    if (i != skip)
      dst[k++] = *slot_of(m, l, i);
}

static value *item(fp_manager *m, fp_list *l, uint64_t i) {
  return fp__shm_ptr(m, fp__shm_cref_off(*slot_of(m, l, i)));
}

int fp_list_new(fp_manager *m, fp_list **out) {
  void *o;
  int rc;

  if (out != NULL)
    *out = NULL;
  if ((rc = fp__shm_check_new(m, out)) != 0)
    return rc;
  rc = fp__shm_obj_new(m, FP__SHM_LIST, sizeof(fp_list), NULL, NULL, &o);
  if (rc == 0)
    *out = o;
  return rc;
}

/* Checks the list and pins the caller's heap (fp__shm_obj_pin). */
static int enter(fp_list *l, fp__shm_heap **h) {
  int rc = fp__shm_obj_check(l, FP__SHM_LIST);
  return rc != 0 ? rc : fp__shm_obj_pin(l, FP__SHM_LIST, h);
}

/* Ends the call; the list may be freed from then on, so its manager is
 * read first. */
static void leave(fp_list *l, fp__shm_heap *h) {
  fp__shm_call_end(mgr(l), h);
}

/* Locks the list; FP_EINVAL (nothing locked) when a destroy of the list
 * began, which marks the list before taking its lock. */
static int lock_list(fp_list *l, fp__shm_heap *h) {
  fp__shm_lock(mgr(l), h, &l->mu, FP__SHM_POLL_LATE);
  if (!fp__shm_obj_alive(&l->hdr)) {
    fp__shm_unlock(&l->mu);
    return fp__shm_refuse(FP_EINVAL, "the list was destroyed");
  }
  return 0;
}

/* Commits the open journal and unlocks; retiring needs no lock. */
static void commit_unlock(fp_list *l, fp__shm_heap *h) {
  fp__shm_jmark(h);
  fp__shm_unlock(&l->mu);
  fp__shm_jfinish(mgr(l), h);
}

/* The list's length is what fp_list_len reads without the lock: an
 * update that changes it stores it last, as its publication (journal.c). */
static void publish_len(fp_manager *m, fp__shm_heap *h, fp_list *l,
                        uint64_t len) {
  uint64_t *const words[] = {(uint64_t *)&l->len};
  fp__shm_jpublish(m, h, words, &len, 1);
}

/* Resolves a Python-style index against len; FP_ERANGE when outside. */
static int resolve(fp_list *l, int64_t index, uint64_t *i) {
  int64_t n = (int64_t)l->len;
  if (index < 0)
    index += n;
  if (index < 0 || index >= n)
    return FP_ERANGE;
  *i = (uint64_t)index;
  return 0;
}

/* Builds an item chunk for (val, vlen) in the journal's alloc slot 0. */
static int make_value(fp_manager *m, fp__shm_heap *h, const void *val,
                      size_t vlen) {
  value *v;
  int rc;

  if ((rc = fp__shm_alloc(m, h, &h->j.alloc[0], VAL_HDR + vlen)) != 0)
    return rc;
  v = fp__shm_ptr(m, h->j.alloc[0]);
  v->vlen = vlen;
  memcpy(v->data, val, vlen);
  return 0;
}

/* Grows a full table (journal open, lock held): its items, in order from
 * slot 0, in a table twice as big in alloc slot 1, published with the
 * items, cap and head words. */
static int grow(fp_manager *m, fp__shm_heap *h, fp_list *l) {
  uint64_t ncap = l->cap == 0 ? 8 : l->cap * 2;
  int rc;

  if ((rc = fp__shm_alloc(m, h, &h->j.alloc[1], TBL_HDR + ncap * 8)) != 0)
    return rc;
  copy_items(m, l, (uint64_t *)fp__shm_ptr(m, h->j.alloc[1]) + 2, l->len);
  if (l->cap)
    h->j.release[1] = l->items;
  fp__shm_jset(m, h, (uint64_t *)&l->items, h->j.alloc[1]);
  fp__shm_jset(m, h, (uint64_t *)&l->cap, ncap);
  if (l->head != 0)
    fp__shm_jset(m, h, &l->head, 0);
  return 0;
}

/* Appends the chunk in alloc slot 0 (journal open, lock held). */
static int append_locked(fp_manager *m, fp__shm_heap *h, fp_list *l) {
  int rc;

  if (l->len == l->cap && (rc = grow(m, h, l)) != 0)
    return rc;
  *slot_of(m, l, l->len) = fp__shm_cref(h->j.alloc[0]); /* past len */
  publish_len(m, h, l, l->len + 1);
  return 0;
}

int fp_list_append(fp_list *l, const void *val, size_t vlen) {
  fp__shm_heap *h;
  fp_manager *m;
  int rc;

  if ((rc = fp__shm_obj_check(l, FP__SHM_LIST)) != 0 ||
      (rc = fp__shm_check_arg(val, vlen)) != 0 || (rc = enter(l, &h)) != 0)
    return rc;
  m = mgr(l);
  fp__shm_jbegin(h);
  if ((rc = make_value(m, h, val, vlen)) != 0 || (rc = lock_list(l, h)) != 0) {
    fp__shm_jabort(m, h);
  } else if ((rc = append_locked(m, h, l)) != 0) {
    fp__shm_jabort(m, h);
    fp__shm_unlock(&l->mu);
  } else {
    commit_unlock(l, h);
  }
  leave(l, h);
  return rc;
}

/* Appends every value of data under one lock hold (lock held). */
static int extend_locked(fp_manager *m, fp__shm_heap *h, fp_list *l,
                         const void *data, size_t len) {
  fp_reader r;
  int rc = 0;

  fp_reader_init(&r, data, len);
  while (rc == 0 && !fp_reader_at_end(&r)) {
    const void *v;
    size_t n;
    if ((rc = fp_read_span(&r, &v, &n)) != 0)
      break;
    fp__shm_jbegin(h);
    if ((rc = make_value(m, h, v, n)) != 0 ||
        (rc = append_locked(m, h, l)) != 0)
      fp__shm_jabort(m, h);
    else
      fp__shm_jcommit(m, h);
  }
  return rc;
}

int fp_list_extend(fp_list *l, const void *data, size_t len) {
  fp__shm_heap *h;
  int rc;

  if ((rc = fp__shm_obj_check(l, FP__SHM_LIST)) != 0)
    return rc;
  if (data == NULL && len != 0)
    return fp__shm_refuse(FP_EINVAL, "NULL data with len %zu", len);
  if (len != 0 && fp_values_count(data, len, NULL) != 0)
    return fp__shm_refuse(FP_EPROTO, "the data are not well-formed encoded "
                                     "values");
  if ((rc = enter(l, &h)) != 0)
    return rc;
  if ((rc = lock_list(l, h)) == 0) {
    rc = extend_locked(mgr(l), h, l, data, len);
    fp__shm_unlock(&l->mu);
  }
  leave(l, h);
  return rc;
}

int fp_list_get(fp_list *l, int64_t index, fp_writer *out) {
  fp__shm_heap *h;
  uint64_t i;
  int rc;

  if (out == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL out pointer");
  if ((rc = enter(l, &h)) != 0)
    return rc;
  if ((rc = lock_list(l, h)) == 0) {
    if ((rc = resolve(l, index, &i)) == 0) {
      value *v = item(mgr(l), l, i);
      rc = fp__shm_write_out(out, v->data, v->vlen);
    }
    fp__shm_unlock(&l->mu);
  }
  leave(l, h);
  return rc;
}

int fp_list_set(fp_list *l, int64_t index, const void *val, size_t vlen) {
  fp__shm_heap *h;
  fp_manager *m;
  uint64_t i;
  int rc;

  if ((rc = fp__shm_obj_check(l, FP__SHM_LIST)) != 0 ||
      (rc = fp__shm_check_arg(val, vlen)) != 0 || (rc = enter(l, &h)) != 0)
    return rc;
  m = mgr(l);
  fp__shm_jbegin(h);
  if ((rc = make_value(m, h, val, vlen)) != 0 || (rc = lock_list(l, h)) != 0) {
    fp__shm_jabort(m, h);
  } else if ((rc = resolve(l, index, &i)) != 0) {
    fp__shm_jabort(m, h);
    fp__shm_unlock(&l->mu);
  } else {
    uint64_t *slot = slot_of(m, l, i);
    h->j.release[0] = fp__shm_cref_off(*slot);
    fp__shm_jset(m, h, slot, fp__shm_cref(h->j.alloc[0]));
    commit_unlock(l, h);
  }
  leave(l, h);
  return rc;
}

/* Pops item i (lock held, journal not begun); unlocks. */
static int pop_locked(fp_manager *m, fp__shm_heap *h, fp_list *l, uint64_t i,
                      fp_writer *out) {
  value *v = item(m, l, i);
  int middle = i != 0 && i + 1 < l->len, rc;

  fp__shm_jbegin(h);
  h->j.release[0] = fp__shm_cref_off(*slot_of(m, l, i));
  /* Neither the first nor the last item: a copy of the table without its
   * slot. Allocated before the value is written out, so that a full
   * arena fails the call with nothing popped and nothing written. */
  if (middle &&
      (rc = fp__shm_alloc(m, h, &h->j.alloc[1], TBL_HDR + l->cap * 8)) != 0)
    goto fail;
  if (out != NULL && (rc = fp__shm_write_out(out, v->data, v->vlen)) != 0)
    goto fail;
  if (middle) {
    copy_items(m, l, (uint64_t *)fp__shm_ptr(m, h->j.alloc[1]) + 2, i);
    h->j.release[1] = l->items;
    fp__shm_jset(m, h, (uint64_t *)&l->items, h->j.alloc[1]);
    if (l->head != 0)
      fp__shm_jset(m, h, &l->head, 0);
  } else if (i == 0 && l->len > 1) {
    fp__shm_jset(m, h, &l->head, (l->head + 1) & (l->cap - 1));
  }
  publish_len(m, h, l, l->len - 1);
  commit_unlock(l, h);
  return 0;

fail: /* the write, if it failed, wrote nothing (writers are sticky) */
  fp__shm_jabort(m, h);
  fp__shm_unlock(&l->mu);
  return rc;
}

int fp_list_pop(fp_list *l, int64_t index, fp_writer *out) {
  fp__shm_heap *h;
  uint64_t i;
  int rc;

  if ((rc = enter(l, &h)) != 0)
    return rc;
  if ((rc = lock_list(l, h)) == 0) {
    if ((rc = resolve(l, index, &i)) != 0)
      fp__shm_unlock(&l->mu);
    else
      rc = pop_locked(mgr(l), h, l, i, out);
  }
  leave(l, h);
  return rc;
}

int64_t fp_list_len(fp_list *l) {
  int rc = fp__shm_obj_check(l, FP__SHM_LIST);
  return rc != 0 ? rc : (int64_t)atomic_load(&l->len);
}

/* Empties a locked list with one journaled step and unlocks it: the table
 * is detached, then its items [0, len) and the table are retired. */
static void clear_locked(fp_list *l, fp__shm_heap *h) {
  fp_manager *m = mgr(l);

  if (l->cap == 0) {
    fp__shm_unlock(&l->mu);
    return;
  }
  fp__shm_jbegin(h);
  h->j.release[0] = l->items;
  h->j.deep_from = l->head; /* only the item slots are live */
  h->j.deep_ring = l->cap;
  h->j.deep_n = l->len;
  fp__shm_jset(m, h, (uint64_t *)&l->items, 0);
  fp__shm_jset(m, h, (uint64_t *)&l->cap, 0);
  if (l->head != 0)
    fp__shm_jset(m, h, &l->head, 0);
  publish_len(m, h, l, 0);
  commit_unlock(l, h);
}

int fp_list_clear(fp_list *l) {
  fp__shm_heap *h;
  int rc = enter(l, &h);

  if (rc != 0)
    return rc;
  if ((rc = lock_list(l, h)) == 0)
    clear_locked(l, h);
  leave(l, h);
  return rc;
}

/* Marks the list dying before taking its lock, so that an append that
 * gets the lock after the clear changes nothing (see lock_list). */
int fp_list_destroy(fp_list *l) {
  fp__shm_heap *h;
  fp_manager *m;
  uint64_t gen;
  int rc = fp__shm_obj_begin_clearing_destroy(l, FP__SHM_LIST, &m, &h, &gen);

  if (rc != 0)
    return rc;
  fp__shm_lock(m, h, &l->mu, FP__SHM_POLL_LATE);
  clear_locked(l, h);
  leave(l, h);
  return fp__shm_obj_free(m, &l->hdr, gen);
}

/* Writes the items of a locked list into out as one list value. On
 * failure out's bytes, depth and count are as they were (as fp_pack
 * leaves them), its sticky error set, and the message says why. */
static int snapshot_locked(fp_manager *m, fp_list *l, fp_writer *out) {
  size_t len0 = out->len;
  int depth0 = out->depth, err0 = out->err;
  uint32_t count0 = depth0 > 0 ? out->counts[depth0 - 1] : 0;
  int rc = fp_write_list_begin(out);

  for (uint64_t i = 0; rc == 0 && i < l->len; i++) {
    value *v = item(m, l, i);
    rc = fp_write_raw(out, v->data, v->vlen);
  }
  if (rc == 0)
    rc = fp_write_list_end(out);
  if (rc == 0)
    return 0;
  out->len = len0;
  out->depth = depth0;
  if (depth0 > 0)
    out->counts[depth0 - 1] = count0;
  return fp__shm_out_refused(rc, err0);
}

int fp_list_snapshot(fp_list *l, fp_writer *out) {
  fp__shm_heap *h;
  int rc;

  if (out == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL out pointer");
  if ((rc = enter(l, &h)) != 0)
    return rc;
  if ((rc = lock_list(l, h)) == 0) {
    rc = snapshot_locked(mgr(l), l, out);
    fp__shm_unlock(&l->mu);
  }
  leave(l, h);
  return rc;
}

uint64_t fp_list_ref(const fp_list *l) {
  if (fp__shm_obj_check(l, FP__SHM_LIST) != 0)
    return 0;
  return fp__shm_obj_ref(&l->hdr);
}

int fp_list_from_ref(fp_manager *m, uint64_t ref, fp_list **out) {
  int err;
  if (out == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL out pointer");
  *out = fp__shm_obj_from_ref(m, ref, FP__SHM_LIST, &err);
  return err;
}

/* --- checker hooks ------------------------------------------------------ */

void fp__shm_list_settle(fp__shm_obj *o) {
  fp_list *l = (fp_list *)o;
  fp__shm_heap *h = fp__shm_heap_get(mgr(l));

  if (h != NULL) {
    fp__shm_lock(mgr(l), h, &l->mu, FP__SHM_POLL_LATE);
    fp__shm_unlock(&l->mu);
  }
}

int fp__shm_list_check(fp__shm_checker *c, fp__shm_obj *o) {
  fp_list *l = (fp_list *)o;
  fp_manager *m = c->m;
  int rc;

  if (o->size != sizeof(fp_list))
    return fp__shm_fail(c, "list: object size %llu",
                        (unsigned long long)o->size);
  if (l->mu != 0 || l->len > l->cap || (l->cap & (l->cap - 1)) != 0 ||
      (l->cap == 0 ? l->head != 0 : l->head >= l->cap) ||
      (l->cap == 0) != (l->items == 0))
    return fp__shm_fail(c,
                        "list: lock %u head %llu len %llu cap %llu items %llu",
                        (unsigned)l->mu, (unsigned long long)l->head,
                        (unsigned long long)l->len, (unsigned long long)l->cap,
                        (unsigned long long)l->items);
  if (l->cap == 0)
    return 0;
  if ((rc = fp__shm_claim(c, l->items, "list table")) != 0)
    return rc;
  if (TBL_HDR + l->cap * 8 > fp__shm_chunk_bytes(m, l->items))
    return fp__shm_fail(c, "list: table smaller than cap");
  for (uint64_t i = 0; i < l->len; i++) {
    uint64_t off = fp__shm_cref_off(*slot_of(m, l, i));
    if ((rc = fp__shm_claim(c, off, "list item")) != 0)
      return rc;
    value *v = fp__shm_ptr(m, off);
    if (VAL_HDR + v->vlen > fp__shm_chunk_bytes(m, off) ||
        fp__shm_check_value(v->data, v->vlen) != 0)
      return fp__shm_fail(c, "list: item %llu bad", (unsigned long long)i);
  }
  return 0;
}
