/* SPDX-License-Identifier: MIT */
/* dict.c - the manager's shared dict: byte-string keys -> codec values.
 *
 * A dict is one arena object holding 256 stripes, each on its own cache
 * line. A key's 64-bit hash picks its stripe (top 8 bits) and its home
 * bucket (the low 28 bits, scaled to the table's size). Each stripe is an
 * open-addressing table with linear probing and its own lock, taken only
 * by writers that change the table; readers and in-place updates of
 * numbers take no lock at all.
 *
 * Layout (offsets from the arena base):
 *   stripe.table -> table: u64 link | u64 cap | u64 bucket[cap]
 *     bucket: 0 empty, 1 tombstone, else hash28 << 36 | node offset / 16
 *   node: u64 link | u16 klen | u8 tag | u8 pad | u32 vlen |
 *         u64 payload | u64 state | key | value
 * A node whose value is an INT or a FLOAT (9 bytes encoded) is a scalar
 * node: its value lives in payload (tag holds the type byte), next to a
 * state word, 16-byte aligned, so that both can be compared and swapped
 * together. Any other value follows the key, and never changes: replacing
 * it publishes a new node.
 *
 * Readers (get, contains, the typed getters) pin their heap (heap.c),
 * follow the stripe's table word to a bucket and the bucket to a node, and
 * copy. They write nothing shared. What they read stays valid while they
 * are pinned: writers publish a new table or node with one store and
 * retire the old one, which is not reused before every pinned call that
 * might have seen it has finished. A reader that started on an old table
 * finishes on that frozen snapshot, which is the state at some moment
 * during its call.
 *
 * Scalar updates in place (fp_dict_add_int, and set of an INT or FLOAT
 * over a value of the same type) take no lock either: one double-width
 * compare-and-swap of (payload, state) that requires state == 0 (live). A
 * writer that unlinks or replaces a scalar node first seals it (state 1)
 * under the stripe lock, so an update either landed before the seal --
 * and the writer's read of the final value includes it (pop) -- or fails
 * and retries under the lock. A node's own cache line is the only shared
 * line such an update writes: processes updating different keys do not
 * touch each other's lines.
 *
 * Writers (insert, replace, delete, clear, the atomic helpers on missing
 * keys) lock the stripe and follow the journal protocol (journal.c): the
 * new node and a bigger table are allocated into the journal's alloc slots
 * and filled while unreachable, the few reachable words (a bucket, the
 * counts, the table word, a node's state) change through the undo log, and
 * what was unlinked is retired after the commit. A process killed anywhere
 * in between is rolled back or forward by the next locker.
 *
 * Growth: a stripe whose table passes 75% full (live plus tombstones) gets
 * a new table of twice its live keys, rehashed from the bucket words alone
 * (they keep 28 hash bits, so no node is read), published with one store.
 * 256 stripes each resizing on its own keep every call O(1) amortised and
 * the longest pause to one stripe's copy (a 256th of the dict).
 */
#include "ipc/shm/check.h"

#include <stdlib.h>
#include <string.h>

#define NSTRIPE 256
#define STRIPE_SHIFT 56 /* 64 - log2(NSTRIPE) */
#define NODE_HDR 32
#define TBL_HDR 16
#define TOMB 1
#define HBITS 28
#define HMASK (((uint64_t)1 << HBITS) - 1)
#define BKT(h, off) (((h)&HMASK) << 36 | fp__shm_cref(off))
#define BKT_HASH(b) ((b) >> 36)

typedef struct stripe {
  fp__shm_mutex mu;
  uint32_t pad;
  _Atomic uint64_t table; /* offset of the table, 0 when none */
  _Atomic uint64_t count; /* live keys */
  _Atomic uint64_t tombs; /* tombstones */
} __attribute__((aligned(64))) stripe;

struct fp_dict {
  fp__shm_obj hdr;
  stripe s[NSTRIPE];
};

typedef struct table {
  uint64_t link;
  uint64_t cap;
  _Atomic uint64_t b[];
} table;

typedef struct node {
  uint64_t link;
  uint16_t klen;     /* <= FP_DICT_KEY_MAX */
  unsigned char tag; /* FP_INT or FP_FLOAT for a scalar node, else 0 */
  unsigned char pad;
  uint32_t vlen;
  _Atomic uint64_t payload; /* offset 16: a scalar's value */
  _Atomic uint64_t state;   /* offset 24: 0 live, 1 sealed */
  unsigned char data[];     /* key, then a non-scalar value */
} node;

/* The (payload, state) pair is 16-byte aligned: chunks are, and the pair
 * sits at offset 16. A node keeps no hash: buckets hold 28 bits of it,
 * enough to rehash, and a writer has the key's hash at hand. */
_Static_assert(offsetof(node, payload) == 16 &&
                   offsetof(node, data) == NODE_HDR,
               "node layout");

/* The last 1..8 bytes of a key as one word, with whole loads only: the
 * first and last 4 bytes (overlapping) of 4..8 bytes, or the first,
 * middle and last byte of 1..3. With the length mixed in, distinct keys
 * give distinct words. */
static uint64_t tail_word(const unsigned char *p, size_t n) {
  uint32_t a, b;

  if (n >= 4) {
    memcpy(&a, p, 4);
    memcpy(&b, p + n - 4, 4);
    return (uint64_t)a << 32 | b;
  }
  return n == 0 ? 0
                : (uint64_t)p[0] | (uint64_t)p[n / 2] << 8 |
                      (uint64_t)p[n - 1] << 16;
}

/* 64-bit hash of a byte string: 8 bytes at a time through a multiply-xor
 * mix, finished with murmur3's fmix64 so every input bit reaches both the
 * top bits (stripe) and the low bits (bucket). */
static uint64_t hash_key(const void *key, size_t n) {
  const unsigned char *p = key;
  uint64_t h = 0x9e3779b97f4a7c15ULL ^ (n * 0xff51afd7ed558ccdULL), v;

  while (n > 8) {
    memcpy(&v, p, 8);
    h = (h ^ (v * 0xc4ceb9fe1a85ec53ULL)) * 0x100000001b3ULL;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  v = tail_word(p, n);
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

static table *table_at(fp_manager *m, uint64_t off) {
  return off ? fp__shm_ptr(m, off) : NULL;
}

static node *node_at(fp_manager *m, uint64_t bucket) {
  return fp__shm_ptr(m, fp__shm_cref_off(bucket));
}

/* The home bucket of a hash in a table of cap buckets. */
static uint64_t home(uint64_t h, uint64_t cap) {
  return ((h & HMASK) * cap) >> HBITS;
}

static int is_scalar_value(const void *v, size_t n) {
  const unsigned char *p = v;
  return n == 9 && (p[0] == FP_INT || p[0] == FP_FLOAT);
}

static int is_scalar(const node *nd) {
  return nd->tag != 0;
}

/* A node's encoded value: a pointer into the node, or, for a scalar, the
 * 9 bytes rebuilt in buf from one atomic load of the payload. */
static const unsigned char *node_value(node *nd, unsigned char buf[9]) {
  if (!is_scalar(nd))
    return nd->data + nd->klen;
  buf[0] = nd->tag;
  fp__shm_put_le64(buf + 1, (int64_t)atomic_load(&nd->payload));
  return buf;
}

/* Looks key up in table t (NULL: empty). Returns the bucket index holding
 * it, and its node in *found (may be NULL), or -1. When ins is not NULL it
 * receives the bucket where the key would go (the first tombstone or
 * empty bucket of its probe sequence). Safe without the lock: each bucket
 * is read once, atomically, and nodes never change (but for a scalar's
 * payload) -- a lock-free caller must use *found, not read the bucket
 * again, which may have changed since. */
static int64_t lookup(fp_manager *m, table *t, const void *key, size_t klen,
                      uint64_t h, uint64_t *ins, node **found) {
  uint64_t first = UINT64_MAX, cap, i, b;

  if (ins != NULL)
    *ins = UINT64_MAX;
  if (t == NULL)
    return -1;
  cap = t->cap;
  i = home(h, cap);
  /* At most cap probes: the table always has an empty bucket. */
  for (uint64_t n = 0; n < cap; n++, i = i + 1 == cap ? 0 : i + 1) {
    b = atomic_load_explicit(&t->b[i], memory_order_acquire);
    if (b == 0) {
      if (first == UINT64_MAX)
        first = i;
      break;
    }
    if (b == TOMB) {
      if (first == UINT64_MAX)
        first = i;
      continue;
    }
    if (BKT_HASH(b) != (h & HMASK))
      continue;
    node *nd = node_at(m, b);
    if (nd->klen == klen && (klen == 0 || memcmp(nd->data, key, klen) == 0)) {
      if (found != NULL)
        *found = nd;
      return (int64_t)i;
    }
  }
  if (ins != NULL)
    *ins = first;
  return -1;
}

/* --- scalars in place ----------------------------------------------------- */

/* Compare-and-swap of a live scalar node's payload from *expect to want,
 * together with the check that its state is 0. Returns 1 on success, 0
 * when the payload had changed (*expect gets it), -1 when the node is
 * sealed, -2 when the machine has no double-width compare-and-swap. */
static int cas_live(node *nd, uint64_t *expect, uint64_t want) {
#if defined(__x86_64__)
  volatile unsigned __int128 *pair = (void *)&nd->payload;
  uint64_t lo = *expect, hi = 0;
  unsigned char ok;
  __asm__ __volatile__("lock cmpxchg16b %1\n\tsete %0"
                       : "=q"(ok), "+m"(*pair), "+a"(lo), "+d"(hi)
                       : "b"(want), "c"((uint64_t)0)
                       : "memory", "cc");
  if (ok)
    return 1;
  *expect = lo;
  return hi != 0 ? -1 : 0;
#else
  (void)nd;
  (void)expect;
  (void)want;
  return -2;
#endif
}

/* Adds delta to (add) or stores v into (!add) a scalar node. Returns 0
 * (*newv gets the new payload), or 1 if the node is sealed or the machine
 * cannot do it without the lock. Under the stripe lock, the fallback of a
 * machine without double-width CAS is a plain atomic: no lock-free updater
 * exists there. */
static int scalar_update(node *nd, int add, uint64_t v, uint64_t *newv,
                         int locked) {
  uint64_t cur = atomic_load(&nd->payload);

  for (;;) {
    uint64_t want = add ? cur + v : v;
    int r = cas_live(nd, &cur, want);
    if (r == 1) {
      *newv = want;
      return 0;
    }
    if (r == -1)
      return 1;
    if (r == -2) {
      if (!locked)
        return 1;
      *newv = add ? atomic_fetch_add(&nd->payload, v) + v
                  : (atomic_store(&nd->payload, v), v);
      return 0;
    }
  }
}

/* Seals a scalar node about to be unlinked (journaled: a rollback makes it
 * live again), then returns its final payload: no update lands after the
 * seal, and the full fence orders the load after it. */
static uint64_t seal(fp_manager *m, fp__shm_heap *h, node *nd) {
  fp__shm_jset(m, h, (uint64_t *)&nd->state, 1);
  atomic_thread_fence(memory_order_seq_cst);
  return atomic_load(&nd->payload);
}

/* --- handles, locks ------------------------------------------------------- */

/* Pins the calling thread's heap for a call on d (fp__shm_obj_pin). */
static int pin_dict(fp_dict *d, fp__shm_heap **hp) {
  return fp__shm_obj_pin(d, FP__SHM_DICT, hp);
}

/* Common argument checks; finds the key's stripe and the caller's heap,
 * and pins the heap. */
static int prepare(fp_dict *d, const void *key, size_t klen, stripe **s,
                   uint64_t *h, fp__shm_heap **hp) {
  int rc = fp__shm_obj_check(d, FP__SHM_DICT);
  if (rc != 0)
    return rc;
  if (key == NULL && klen != 0)
    return fp__shm_refuse(FP_EINVAL, "NULL key with klen %zu", klen);
  if (klen > FP_DICT_KEY_MAX)
    return fp__shm_refuse(FP_EMSGSIZE,
                          "a key of %zu bytes: longer than FP_DICT_KEY_MAX "
                          "(%d)",
                          klen, FP_DICT_KEY_MAX);
  *h = hash_key(key, klen);
  *s = &d->s[*h >> STRIPE_SHIFT];
  return pin_dict(d, hp);
}

/* Ends a call: unpins, and lets the heap reuse what it retired. */
static void done(fp_manager *m, fp__shm_heap *h) {
  fp__shm_call_end(m, h);
}

/* Locks a stripe, repairing it if the previous holder died; FP_EINVAL
 * (nothing locked) when a destroy of the dict began: the destroy marks the
 * dict before it clears the stripes, so whoever locks a stripe after the
 * destroy's pass sees the mark and changes nothing. */
static int lock_stripe(fp_dict *d, fp__shm_heap *h, stripe *s) {
  fp__shm_lock(mgr(d), h, &s->mu, FP__SHM_POLL_SOON);
  if (!fp__shm_obj_alive(&d->hdr)) {
    fp__shm_unlock(&s->mu);
    return fp__shm_refuse(FP_EINVAL, "the dict was destroyed");
  }
  return 0;
}

/* Commits the open journal and unlocks; the retiring half of the commit
 * needs no lock (journal.c). */
static void commit_unlock(fp_manager *m, fp__shm_heap *h, stripe *s) {
  fp__shm_jmark(h);
  fp__shm_unlock(&s->mu);
  fp__shm_jfinish(m, h);
}

static int init_dict(void *obj, void *arg) {
  (void)obj;
  (void)arg;
  return 0; /* zero is a free lock and an empty stripe */
}

int fp_dict_new(fp_manager *m, fp_dict **out) {
  void *o;
  int rc;

  if (out != NULL)
    *out = NULL;
  if ((rc = fp__shm_check_new(m, out)) != 0)
    return rc;
  rc = fp__shm_obj_new(m, FP__SHM_DICT, sizeof(fp_dict), init_dict, NULL, &o);
  if (rc == 0)
    *out = o;
  return rc;
}

/* --- writers -------------------------------------------------------------- */

/* Bytes of a table that holds at least want buckets, rounded up to what
 * the allocator hands out anyway (a class, or whole pages) so that no
 * byte of the chunk is wasted: the capacity follows from the bytes. */
static uint64_t table_bytes(uint64_t want) {
  uint64_t bytes = TBL_HDR + want * 8;
  if (bytes <= FP__SHM_SMALL_MAX)
    return fp__shm_class_size(fp__shm_class_of(bytes));
  return (bytes + FP__SHM_PAGE - 1) & ~(FP__SHM_PAGE - 1);
}

/* Builds a node for (key, value) in the journal's alloc slot 0. */
static int make_node(fp_manager *m, fp__shm_heap *h, const void *key,
                     size_t klen, uint64_t hash, const void *val, size_t vlen) {
  int scalar = is_scalar_value(val, vlen);
  uint64_t size = NODE_HDR + klen + (scalar ? 0 : vlen);
  /* A scalar node is written in place by lock-free updates: it gets whole
   * cache lines (a multiple of 64 bytes, which the allocator aligns to
   * 64), so that updates of different keys never share a line. Other
   * nodes never change after publication and are packed. */
  if (scalar)
    size = (size + 63) & ~(uint64_t)63;
  node *nd;
  int rc;

  if ((rc = fp__shm_alloc(m, h, &h->j.alloc[0], size)) != 0)
    return rc;
  nd = fp__shm_ptr(m, h->j.alloc[0]);
  memset((char *)nd + 8, 0, NODE_HDR - 8);
  nd->klen = (uint16_t)klen;
  nd->vlen = (uint32_t)vlen;
  if (klen)
    memcpy(nd->data, key, klen);
  if (scalar) {
    nd->tag = *(const unsigned char *)val;
    atomic_store_explicit(
        &nd->payload, (uint64_t)fp__shm_le64((const unsigned char *)val + 1),
        memory_order_relaxed);
  } else {
    memcpy(nd->data + klen, val, vlen);
  }
  return 0;
}

/* Makes room for one more key in a stripe (journal open): when the table
 * would pass 75% full (live + tombstones), builds a table for twice the
 * live keys in alloc slot 1, rehashes into it from the bucket words alone
 * (unreachable, so unlogged) and publishes it; the old table is released.
 * Returns 0 or FP_ENOMEM / FP_EMSGSIZE; *t gets the table to insert in. */
static int reserve_one(fp_manager *m, fp__shm_heap *h, stripe *s, table **t) {
  uint64_t count = s->count, cap = *t ? (*t)->cap : 0, ncap;
  table *nt;
  int rc;

  if ((count + s->tombs + 1) * 4 <= cap * 3)
    return 0;
  ncap = (table_bytes(count < 4 ? 8 : 2 * (count + 1)) - TBL_HDR) / 8;
  if ((rc = fp__shm_alloc(m, h, &h->j.alloc[1], TBL_HDR + ncap * 8)) != 0)
    return rc;
  nt = fp__shm_ptr(m, h->j.alloc[1]);
  nt->cap = ncap;
  memset((void *)nt->b, 0, ncap * 8);
  for (uint64_t i = 0; i < cap; i++) {
    uint64_t b = atomic_load_explicit(&(*t)->b[i], memory_order_relaxed);
    if (b <= TOMB)
      continue;
    uint64_t k = ((BKT_HASH(b)) * ncap) >> HBITS;
    while (nt->b[k] != 0)
      k = k + 1 == ncap ? 0 : k + 1;
    atomic_store_explicit(&nt->b[k], b, memory_order_relaxed);
  }
  if (*t != NULL)
    h->j.release[1] = fp__shm_off(m, *t);
  fp__shm_jset(m, h, (uint64_t *)&s->table, h->j.alloc[1]);
  if (s->tombs != 0)
    fp__shm_jset(m, h, (uint64_t *)&s->tombs, 0);
  *t = nt;
  return 0;
}

/* Inserts a key known to be absent (journal open, stripe locked); ins is
 * the bucket the caller's lookup found for it. */
static int insert_new(fp_manager *m, fp__shm_heap *h, stripe *s,
                      const void *key, size_t klen, uint64_t hash,
                      const void *val, size_t vlen, uint64_t ins) {
  table *t = table_at(m, s->table), *old = t;
  int rc;

  if ((rc = make_node(m, h, key, klen, hash, val, vlen)) != 0 ||
      (rc = reserve_one(m, h, s, &t)) != 0)
    return rc;
  if (t != old) /* a new table: find the key's bucket there */
    lookup(m, t, key, klen, hash, &ins, NULL);
  if (ins == UINT64_MAX)
    abort(); /* reserve_one guarantees a free bucket */
  if (t == old && atomic_load(&t->b[ins]) == TOMB)
    fp__shm_jset(m, h, (uint64_t *)&s->tombs, s->tombs - 1);
  uint64_t *const words[] = {(uint64_t *)&t->b[ins], (uint64_t *)&s->count};
  const uint64_t vals[] = {BKT(hash, h->j.alloc[0]), s->count + 1};
  fp__shm_jpublish(m, h, words, vals, 2);
  return 0;
}

/* Replaces the node in bucket i (its key's hash: hash) with a new one
 * holding val (journal open); a scalar node is sealed first. */
static int replace_node(fp_manager *m, fp__shm_heap *h, table *t, uint64_t i,
                        uint64_t hash, const void *val, size_t vlen) {
  node *old = node_at(m, atomic_load(&t->b[i]));
  int rc = make_node(m, h, old->data, old->klen, hash, val, vlen);

  if (rc != 0)
    return rc;
  if (is_scalar(old))
    seal(m, h, old);
  h->j.release[0] = fp__shm_off(m, old);
  uint64_t *const words[] = {(uint64_t *)&t->b[i]};
  const uint64_t vals[] = {BKT(hash, h->j.alloc[0])};
  fp__shm_jpublish(m, h, words, vals, 1);
  return 0;
}

/* Refuses a call that needs a value of kind `want` ("an int", "a float")
 * on a key whose node nd holds another kind. Nodes never change but for a
 * scalar's payload, so this reads nd without the lock too. */
static int refuse_kind(node *nd, const char *want) {
  static const char *const kinds[] = {"nil",    "bool",  "int", "float",
                                      "string", "bytes", "list"};
  unsigned char buf[9];
  uint8_t tag = nd->vlen != 0 ? node_value(nd, buf)[0] : 0xff;
  return fp__shm_refuse(FP_ETYPE, "the key holds a %s, not %s",
                        tag <= FP_LIST ? kinds[tag] : "value", want);
}

enum { W_SET, W_IF_ABSENT, W_SETDEFAULT, W_ADD };

/* The locked write for a key present in bucket i of t. Returns as
 * dict_write; the journal is committed or aborted, the stripe unlocked. */
static int write_present(fp_manager *m, fp__shm_heap *h, stripe *s, table *t,
                         uint64_t i, uint64_t hash, const void *val,
                         size_t vlen, int mode, uint64_t delta, int64_t *newv,
                         fp_writer *out) {
  node *nd = node_at(m, atomic_load(&t->b[i]));
  unsigned char buf[9];
  uint64_t nv = 0;
  int rc = 0;

  if (mode == W_IF_ABSENT || mode == W_SETDEFAULT) {
    if (mode == W_SETDEFAULT && out != NULL)
      rc = fp__shm_write_out(out, node_value(nd, buf), nd->vlen);
    fp__shm_unlock(&s->mu);
    return rc != 0 ? rc : mode == W_IF_ABSENT ? FP_EEXIST : 1;
  }
  if (mode == W_ADD && nd->tag != FP_INT) {
    fp__shm_unlock(&s->mu);
    return refuse_kind(nd, "an int");
  }
  if (is_scalar(nd) && (mode == W_ADD || (is_scalar_value(val, vlen) &&
                                          *(const uint8_t *)val == nd->tag))) {
    uint64_t v = mode == W_ADD
                     ? delta
                     : (uint64_t)fp__shm_le64((const unsigned char *)val + 1);
    scalar_update(nd, mode == W_ADD, v, &nv, 1); /* never sealed: locked */
    if (newv != NULL)
      *newv = (int64_t)nv;
    fp__shm_unlock(&s->mu);
    return 0;
  }
  fp__shm_jbegin(h);
  if ((rc = replace_node(m, h, t, i, hash, val, vlen)) != 0) {
    fp__shm_jabort(m, h);
    fp__shm_unlock(&s->mu);
    return rc;
  }
  commit_unlock(m, h, s);
  return 0;
}

/* The locked write for an absent key, which would go in bucket ins. */
static int write_absent(fp_manager *m, fp__shm_heap *h, stripe *s,
                        const void *key, size_t klen, uint64_t hash,
                        const void *val, size_t vlen, int mode, fp_writer *out,
                        uint64_t ins) {
  fp_writer *give = mode == W_SETDEFAULT ? out : NULL;
  size_t len0 = give ? give->len : 0;
  uint32_t count0 = give && give->depth > 0 ? give->counts[give->depth - 1] : 0;
  int rc;

  /* setdefault hands the value out too: written first, since that can
   * fail in ways no check foresees (a sticky error, no memory, the
   * writer's list depth), and taken back if the insert fails, so that an
   * error never comes with a stored value. */
  if (give != NULL && (rc = fp__shm_write_out(give, val, vlen)) != 0) {
    fp__shm_unlock(&s->mu);
    return rc;
  }
  fp__shm_jbegin(h);
  if ((rc = insert_new(m, h, s, key, klen, hash, val, vlen, ins)) != 0) {
    fp__shm_jabort(m, h);
    fp__shm_unlock(&s->mu);
    if (give != NULL) {
      give->len = len0;
      if (give->depth > 0)
        give->counts[give->depth - 1] = count0;
    }
    return rc;
  }
  commit_unlock(m, h, s);
  return 0;
}

/* The lock-free attempt of set (a scalar over a scalar of its type) and
 * add: returns 0 or FP_ETYPE when done, 1 when the lock is needed. */
static int write_lockfree(fp_manager *m, stripe *s, const void *key,
                          size_t klen, uint64_t hash, const void *val,
                          size_t vlen, int mode, uint64_t delta,
                          int64_t *newv) {
  table *t = table_at(m, atomic_load_explicit(&s->table, memory_order_acquire));
  node *nd;
  int64_t i = lookup(m, t, key, klen, hash, NULL, &nd);
  uint64_t nv;

  if (i < 0)
    return 1; /* an insert: needs the lock */
  if (mode == W_ADD && nd->tag != FP_INT)
    return refuse_kind(nd, "an int");
  if (mode == W_SET && (!is_scalar(nd) || *(const uint8_t *)val != nd->tag))
    return 1;
  if (scalar_update(nd, mode == W_ADD,
                    mode == W_ADD ? delta
                                  : (uint64_t)fp__shm_le64(
                                        (const unsigned char *)val + 1),
                    &nv, 0) != 0)
    return 1;
  if (newv != NULL)
    *newv = (int64_t)nv;
  return 0;
}

/* The one write path: set, set-if-absent, setdefault and add-int, of a
 * value known to be one well-formed encoded value (the callers check what
 * users pass; prepare() checks the dict). Returns 0 (stored), 1
 * (setdefault: key present), FP_EEXIST, FP_ETYPE or an allocation / writer
 * error; on error the dict is unchanged. */
static int dict_write(fp_dict *d, const void *key, size_t klen, const void *val,
                      size_t vlen, int mode, int64_t delta, int64_t *newv,
                      fp_writer *out) {
  unsigned char ibuf[9] = {FP_INT};
  fp__shm_heap *h;
  fp_manager *m;
  uint64_t hash;
  stripe *s;
  int64_t i;
  int rc;

  if ((rc = prepare(d, key, klen, &s, &hash, &h)) != 0)
    return rc;
  m = mgr(d);
  if (mode == W_ADD || (mode == W_SET && is_scalar_value(val, vlen))) {
    rc = write_lockfree(m, s, key, klen, hash, val, vlen, mode, (uint64_t)delta,
                        newv);
    if (rc != 1)
      goto out;
  }
  if ((rc = lock_stripe(d, h, s)) != 0)
    goto out;
  table *t = table_at(m, s->table);
  uint64_t ins;
  if ((i = lookup(m, t, key, klen, hash, &ins, NULL)) >= 0) {
    rc = write_present(m, h, s, t, (uint64_t)i, hash, val, vlen, mode,
                       (uint64_t)delta, newv, out);
  } else {
    if (mode == W_ADD) {
      fp__shm_put_le64(ibuf + 1, delta);
      val = ibuf;
      vlen = 9;
      if (newv != NULL)
        *newv = delta;
    }
    rc = write_absent(m, h, s, key, klen, hash, val, vlen, mode, out, ins);
  }
out:
  done(m, h);
  return rc;
}

/* Checks a caller's dict, then its value (in that order: a bad dict is
 * FP_EINVAL whatever the value). */
static int check_call(fp_dict *d, const void *value, size_t vlen) {
  int rc = fp__shm_obj_check(d, FP__SHM_DICT);
  return rc != 0 ? rc : fp__shm_check_arg(value, vlen);
}

int fp_dict_set(fp_dict *d, const void *key, size_t klen, const void *value,
                size_t vlen) {
  int rc = check_call(d, value, vlen);
  if (rc != 0)
    return rc;
  return dict_write(d, key, klen, value, vlen, W_SET, 0, NULL, NULL);
}

int fp_dict_set_if_absent(fp_dict *d, const void *key, size_t klen,
                          const void *value, size_t vlen) {
  int rc = check_call(d, value, vlen);
  if (rc != 0)
    return rc;
  return dict_write(d, key, klen, value, vlen, W_IF_ABSENT, 0, NULL, NULL);
}

int fp_dict_setdefault(fp_dict *d, const void *key, size_t klen,
                       const void *value, size_t vlen, fp_writer *out) {
  int rc = check_call(d, value, vlen);
  if (rc != 0)
    return rc;
  return dict_write(d, key, klen, value, vlen, W_SETDEFAULT, 0, NULL, out);
}

int fp_dict_add_int(fp_dict *d, const void *key, size_t klen, int64_t delta,
                    int64_t *new_value) {
  return dict_write(d, key, klen, NULL, 0, W_ADD, delta, new_value, NULL);
}

/* Encodes a fixed-size scalar without a writer (no malloc); a value it
 * encoded itself needs no check. */
static int set_scalar(fp_dict *d, const void *key, size_t klen, int tag,
                      uint64_t bits) {
  unsigned char buf[9];
  buf[0] = (unsigned char)tag;
  fp__shm_put_le64(buf + 1, (int64_t)bits);
  return dict_write(d, key, klen, buf, 9, W_SET, 0, NULL, NULL);
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
  if (rc == FP_EMSGSIZE)
    fp__shm_refuse(rc, "a %s of %zu bytes: a value holds at most %u",
                   is_str ? "string" : "bytes value", n, UINT32_MAX);
  else if (rc != 0)
    fp__shm_refuse(rc, "no memory to encode the value");
  if (rc == 0)
    rc = fp_dict_set(d, key, klen, w.data, w.len);
  fp_writer_free(&w);
  return rc;
}

int fp_dict_set_str(fp_dict *d, const void *key, size_t klen, const char *s) {
  if (s == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL string");
  return set_encoded(d, key, klen, 1, s, strlen(s));
}

int fp_dict_set_bytes(fp_dict *d, const void *key, size_t klen, const void *p,
                      size_t n) {
  if (p == NULL && n != 0)
    return fp__shm_refuse(FP_EINVAL, "NULL bytes with n %zu", n);
  return set_encoded(d, key, klen, 0, p, n);
}

/* --- readers -------------------------------------------------------------- */

enum { R_GET, R_INT, R_FLOAT, R_CONTAINS };

/* Copies what a reader asked for out of node nd. */
static int read_node(node *nd, int mode, fp_writer *out, void *scalar) {
  unsigned char buf[9];

  switch (mode) {
  case R_GET:
    return fp__shm_write_out(out, node_value(nd, buf), nd->vlen);
  case R_INT:
  case R_FLOAT:
    if (nd->tag != (mode == R_INT ? FP_INT : FP_FLOAT))
      return refuse_kind(nd, mode == R_INT ? "an int" : "a float");
    uint64_t x = atomic_load(&nd->payload);
    memcpy(scalar, &x, 8);
    return 0;
  default:
    return 1;
  }
}

/* The read path: no lock, nothing shared written (see the file header). */
static int dict_read(fp_dict *d, const void *key, size_t klen, int mode,
                     fp_writer *out, void *scalar) {
  fp__shm_heap *h;
  uint64_t hash;
  stripe *s;
  int rc;

  if ((rc = fp__shm_obj_check(d, FP__SHM_DICT)) != 0)
    return rc;
  if ((mode == R_GET && out == NULL) ||
      ((mode == R_INT || mode == R_FLOAT) && scalar == NULL))
    return fp__shm_refuse(FP_EINVAL, "NULL output pointer");
  if ((rc = prepare(d, key, klen, &s, &hash, &h)) != 0)
    return rc;
  FP__SHM_CRASH_POINT(); /* the tests' reader killed while pinned */
  fp_manager *m = mgr(d);
  table *t = table_at(m, atomic_load_explicit(&s->table, memory_order_acquire));
  node *nd;
  if (lookup(m, t, key, klen, hash, NULL, &nd) < 0)
    rc = mode == R_CONTAINS ? 0 : FP_ENOENT;
  else
    rc = read_node(nd, mode, out, scalar);
  done(m, h);
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

/* Removes key (stripe locked, journal not begun); out gets the value. */
static int delete_locked(fp_manager *m, fp__shm_heap *h, stripe *s, table *t,
                         uint64_t i, fp_writer *out) {
  node *nd = node_at(m, atomic_load(&t->b[i]));
  unsigned char buf[9];
  int rc = 0;

  fp__shm_jbegin(h);
  if (is_scalar(nd)) {
    buf[0] = nd->tag;
    fp__shm_put_le64(buf + 1, (int64_t)seal(m, h, nd));
  }
  if (out != NULL &&
      (rc = fp__shm_write_out(out, is_scalar(nd) ? buf : nd->data + nd->klen,
                              nd->vlen)) != 0) {
    fp__shm_jabort(m, h); /* unseals */
    fp__shm_unlock(&s->mu);
    return rc;
  }
  h->j.release[0] = fp__shm_off(m, nd);
  uint64_t *const words[] = {(uint64_t *)&t->b[i], (uint64_t *)&s->count,
                             (uint64_t *)&s->tombs};
  const uint64_t vals[] = {TOMB, s->count - 1, s->tombs + 1};
  fp__shm_jpublish(m, h, words, vals, 3);
  commit_unlock(m, h, s);
  return 0;
}

int fp_dict_delete(fp_dict *d, const void *key, size_t klen, fp_writer *out) {
  fp__shm_heap *h;
  uint64_t hash;
  stripe *s;
  int64_t i;
  int rc;

  if ((rc = prepare(d, key, klen, &s, &hash, &h)) != 0)
    return rc;
  fp_manager *m = mgr(d);
  if ((rc = lock_stripe(d, h, s)) == 0) {
    table *t = table_at(m, s->table);
    if ((i = lookup(m, t, key, klen, hash, NULL, NULL)) < 0) {
      fp__shm_unlock(&s->mu);
      rc = FP_ENOENT;
    } else {
      rc = delete_locked(m, h, s, t, (uint64_t)i, out);
    }
  }
  done(m, h);
  return rc;
}

/* Waits for a stripe's lock holder by taking the lock and giving it back.
 * A holder that died is taken over, which repairs what it left: an insert
 * or a delete it published half-way (the bucket stored, the count not) is
 * completed, so that a count read afterwards agrees with the buckets. */
static int settle_stripe(fp_dict *d, stripe *s) {
  fp__shm_heap *h;
  int rc = pin_dict(d, &h);

  if (rc != 0)
    return rc;
  if ((rc = lock_stripe(d, h, s)) == 0)
    fp__shm_unlock(&s->mu);
  done(mgr(d), h);
  return rc;
}

int64_t fp_dict_len(fp_dict *d) {
  int64_t n = 0;
  int rc = fp__shm_obj_check(d, FP__SHM_DICT);

  if (rc != 0)
    return rc;
  for (int i = 0; i < NSTRIPE; i++) {
    stripe *s = &d->s[i];
    /* The lock word shares the count's cache line: a free stripe costs
     * nothing more. A held one is settled first: its holder may be a
     * process that died between the two stores of its publication. */
    if (atomic_load_explicit(&s->mu, memory_order_relaxed) != 0 &&
        (rc = settle_stripe(d, s)) != 0)
      return rc;
    n += (int64_t)atomic_load_explicit(&s->count, memory_order_relaxed);
  }
  return n;
}

/* Empties one stripe in one journaled step: detach the table, then retire
 * every node it lists and the table itself (a deep release, which a
 * repairer finishes if we die). A destroy clears a dying dict. */
static int clear_stripe(fp_dict *d, fp__shm_heap *h, stripe *s,
                        int destroying) {
  fp_manager *m = mgr(d);
  table *t;
  int rc = 0;

  if (destroying)
    fp__shm_lock(m, h, &s->mu, FP__SHM_POLL_SOON);
  else if ((rc = lock_stripe(d, h, s)) != 0)
    return rc;
  if ((t = table_at(m, s->table)) == NULL) {
    fp__shm_unlock(&s->mu);
    return 0;
  }
  fp__shm_jbegin(h);
  h->j.release[0] = fp__shm_off(m, t);
  h->j.deep_n = t->cap;
  uint64_t *const words[] = {(uint64_t *)&s->table, (uint64_t *)&s->count,
                             (uint64_t *)&s->tombs};
  const uint64_t vals[] = {0, 0, 0};
  fp__shm_jpublish(m, h, words, vals, 3);
  commit_unlock(m, h, s);
  return 0;
}

/* Clears every stripe (destroying: of a dying dict). The caller's heap
 * is pinned, from before the dict was last checked: a racing destroy
 * cannot have its memory reused meanwhile. */
static int clear_pinned(fp_dict *d, fp__shm_heap *h, int destroying) {
  int rc = 0;
  for (int i = 0; rc == 0 && i < NSTRIPE; i++)
    rc = clear_stripe(d, h, &d->s[i], destroying);
  return rc;
}

int fp_dict_clear(fp_dict *d) {
  fp__shm_heap *h;
  fp_manager *m;
  int rc = fp__shm_obj_check(d, FP__SHM_DICT);

  if (rc != 0)
    return rc;
  m = mgr(d);
  if ((rc = pin_dict(d, &h)) != 0)
    return rc;
  rc = clear_pinned(d, h, 0);
  fp__shm_unpin(h);
  fp__shm_collect(m, h, FP__SHM_LIMBO_TRIGGER);
  return rc;
}

/* Marks the dict dying first, so that a writer in another process that
 * locks a stripe after this pass cleared it changes nothing; a writer
 * holding a stripe lock now finishes first, and the clear that follows
 * retires what it added. */
int fp_dict_destroy(fp_dict *d) {
  fp__shm_heap *h;
  fp_manager *m;
  uint64_t gen;
  int rc = fp__shm_obj_begin_clearing_destroy(d, FP__SHM_DICT, &m, &h, &gen);

  if (rc != 0)
    return rc;
  rc = clear_pinned(d, h, 1);
  fp__shm_unpin(h);
  fp__shm_collect(m, h, FP__SHM_LIMBO_TRIGGER);
  return rc != 0 ? rc : fp__shm_obj_free(m, &d->hdr, gen);
}

/* Copies one stripe's items into a private buffer of records (u32 klen,
 * u32 vlen, key, value) under its lock, so that no item is seen twice.
 * Returns 0 with *buf (malloc'd, may be NULL when the stripe is empty) and
 * *len, or an error. */
static int snapshot_stripe(fp_dict *d, fp__shm_heap *h, stripe *s,
                           unsigned char **buf, size_t *len) {
  fp_manager *m = mgr(d);
  size_t total = 0, pos = 0;
  unsigned char *p = NULL, vb[9];
  table *t;
  int rc;

  *buf = NULL;
  *len = 0;
  if ((rc = lock_stripe(d, h, s)) != 0)
    return rc;
  t = table_at(m, s->table);
  for (uint64_t i = 0; t != NULL && i < t->cap; i++)
    if (t->b[i] > TOMB)
      total +=
          8 + (size_t)node_at(m, t->b[i])->klen + node_at(m, t->b[i])->vlen;
  if (total != 0 && (p = malloc(total)) == NULL) {
    fp__shm_unlock(&s->mu);
    return FP_ENOMEM;
  }
  for (uint64_t i = 0; t != NULL && i < t->cap; i++) {
    if (t->b[i] <= TOMB)
      continue;
    node *nd = node_at(m, t->b[i]);
    uint32_t kl = nd->klen;
    memcpy(p + pos, &kl, 4);
    memcpy(p + pos + 4, &nd->vlen, 4);
    memcpy(p + pos + 8, nd->data, nd->klen);
    memcpy(p + pos + 8 + nd->klen, node_value(nd, vb), nd->vlen);
    pos += 8 + (size_t)nd->klen + nd->vlen;
  }
  fp__shm_unlock(&s->mu);
  *buf = p;
  *len = total;
  return 0;
}

/* The dict is pinned only while a stripe is copied: between stripes, and
 * while cb runs, it may be destroyed and a new dict made at its place.
 * Its creation number, checked again at each stripe, tells them apart. */
/* The managers this thread is inside an fp_dict_foreach of, innermost
 * first (each frame lives on fp_dict_foreach's stack): freeing one from a
 * callback would unmap the arena the walk goes on in, so fp_manager_free
 * refuses it (manager.c). */
typedef struct walk_frame {
  const fp_manager *m;
  struct walk_frame *outer;
} walk_frame;

static __thread walk_frame *tl_walks;

int fp__shm_walking(const fp_manager *m) {
  for (const walk_frame *f = tl_walks; f != NULL; f = f->outer)
    if (f->m == m)
      return 1;
  return 0;
}

/* fp_dict_foreach's walk over the stripes, calling cb for each item. The
 * caller's heap is looked up again for each stripe: a callback may fork,
 * and a child that went on with its parent's heap would pin it and take
 * locks in the parent's name (the two would then share lock ownership). */
static int walk_stripes(fp_dict *d, uint64_t gen, fp_dict_item_cb cb,
                        void *arg) {
  int rc = 0;
  for (int i = 0; i < NSTRIPE && rc == 0; i++) {
    unsigned char *buf;
    size_t len, pos = 0;
    fp__shm_heap *h;
    if ((rc = pin_dict(d, &h)) != 0)
      break;
    if (d->hdr.gen != gen)
      rc = FP_EINVAL; /* destroyed, and another dict made in its place */
    else
      rc = snapshot_stripe(d, h, &d->s[i], &buf, &len);
    fp__shm_unpin(h);
    if (rc != 0)
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

int fp_dict_foreach(fp_dict *d, fp_dict_item_cb cb, void *arg) {
  fp_manager *m;
  uint64_t gen;
  int rc = fp__shm_obj_check(d, FP__SHM_DICT);

  if (rc != 0)
    return rc;
  if (cb == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL callback");
  m = mgr(d);
  gen = d->hdr.gen;
  if (fp__shm_heap_get(m) == NULL)
    return FP_ENOMEM;
  walk_frame f = {m, tl_walks};
  tl_walks = &f;
  rc = walk_stripes(d, gen, cb, arg);
  tl_walks = f.outer;
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
    return fp__shm_refuse(FP_EINVAL, "NULL out pointer");
  *out = fp__shm_obj_from_ref(m, ref, FP__SHM_DICT, &err);
  return err;
}

int fp__shm_dict_stripe_of(const void *key, size_t klen) {
  return (int)(hash_key(key, klen) >> STRIPE_SHIFT);
}

/* --- checker hooks ------------------------------------------------------ */

void fp__shm_dict_settle(fp__shm_obj *o) {
  fp_dict *d = (fp_dict *)o;
  fp_manager *m = mgr(d);
  fp__shm_heap *h = fp__shm_heap_get(m);

  for (int i = 0; h != NULL && i < NSTRIPE; i++) {
    fp__shm_lock(m, h, &d->s[i].mu, FP__SHM_POLL_SOON);
    fp__shm_unlock(&d->s[i].mu);
  }
}

/* Verifies one node in bucket i of stripe idx: its chunk, hash, stripe,
 * value, and that a lookup finds it there (which also rules out
 * duplicate keys). */
static int check_node(fp__shm_checker *c, table *t, uint64_t i, int idx) {
  fp_manager *m = c->m;
  uint64_t b = t->b[i], off = fp__shm_cref_off(b), hash;
  node *nd;
  int rc;

  if (fp__shm_chunk_bytes(m, off) < NODE_HDR)
    return fp__shm_fail(c, "dict stripe %d: node offset %llu", idx,
                        (unsigned long long)off);
  nd = fp__shm_ptr(m, off);
  if ((rc = fp__shm_claim(c, off, "dict node")) != 0)
    return rc;
  if (nd->klen > FP_DICT_KEY_MAX ||
      fp__shm_chunk_bytes(m, off) <
          NODE_HDR + nd->klen + (is_scalar(nd) ? 0 : (uint64_t)nd->vlen))
    return fp__shm_fail(c, "dict stripe %d: node header wrong", idx);
  hash = hash_key(nd->data, nd->klen);
  if (BKT_HASH(b) != (hash & HMASK) || (int)(hash >> STRIPE_SHIFT) != idx)
    return fp__shm_fail(c, "dict stripe %d: node in the wrong place", idx);
  if (is_scalar(nd) ? nd->vlen != 9 || nd->state != 0 ||
                          (nd->tag != FP_INT && nd->tag != FP_FLOAT)
                    : fp__shm_check_value(nd->data + nd->klen, nd->vlen) != 0)
    return fp__shm_fail(c, "dict stripe %d: bad value", idx);
  if (lookup(m, t, nd->data, nd->klen, hash, NULL, NULL) != (int64_t)i)
    return fp__shm_fail(c, "dict stripe %d: key unreachable or duplicated",
                        idx);
  return 0;
}

/* Verifies one stripe: table shape, every node, the counts. */
static int check_stripe(fp__shm_checker *c, stripe *s, int idx) {
  fp_manager *m = c->m;
  uint64_t live = 0, tombs = 0;
  table *t = table_at(m, s->table);
  int rc;

  if (s->mu != 0)
    return fp__shm_fail(c, "dict stripe %d: locked", idx);
  if (t == NULL)
    return s->count == 0 && s->tombs == 0
               ? 0
               : fp__shm_fail(c, "dict stripe %d: counts without table", idx);
  if ((rc = fp__shm_claim(c, s->table, "dict table")) != 0)
    return rc;
  if (t->cap == 0 || TBL_HDR + t->cap * 8 > fp__shm_chunk_bytes(m, s->table))
    return fp__shm_fail(c, "dict stripe %d: cap %llu", idx,
                        (unsigned long long)t->cap);
  for (uint64_t i = 0; i < t->cap && rc == 0; i++) {
    if (t->b[i] == TOMB)
      tombs++;
    else if (t->b[i] != 0 && (rc = check_node(c, t, i, idx)) == 0)
      live++;
  }
  if (rc == 0 &&
      (live != s->count || tombs != s->tombs || live + tombs >= t->cap))
    return fp__shm_fail(c, "dict stripe %d: counts %llu/%llu, found %llu/%llu",
                        idx, (unsigned long long)s->count,
                        (unsigned long long)s->tombs, (unsigned long long)live,
                        (unsigned long long)tombs);
  return rc;
}

int fp__shm_dict_check(fp__shm_checker *c, fp__shm_obj *o) {
  fp_dict *d = (fp_dict *)o;
  int rc = 0;

  if (o->size != sizeof(fp_dict))
    return fp__shm_fail(c, "dict: object size %llu",
                        (unsigned long long)o->size);
  for (int i = 0; i < NSTRIPE && rc == 0; i++)
    rc = check_stripe(c, &d->s[i], i);
  return rc;
}
