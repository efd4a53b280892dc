/* list.c - the manager's shared list of codec values.
 *
 * A list is one arena object with one robust process-shared mutex, a
 * journal, and a table of item offsets:
 *   list.items -> u64[cap]; items[0..len) each point at a value chunk
 *   value chunk: u64 size | u64 vlen | the encoded value
 *
 * Invariants while the lock is free: len <= cap; cap is 0 (items 0) or the
 * table's size; every items[i], i < len, is a distinct live value chunk
 * holding exactly one encoded value; slots at and past len are garbage;
 * the journal is idle.
 *
 * Mutations follow the journal protocol of arena.h. append fills the
 * new value chunk and the slot at items[len] while they are unreachable,
 * then publishes both by one logged store of len (growing the table first,
 * if needed, by building a bigger copy and publishing items/cap). set
 * publishes a new chunk with one logged store into items[i]. pop of the
 * last item is one logged store of len; pop of any other index builds a
 * copy of the table without that slot (a shift in place could not be
 * undone from a small log). clear detaches the table and releases it deep.
 */
#include "ipc/shm/check.h"

#include <stdlib.h>
#include <string.h>

#define VAL_HDR 16

struct fp_list {
  fp__shm_obj hdr;
  pthread_mutex_t mu;
  uint64_t items;
  uint64_t len;
  uint64_t cap;
  fp__shm_journal j;
};

typedef struct value {
  uint64_t size; /* VAL_HDR + vlen */
  uint64_t vlen;
  unsigned char data[];
} value;

static fp_manager *mgr(fp_list *l) {
  return fp__shm_of(&l->hdr);
}

static uint64_t *table(fp_manager *m, fp_list *l) {
  return fp__shm_ptr(m, l->items);
}

static value *value_at(fp_manager *m, uint64_t off) {
  return fp__shm_ptr(m, off);
}

static int init_list(void *obj, void *arg) {
  return fp__shm_mutex_init(&((fp_list *)obj)->mu, PTHREAD_MUTEX_NORMAL);
}

int fp_list_new(fp_manager *m, fp_list **out) {
  void *o;
  int rc;

  if (out != NULL)
    *out = NULL;
  if (m == NULL || out == NULL || m->magic != FP__SHM_MAGIC)
    return FP_EINVAL;
  rc = fp__shm_obj_new(m, FP__SHM_LIST, sizeof(fp_list), init_list, NULL, &o);
  if (rc == 0)
    *out = o;
  return rc;
}

/* Locks a checked list. */
static int lock_list(fp_list *l) {
  int rc = fp__shm_obj_check(l, FP__SHM_LIST);
  if (rc != 0)
    return rc;
  return fp__shm_lock(mgr(l), &l->mu, &l->j);
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

/* Builds a value chunk for (val, vlen) in the journal's alloc slot 0. */
static int make_value(fp_manager *m, fp_list *l, const void *val, size_t vlen) {
  uint64_t size = VAL_HDR + vlen;
  value *v;
  int rc;

  l->j.alloc_size[0] = size; /* before the slot: see arena.h */
  if ((rc = fp__shm_alloc_slot(m, &l->j.alloc[0], size)) != 0)
    return rc;
  v = value_at(m, l->j.alloc[0]);
  v->size = size;
  v->vlen = vlen;
  memcpy(v->data, val, vlen);
  return 0;
}

/* Appends one validated value; the lock is held. One journaled step. */
static int append_locked(fp_manager *m, fp_list *l, const void *val,
                         size_t vlen) {
  int rc;

  fp__shm_jbegin(&l->j);
  if ((rc = make_value(m, l, val, vlen)) != 0)
    goto fail;
  if (l->len == l->cap) {
    uint64_t ncap = l->cap ? l->cap * 2 : 8;
    l->j.alloc_size[1] = ncap * 8;
    if ((rc = fp__shm_alloc_slot(m, &l->j.alloc[1], ncap * 8)) != 0)
      goto fail;
    if (l->len)
      memcpy(fp__shm_ptr(m, l->j.alloc[1]), table(m, l), l->len * 8);
    if (l->cap) {
      l->j.release[0] = l->items;
      l->j.release_size[0] = l->cap * 8;
    }
    fp__shm_jset(m, &l->j, &l->items, l->j.alloc[1]);
    fp__shm_jset(m, &l->j, &l->cap, ncap);
  }
  table(m, l)[l->len] = l->j.alloc[0]; /* past len: unreachable */
  fp__shm_jset(m, &l->j, &l->len, l->len + 1);
  fp__shm_jcommit(m, &l->j);
  return 0;
fail:
  fp__shm_jabort(m, &l->j);
  return rc;
}

int fp_list_append(fp_list *l, const void *val, size_t vlen) {
  int rc;

  if ((rc = fp__shm_obj_check(l, FP__SHM_LIST)) != 0)
    return rc;
  if ((rc = fp__shm_check_value(val, vlen)) != 0)
    return rc;
  if ((rc = lock_list(l)) != 0)
    return rc;
  rc = append_locked(mgr(l), l, val, vlen);
  fp__shm_unlock(&l->mu);
  return rc;
}

int fp_list_extend(fp_list *l, const void *data, size_t len) {
  fp_reader r;
  int rc;

  if ((rc = fp__shm_obj_check(l, FP__SHM_LIST)) != 0)
    return rc;
  if (data == NULL && len != 0)
    return FP_EINVAL;
  if (len != 0 && fp_values_count(data, len, NULL) != 0)
    return FP_EPROTO;
  if ((rc = lock_list(l)) != 0)
    return rc;
  fp_reader_init(&r, data, len);
  while (rc == 0 && !fp_reader_at_end(&r)) {
    const void *v;
    size_t n;
    if ((rc = fp_read_span(&r, &v, &n)) == 0)
      rc = append_locked(mgr(l), l, v, n);
  }
  fp__shm_unlock(&l->mu);
  return rc;
}

int fp_list_get(fp_list *l, int64_t index, fp_writer *out) {
  uint64_t i;
  int rc;

  if (out == NULL)
    return FP_EINVAL;
  if ((rc = lock_list(l)) != 0)
    return rc;
  if ((rc = resolve(l, index, &i)) == 0) {
    value *v = value_at(mgr(l), table(mgr(l), l)[i]);
    rc = fp_write_raw(out, v->data, v->vlen);
  }
  fp__shm_unlock(&l->mu);
  return rc;
}

int fp_list_set(fp_list *l, int64_t index, const void *val, size_t vlen) {
  fp_manager *m;
  uint64_t i, *slot;
  int rc;

  if ((rc = fp__shm_obj_check(l, FP__SHM_LIST)) != 0)
    return rc;
  if ((rc = fp__shm_check_value(val, vlen)) != 0)
    return rc;
  if ((rc = lock_list(l)) != 0)
    return rc;
  m = mgr(l);
  if ((rc = resolve(l, index, &i)) == 0) {
    fp__shm_jbegin(&l->j);
    if ((rc = make_value(m, l, val, vlen)) != 0) {
      fp__shm_jabort(m, &l->j);
    } else {
      slot = &table(m, l)[i];
      l->j.release[0] = *slot;
      l->j.release_size[0] = value_at(m, *slot)->size;
      fp__shm_jset(m, &l->j, slot, l->j.alloc[0]);
      fp__shm_jcommit(m, &l->j);
    }
  }
  fp__shm_unlock(&l->mu);
  return rc;
}

int fp_list_pop(fp_list *l, int64_t index, fp_writer *out) {
  fp_manager *m;
  uint64_t i, *b;
  value *v;
  int rc;

  if ((rc = lock_list(l)) != 0)
    return rc;
  m = mgr(l);
  if ((rc = resolve(l, index, &i)) != 0)
    goto done;
  b = table(m, l);
  v = value_at(m, b[i]);
  if (out != NULL && (rc = fp_write_raw(out, v->data, v->vlen)) != 0)
    goto done;
  fp__shm_jbegin(&l->j);
  l->j.release[0] = b[i];
  l->j.release_size[0] = v->size;
  if (i + 1 < l->len) {
    /* Not the last item: publish a copy of the table without slot i. */
    l->j.alloc_size[1] = l->cap * 8;
    if ((rc = fp__shm_alloc_slot(m, &l->j.alloc[1], l->cap * 8)) != 0) {
      fp__shm_jabort(m, &l->j);
      goto done;
    }
    uint64_t *nb = fp__shm_ptr(m, l->j.alloc[1]);
    memcpy(nb, b, i * 8);
    memcpy(nb + i, b + i + 1, (l->len - i - 1) * 8);
    l->j.release[1] = l->items;
    l->j.release_size[1] = l->cap * 8;
    fp__shm_jset(m, &l->j, &l->items, l->j.alloc[1]);
  }
  fp__shm_jset(m, &l->j, &l->len, l->len - 1);
  fp__shm_jcommit(m, &l->j);
done:
  fp__shm_unlock(&l->mu);
  return rc;
}

int64_t fp_list_len(fp_list *l) {
  int64_t n;
  int rc;

  if ((rc = lock_list(l)) != 0)
    return rc;
  n = (int64_t)l->len;
  fp__shm_unlock(&l->mu);
  return n;
}

int fp_list_clear(fp_list *l) {
  fp_manager *m;
  int rc;

  if ((rc = lock_list(l)) != 0)
    return rc;
  m = mgr(l);
  if (l->cap != 0) {
    fp__shm_jbegin(&l->j);
    l->j.release[0] = l->items;
    l->j.release_size[0] = l->cap * 8;
    l->j.deep_n = l->len; /* only items[0..len) are live chunks */
    fp__shm_jset(m, &l->j, &l->items, 0);
    fp__shm_jset(m, &l->j, &l->cap, 0);
    fp__shm_jset(m, &l->j, &l->len, 0);
    fp__shm_jcommit(m, &l->j);
  }
  fp__shm_unlock(&l->mu);
  return 0;
}

int fp_list_destroy(fp_list *l) {
  int rc = fp_list_clear(l);
  if (rc == 0)
    rc = fp__shm_obj_free(mgr(l), &l->hdr);
  return rc;
}

int fp_list_snapshot(fp_list *l, fp_writer *out) {
  fp_manager *m;
  int rc;

  if (out == NULL)
    return FP_EINVAL;
  if ((rc = lock_list(l)) != 0)
    return rc;
  m = mgr(l);
  rc = fp_write_list_begin(out);
  for (uint64_t i = 0; rc == 0 && i < l->len; i++) {
    value *v = value_at(m, table(m, l)[i]);
    rc = fp_write_raw(out, v->data, v->vlen);
  }
  if (rc == 0)
    rc = fp_write_list_end(out);
  fp__shm_unlock(&l->mu);
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
    return FP_EINVAL;
  *out = fp__shm_obj_from_ref(m, ref, FP__SHM_LIST, &err);
  return err;
}

/* --- checker hooks ------------------------------------------------------ */

int fp__shm_list_settle(fp__shm_obj *o) {
  fp_list *l = (fp_list *)o;
  int rc = fp__shm_lock(mgr(l), &l->mu, &l->j);
  if (rc == 0)
    fp__shm_unlock(&l->mu);
  return rc;
}

int fp__shm_list_check(fp__shm_checker *c, fp__shm_obj *o) {
  fp_list *l = (fp_list *)o;
  fp_manager *m = c->m;
  uint64_t *b;
  int rc;

  if (o->size != sizeof(fp_list))
    return fp__shm_fail(c, "list: object size %llu",
                        (unsigned long long)o->size);
  if ((rc = fp__shm_check_journal(c, &l->j)) != 0)
    return rc;
  if (l->len > l->cap || (l->cap == 0) != (l->items == 0))
    return fp__shm_fail(c, "list: len %llu cap %llu items %llu",
                        (unsigned long long)l->len, (unsigned long long)l->cap,
                        (unsigned long long)l->items);
  if (l->cap == 0)
    return 0;
  if ((rc = fp__shm_claim(c, l->items, l->cap * 8, "list table")) != 0)
    return rc;
  b = table(m, l);
  for (uint64_t i = 0; i < l->len; i++) {
    if (b[i] < m->heap || b[i] + VAL_HDR > m->brk)
      return fp__shm_fail(c, "list: item %llu offset %llu",
                          (unsigned long long)i, (unsigned long long)b[i]);
    value *v = value_at(m, b[i]);
    if (v->size != VAL_HDR + v->vlen)
      return fp__shm_fail(c, "list: item %llu size mismatch",
                          (unsigned long long)i);
    if ((rc = fp__shm_claim(c, b[i], v->size, "list value")) != 0)
      return rc;
    if (fp__shm_check_value(v->data, v->vlen) != 0)
      return fp__shm_fail(c, "list: item %llu bad encoding",
                          (unsigned long long)i);
  }
  return 0;
}
