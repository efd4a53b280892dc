/* dict.c - the manager's shared dict: byte-string keys -> codec values.
 *
 * A dict is one arena object holding 32 stripes. A key's 64-bit hash picks
 * its stripe (top 5 bits) and its home bucket inside the stripe (low bits).
 * Each stripe is an independent open-addressing hash table with linear
 * probing, guarded by its own robust process-shared mutex and journal, so
 * processes working on keys of different stripes do not contend.
 *
 * Layout (offsets from the arena base):
 *   stripe.buckets -> u64[cap]: 0 = empty, 1 = tombstone, else
 *                     tag << 40 | node offset (tag: 24 bits of the hash,
 *                     so a probe rejects most other keys without touching
 *                     their node)
 *   node: u64 size | u64 hash | u32 klen | u32 vlen | key | value
 * The value is stored encoded (one codec value), so a get is a copy.
 *
 * Invariants of a stripe while its lock is free: cap is 0 or a power of two;
 * count live nodes and tombs tombstones are in the table; count + tombs <
 * cap (some bucket is empty, so every probe ends); every node is reachable
 * from exactly one bucket, sits in the probe sequence of its hash, and no
 * two nodes hold equal keys; the journal is idle.
 *
 * Every mutation follows the journal protocol of arena.h: new nodes
 * and new bucket tables are allocated into the journal's alloc slots and
 * filled while unreachable; then the few reachable words (a bucket, count,
 * tombs, buckets/cap) are changed through the undo log; the replaced node
 * or table goes into a release slot, freed after the commit. A process
 * killed anywhere in between is rolled back or forward by the next locker,
 * so a reader never sees a half-written node or a half-built table. Small
 * same-size values (ints, short strings) are overwritten in place through
 * the undo log instead of allocating a node, which keeps fp_dict_add_int
 * allocation-free.
 */
#include "ipc/shm/check.h"

#include <stdlib.h>
#include <string.h>

#define NSTRIPE 32
#define STRIPE_SHIFT 59 /* 64 - log2(NSTRIPE) */
#define NODE_HDR 24
#define INPLACE_MAX 40 /* values up to this size are updated in place */
#define TOMB 1
#define OFF_MASK (FP__SHM_MAX_SIZE - 1)
#define BOFF(b) ((b)&OFF_MASK)
#define TAG(h) (((h) >> 16) & 0xffffff)
#define BUCKET(h, off) (TAG(h) << 40 | (off))

typedef struct stripe {
  pthread_mutex_t mu;
  uint64_t buckets; /* offset of u64[cap], 0 when cap is 0 */
  uint64_t cap;
  uint64_t count;
  uint64_t tombs;
  fp__shm_journal j;
} __attribute__((aligned(64))) stripe;

struct fp_dict {
  fp__shm_obj hdr;
  stripe s[NSTRIPE];
};

typedef struct node {
  uint64_t size; /* bytes requested for this chunk: NODE_HDR + klen + vlen */
  uint64_t hash;
  uint32_t klen;
  uint32_t vlen;
  unsigned char data[]; /* key, then value */
} node;

/* 64-bit hash of a byte string: 8 bytes at a time through a multiply-xor
 * mix, finished with murmur3's fmix64 so every input bit reaches the top
 * bits that pick the stripe. */
static uint64_t hash_key(const void *key, size_t n) {
  const unsigned char *p = key;
  uint64_t h = 0x9e3779b97f4a7c15ULL ^ (n * 0xff51afd7ed558ccdULL), v;

  while (n >= 8) {
    memcpy(&v, p, 8);
    h = (h ^ (v * 0xc4ceb9fe1a85ec53ULL)) * 0x100000001b3ULL;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  v = 0;
  memcpy(&v, p, n);
  h = (h ^ (v * 0xc4ceb9fe1a85ec53ULL)) * 0x100000001b3ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

static fp_manager *mgr(fp_dict *d) {
  return fp__shm_of(&d->hdr);
}

static uint64_t *table(fp_manager *m, stripe *s) {
  return fp__shm_ptr(m, s->buckets);
}

static node *node_at(fp_manager *m, uint64_t off) {
  return fp__shm_ptr(m, off);
}

static unsigned char *node_value(node *n) {
  return n->data + n->klen;
}

/* Looks key up in a stripe. Returns the bucket index holding it, or -1.
 * When ins is not NULL it receives the bucket where the key would be
 * inserted (the first tombstone or empty bucket of the probe sequence). */
static int64_t lookup(fp_manager *m, stripe *s, const void *key, size_t klen,
                      uint64_t h, uint64_t *ins) {
  uint64_t mask, i, *b, first = UINT64_MAX;

  if (s->cap == 0) {
    if (ins != NULL)
      *ins = UINT64_MAX;
    return -1;
  }
  mask = s->cap - 1;
  b = table(m, s);
  /* At most cap probes: the invariant guarantees an empty bucket. */
  for (uint64_t n = 0, i0 = h & mask; n < s->cap; n++) {
    i = (i0 + n) & mask;
    if (b[i] == 0) {
      if (first == UINT64_MAX)
        first = i;
      break;
    }
    if (b[i] == TOMB) {
      if (first == UINT64_MAX)
        first = i;
      continue;
    }
    if ((b[i] >> 40) != TAG(h))
      continue;
    node *nd = node_at(m, BOFF(b[i]));
    if (nd->hash == h && nd->klen == klen &&
        (klen == 0 || memcmp(nd->data, key, klen) == 0))
      return (int64_t)i;
  }
  if (ins != NULL)
    *ins = first;
  return -1;
}

/* Common argument checks; finds the key's stripe. */
static int prepare(fp_dict *d, const void *key, size_t klen, stripe **s,
                   uint64_t *h) {
  int rc = fp__shm_obj_check(d, FP__SHM_DICT);
  if (rc != 0)
    return rc;
  if (key == NULL && klen != 0)
    return FP_EINVAL;
  if (klen > FP_DICT_KEY_MAX)
    return FP_EMSGSIZE;
  *h = hash_key(key, klen);
  *s = &d->s[*h >> STRIPE_SHIFT];
  return 0;
}

static int init_dict(void *obj, void *arg) {
  fp_dict *d = obj;
  int rc;

  for (int i = 0; i < NSTRIPE; i++)
    if ((rc = fp__shm_mutex_init(&d->s[i].mu, PTHREAD_MUTEX_NORMAL)) != 0)
      return rc;
  return 0;
}

int fp_dict_new(fp_manager *m, fp_dict **out) {
  void *o;
  int rc;

  if (out != NULL)
    *out = NULL;
  if (m == NULL || out == NULL || m->magic != FP__SHM_MAGIC)
    return FP_EINVAL;
  rc = fp__shm_obj_new(m, FP__SHM_DICT, sizeof(fp_dict), init_dict, NULL, &o);
  if (rc == 0)
    *out = o;
  return rc;
}

/* Makes room for one more key in a stripe: when the table would pass 70%
 * full (live + tombstones), builds a new table sized for twice the live
 * keys in the journal's alloc slot 1, rehashes into it (unreachable, so
 * unlogged) and publishes it; the old table goes to release slot 1. Called
 * inside an open journal. Returns 0 or FP_ENOMEM / FP_EMSGSIZE. */
static int reserve_one(fp_manager *m, stripe *s) {
  uint64_t ncap = 8, *nb, *ob, mask;
  int rc;

  if ((s->count + s->tombs + 1) * 10 <= s->cap * 7)
    return 0;
  while (ncap < (s->count + 1) * 2)
    ncap *= 2;
  s->j.alloc_size[1] = ncap * 8; /* before the slot: see arena.h */
  if ((rc = fp__shm_alloc_slot(m, &s->j.alloc[1], ncap * 8)) != 0)
    return rc;
  nb = fp__shm_ptr(m, s->j.alloc[1]);
  memset(nb, 0, ncap * 8);
  mask = ncap - 1;
  ob = s->cap ? table(m, s) : NULL;
  for (uint64_t i = 0; i < s->cap; i++) {
    if (ob[i] <= TOMB)
      continue;
    uint64_t k = node_at(m, BOFF(ob[i]))->hash & mask;
    while (nb[k] != 0)
      k = (k + 1) & mask;
    nb[k] = ob[i];
  }
  if (s->cap != 0) {
    s->j.release[1] = s->buckets;
    s->j.release_size[1] = s->cap * 8;
  }
  fp__shm_jset(m, &s->j, &s->buckets, s->j.alloc[1]);
  fp__shm_jset(m, &s->j, &s->cap, ncap);
  fp__shm_jset(m, &s->j, &s->tombs, 0);
  return 0;
}

/* Builds a node for (key, value) in the journal's alloc slot 0. */
static int make_node(fp_manager *m, stripe *s, const void *key, size_t klen,
                     uint64_t h, const void *val, size_t vlen) {
  uint64_t size = NODE_HDR + klen + vlen;
  node *nd;
  int rc;

  s->j.alloc_size[0] = size; /* before the slot: see arena.h */
  if ((rc = fp__shm_alloc_slot(m, &s->j.alloc[0], size)) != 0)
    return rc;
  nd = node_at(m, s->j.alloc[0]);
  nd->size = size;
  nd->hash = h;
  nd->klen = (uint32_t)klen;
  nd->vlen = (uint32_t)vlen;
  if (klen)
    memcpy(nd->data, key, klen);
  memcpy(nd->data + klen, val, vlen);
  return 0;
}

/* Inserts a key known to be absent (journal open). */
static int insert_new(fp_manager *m, stripe *s, const void *key, size_t klen,
                      uint64_t h, const void *val, size_t vlen) {
  uint64_t ins;
  int rc;

  if ((rc = make_node(m, s, key, klen, h, val, vlen)) != 0)
    return rc;
  if ((rc = reserve_one(m, s)) != 0)
    return rc;
  lookup(m, s, key, klen, h, &ins);
  if (ins == UINT64_MAX)
    abort(); /* reserve_one guarantees a free bucket */
  if (table(m, s)[ins] == TOMB)
    fp__shm_jset(m, &s->j, &s->tombs, s->tombs - 1);
  fp__shm_jset(m, &s->j, &table(m, s)[ins], BUCKET(h, s->j.alloc[0]));
  fp__shm_jset(m, &s->j, &s->count, s->count + 1);
  return 0;
}

/* Replaces the value of the node in bucket i (journal open): in place when
 * the size is unchanged and small, else with a new node. */
static int replace_value(fp_manager *m, stripe *s, uint64_t i, const void *val,
                         size_t vlen) {
  uint64_t *b = table(m, s);
  node *old = node_at(m, BOFF(b[i]));
  int rc;

  if (old->vlen == vlen && vlen <= INPLACE_MAX) {
    fp__shm_jwrite(m, &s->j, node_value(old), val, vlen);
    return 0;
  }
  rc = make_node(m, s, old->data, old->klen, old->hash, val, vlen);
  if (rc != 0)
    return rc;
  s->j.release[0] = BOFF(b[i]);
  s->j.release_size[0] = old->size;
  fp__shm_jset(m, &s->j, &b[i], BUCKET(old->hash, s->j.alloc[0]));
  return 0;
}

enum { W_SET, W_IF_ABSENT, W_SETDEFAULT, W_ADD };

/* The one write path: set, set-if-absent, setdefault and add-int. Returns
 * 0 (stored), 1 (setdefault: key present), FP_EEXIST, FP_ETYPE or an
 * allocation / writer error; on error the dict is unchanged. */
static int dict_write(fp_dict *d, const void *key, size_t klen, const void *val,
                      size_t vlen, int mode, int64_t delta, int64_t *newv,
                      fp_writer *out) {
  unsigned char ibuf[9];
  fp_manager *m;
  stripe *s;
  uint64_t h;
  int64_t i;
  int rc;

  if ((rc = prepare(d, key, klen, &s, &h)) != 0)
    return rc;
  if (mode != W_ADD && (rc = fp__shm_check_value(val, vlen)) != 0)
    return rc;
  m = mgr(d);
  if ((rc = fp__shm_lock(m, &s->mu, &s->j)) != 0)
    return rc;
  i = lookup(m, s, key, klen, h, NULL);
  if (i >= 0) {
    node *nd = node_at(m, BOFF(table(m, s)[i]));
    unsigned char *v = node_value(nd);
    switch (mode) {
    case W_IF_ABSENT:
      rc = FP_EEXIST;
      break;
    case W_SETDEFAULT:
      rc = out != NULL ? fp_write_raw(out, v, nd->vlen) : 0;
      rc = rc != 0 ? rc : 1;
      break;
    case W_ADD:
      if (nd->vlen != 9 || v[0] != FP_INT) {
        rc = FP_ETYPE;
        break;
      }
      ibuf[0] = FP_INT;
      fp__shm_put_le64(
          ibuf + 1, (int64_t)((uint64_t)fp__shm_le64(v + 1) + (uint64_t)delta));
      if (newv != NULL)
        *newv = fp__shm_le64(ibuf + 1);
      fp__shm_jbegin(&s->j);
      fp__shm_jwrite(m, &s->j, v + 1, ibuf + 1, 8);
      fp__shm_jcommit(m, &s->j);
      break;
    default:
      fp__shm_jbegin(&s->j);
      rc = replace_value(m, s, (uint64_t)i, val, vlen);
      if (rc == 0)
        fp__shm_jcommit(m, &s->j);
      else
        fp__shm_jabort(m, &s->j);
    }
  } else {
    if (mode == W_ADD) {
      ibuf[0] = FP_INT;
      fp__shm_put_le64(ibuf + 1, delta);
      val = ibuf;
      vlen = 9;
      if (newv != NULL)
        *newv = delta;
    }
    fp__shm_jbegin(&s->j);
    rc = insert_new(m, s, key, klen, h, val, vlen);
    if (rc == 0)
      fp__shm_jcommit(m, &s->j);
    else
      fp__shm_jabort(m, &s->j);
    if (rc == 0 && mode == W_SETDEFAULT && out != NULL)
      rc = fp_write_raw(out, val, vlen);
  }
  fp__shm_unlock(&s->mu);
  return rc;
}

int fp_dict_set(fp_dict *d, const void *key, size_t klen, const void *value,
                size_t vlen) {
  return dict_write(d, key, klen, value, vlen, W_SET, 0, NULL, NULL);
}

int fp_dict_set_if_absent(fp_dict *d, const void *key, size_t klen,
                          const void *value, size_t vlen) {
  return dict_write(d, key, klen, value, vlen, W_IF_ABSENT, 0, NULL, NULL);
}

int fp_dict_setdefault(fp_dict *d, const void *key, size_t klen,
                       const void *value, size_t vlen, fp_writer *out) {
  return dict_write(d, key, klen, value, vlen, W_SETDEFAULT, 0, NULL, out);
}

int fp_dict_add_int(fp_dict *d, const void *key, size_t klen, int64_t delta,
                    int64_t *new_value) {
  return dict_write(d, key, klen, NULL, 0, W_ADD, delta, new_value, NULL);
}

/* Encodes a fixed-size scalar without a writer (no malloc). */
static int set_scalar(fp_dict *d, const void *key, size_t klen, int tag,
                      uint64_t bits) {
  unsigned char buf[9];
  buf[0] = (unsigned char)tag;
  fp__shm_put_le64(buf + 1, (int64_t)bits);
  return fp_dict_set(d, key, klen, buf, 9);
}

int fp_dict_set_int(fp_dict *d, const void *key, size_t klen, int64_t v) {
  return set_scalar(d, key, klen, FP_INT, (uint64_t)v);
}

int fp_dict_set_float(fp_dict *d, const void *key, size_t klen, double v) {
  uint64_t bits;
  memcpy(&bits, &v, 8);
  return set_scalar(d, key, klen, FP_FLOAT, bits);
}

/* Encodes with a temporary writer, then stores. */
static int set_encoded(fp_dict *d, const void *key, size_t klen, int is_str,
                       const void *p, size_t n) {
  fp_writer w;
  int rc;

  fp_writer_init(&w);
  rc = is_str ? fp_write_strn(&w, p, n) : fp_write_bytes(&w, p, n);
  if (rc == 0)
    rc = fp_dict_set(d, key, klen, w.data, w.len);
  fp_writer_free(&w);
  return rc;
}

int fp_dict_set_str(fp_dict *d, const void *key, size_t klen, const char *s) {
  if (s == NULL)
    return FP_EINVAL;
  return set_encoded(d, key, klen, 1, s, strlen(s));
}

int fp_dict_set_bytes(fp_dict *d, const void *key, size_t klen, const void *p,
                      size_t n) {
  if (p == NULL && n != 0)
    return FP_EINVAL;
  return set_encoded(d, key, klen, 0, p, n);
}

enum { R_GET, R_INT, R_FLOAT, R_CONTAINS, R_DELETE };

/* The read path (and delete, which reads first). */
static int dict_read(fp_dict *d, const void *key, size_t klen, int mode,
                     fp_writer *out, void *scalar) {
  fp_manager *m;
  stripe *s;
  uint64_t h;
  int64_t i;
  int rc;

  if ((rc = prepare(d, key, klen, &s, &h)) != 0)
    return rc;
  if (mode == R_GET && out == NULL)
    return FP_EINVAL;
  if ((mode == R_INT || mode == R_FLOAT) && scalar == NULL)
    return FP_EINVAL;
  m = mgr(d);
  if ((rc = fp__shm_lock(m, &s->mu, &s->j)) != 0)
    return rc;
  i = lookup(m, s, key, klen, h, NULL);
  if (i < 0) {
    fp__shm_unlock(&s->mu);
    return mode == R_CONTAINS ? 0 : FP_ENOENT;
  }
  uint64_t *b = table(m, s);
  node *nd = node_at(m, BOFF(b[i]));
  unsigned char *v = node_value(nd);
  switch (mode) {
  case R_GET:
    rc = fp_write_raw(out, v, nd->vlen);
    break;
  case R_INT:
  case R_FLOAT:
    if (nd->vlen != 9 || v[0] != (mode == R_INT ? FP_INT : FP_FLOAT)) {
      rc = FP_ETYPE;
    } else {
      int64_t x = fp__shm_le64(v + 1);
      memcpy(scalar, &x, 8);
    }
    break;
  case R_CONTAINS:
    rc = 1;
    break;
  case R_DELETE:
    if (out != NULL && (rc = fp_write_raw(out, v, nd->vlen)) != 0)
      break;
    fp__shm_jbegin(&s->j);
    s->j.release[0] = BOFF(b[i]);
    s->j.release_size[0] = nd->size;
    fp__shm_jset(m, &s->j, &b[i], TOMB);
    fp__shm_jset(m, &s->j, &s->count, s->count - 1);
    fp__shm_jset(m, &s->j, &s->tombs, s->tombs + 1);
    fp__shm_jcommit(m, &s->j);
    break;
  }
  fp__shm_unlock(&s->mu);
  return rc;
}

int fp_dict_get(fp_dict *d, const void *key, size_t klen, fp_writer *out) {
  return dict_read(d, key, klen, R_GET, out, NULL);
}

int fp_dict_get_int(fp_dict *d, const void *key, size_t klen, int64_t *v) {
  return dict_read(d, key, klen, R_INT, NULL, v);
}

int fp_dict_get_float(fp_dict *d, const void *key, size_t klen, double *v) {
  return dict_read(d, key, klen, R_FLOAT, NULL, v);
}

int fp_dict_contains(fp_dict *d, const void *key, size_t klen) {
  return dict_read(d, key, klen, R_CONTAINS, NULL, NULL);
}

int fp_dict_delete(fp_dict *d, const void *key, size_t klen, fp_writer *out) {
  return dict_read(d, key, klen, R_DELETE, out, NULL);
}

int64_t fp_dict_len(fp_dict *d) {
  int64_t n = 0;
  int rc = fp__shm_obj_check(d, FP__SHM_DICT);

  if (rc != 0)
    return rc;
  for (int i = 0; i < NSTRIPE; i++) {
    stripe *s = &d->s[i];
    if ((rc = fp__shm_lock(mgr(d), &s->mu, &s->j)) != 0)
      return rc;
    n += (int64_t)s->count;
    fp__shm_unlock(&s->mu);
  }
  return n;
}

/* Empties one stripe in one journaled step: detach the table, then free
 * every node it lists and the table itself (a deep release, which a
 * repairer finishes if we die). */
static int clear_stripe(fp_manager *m, stripe *s) {
  int rc = fp__shm_lock(m, &s->mu, &s->j);
  if (rc != 0)
    return rc;
  if (s->cap != 0) {
    fp__shm_jbegin(&s->j);
    s->j.release[0] = s->buckets;
    s->j.release_size[0] = s->cap * 8;
    s->j.deep_n = s->cap;
    fp__shm_jset(m, &s->j, &s->buckets, 0);
    fp__shm_jset(m, &s->j, &s->cap, 0);
    fp__shm_jset(m, &s->j, &s->count, 0);
    fp__shm_jset(m, &s->j, &s->tombs, 0);
    fp__shm_jcommit(m, &s->j);
  }
  fp__shm_unlock(&s->mu);
  return 0;
}

int fp_dict_clear(fp_dict *d) {
  int rc = fp__shm_obj_check(d, FP__SHM_DICT);
  for (int i = 0; rc == 0 && i < NSTRIPE; i++)
    rc = clear_stripe(mgr(d), &d->s[i]);
  return rc;
}

int fp_dict_destroy(fp_dict *d) {
  int rc = fp_dict_clear(d);
  if (rc == 0)
    rc = fp__shm_obj_free(mgr(d), &d->hdr);
  return rc;
}

/* Copies one stripe's items into a private buffer of records (u32 klen,
 * u32 vlen, key, value) under its lock. Returns 0 with *buf (malloc'd, may
 * be NULL when the stripe is empty) and *len, or an error. */
static int snapshot_stripe(fp_manager *m, stripe *s, unsigned char **buf,
                           size_t *len) {
  size_t total = 0, pos = 0;
  unsigned char *p = NULL;
  uint64_t *b;
  int rc;

  *buf = NULL;
  *len = 0;
  if ((rc = fp__shm_lock(m, &s->mu, &s->j)) != 0)
    return rc;
  b = s->cap ? table(m, s) : NULL;
  for (uint64_t i = 0; i < s->cap; i++)
    if (b[i] > TOMB)
      total += 8 + node_at(m, BOFF(b[i]))->klen + node_at(m, BOFF(b[i]))->vlen;
  if (total != 0 && (p = malloc(total)) == NULL) {
    fp__shm_unlock(&s->mu);
    return FP_ENOMEM;
  }
  for (uint64_t i = 0; i < s->cap; i++) {
    if (b[i] <= TOMB)
      continue;
    node *nd = node_at(m, BOFF(b[i]));
    memcpy(p + pos, &nd->klen, 4);
    memcpy(p + pos + 4, &nd->vlen, 4);
    memcpy(p + pos + 8, nd->data, (size_t)nd->klen + nd->vlen);
    pos += 8 + (size_t)nd->klen + nd->vlen;
  }
  fp__shm_unlock(&s->mu);
  *buf = p;
  *len = total;
  return 0;
}

int fp_dict_foreach(fp_dict *d, fp_dict_item_cb cb, void *arg) {
  int rc = fp__shm_obj_check(d, FP__SHM_DICT);

  if (rc != 0)
    return rc;
  if (cb == NULL)
    return FP_EINVAL;
  for (int i = 0; i < NSTRIPE && rc == 0; i++) {
    unsigned char *buf;
    size_t len, pos = 0;
    if ((rc = snapshot_stripe(mgr(d), &d->s[i], &buf, &len)) != 0)
      break;
    while (pos < len && rc == 0) {
      uint32_t kl, vl;
      memcpy(&kl, buf + pos, 4);
      memcpy(&vl, buf + pos + 4, 4);
      rc = cb(buf + pos + 8, kl, buf + pos + 8 + kl, vl, arg);
      pos += 8 + (size_t)kl + vl;
    }
    free(buf);
  }
  return rc;
}

uint64_t fp_dict_ref(const fp_dict *d) {
  if (fp__shm_obj_check(d, FP__SHM_DICT) != 0)
    return 0;
  return fp__shm_obj_ref(&d->hdr);
}

int fp_dict_from_ref(fp_manager *m, uint64_t ref, fp_dict **out) {
  int err;
  if (out == NULL)
    return FP_EINVAL;
  *out = fp__shm_obj_from_ref(m, ref, FP__SHM_DICT, &err);
  return err;
}

/* --- checker hooks ------------------------------------------------------ */

int fp__shm_dict_settle(fp__shm_obj *o) {
  fp_dict *d = (fp_dict *)o;
  for (int i = 0; i < NSTRIPE; i++) {
    int rc = fp__shm_lock(mgr(d), &d->s[i].mu, &d->s[i].j);
    if (rc != 0)
      return rc;
    fp__shm_unlock(&d->s[i].mu);
  }
  return 0;
}

/* Verifies one stripe: table shape, every node's chunk, header, hash,
 * stripe, value encoding and findability (which also rules out duplicate
 * keys), and the live/tombstone counts. */
static int check_stripe(fp__shm_checker *c, fp_manager *m, stripe *s, int idx) {
  uint64_t live = 0, tombs = 0, *b;
  int rc;

  if ((rc = fp__shm_check_journal(c, &s->j)) != 0)
    return rc;
  if (s->cap == 0)
    return s->buckets == 0 && s->count == 0 && s->tombs == 0
               ? 0
               : fp__shm_fail(c, "dict stripe %d: empty table with state", idx);
  if ((s->cap & (s->cap - 1)) != 0)
    return fp__shm_fail(c, "dict stripe %d: cap %llu", idx,
                        (unsigned long long)s->cap);
  if ((rc = fp__shm_claim(c, s->buckets, s->cap * 8, "dict table")) != 0)
    return rc;
  b = table(m, s);
  for (uint64_t i = 0; i < s->cap; i++) {
    if (b[i] == 0)
      continue;
    if (b[i] == TOMB) {
      tombs++;
      continue;
    }
    uint64_t off = BOFF(b[i]);
    if (off < m->heap || off + NODE_HDR > m->brk)
      return fp__shm_fail(c, "dict stripe %d: node offset %llu", idx,
                          (unsigned long long)off);
    node *nd = node_at(m, off);
    if (nd->size != NODE_HDR + (uint64_t)nd->klen + nd->vlen)
      return fp__shm_fail(c, "dict stripe %d: node size mismatch", idx);
    if ((rc = fp__shm_claim(c, off, nd->size, "dict node")) != 0)
      return rc;
    if (nd->hash != hash_key(nd->data, nd->klen) ||
        (b[i] >> 40) != TAG(nd->hash) || (int)(nd->hash >> STRIPE_SHIFT) != idx)
      return fp__shm_fail(c, "dict stripe %d: node hash wrong", idx);
    if (fp__shm_check_value(node_value(nd), nd->vlen) != 0)
      return fp__shm_fail(c, "dict stripe %d: bad value encoding", idx);
    if (lookup(m, s, nd->data, nd->klen, nd->hash, NULL) != (int64_t)i)
      return fp__shm_fail(c, "dict stripe %d: key unreachable or duplicated",
                          idx);
    live++;
  }
  if (live != s->count || tombs != s->tombs || live + tombs >= s->cap)
    return fp__shm_fail(c, "dict stripe %d: counts %llu/%llu, found %llu/%llu",
                        idx, (unsigned long long)s->count,
                        (unsigned long long)s->tombs, (unsigned long long)live,
                        (unsigned long long)tombs);
  return 0;
}

int fp__shm_dict_check(fp__shm_checker *c, fp__shm_obj *o) {
  fp_dict *d = (fp_dict *)o;
  int rc = 0;

  if (o->size != sizeof(fp_dict))
    return fp__shm_fail(c, "dict: object size %llu",
                        (unsigned long long)o->size);
  for (int i = 0; i < NSTRIPE && rc == 0; i++)
    rc = check_stripe(c, c->m, &d->s[i], i);
  return rc;
}
