/* SPDX-License-Identifier: MIT */
/* heap.c - per-thread heaps: chunk caches, and reuse after a grace period.
 *
 * Every thread that uses a manager owns one heap (an fp__shm_heap in the
 * arena's heap table; thread.c binds it). A heap caches a few dozen free
 * chunks per size class: allocating a small chunk pops one, freeing pushes
 * one, with plain stores to the heap's own cache lines, and only an empty
 * or full cache takes the global lock, to move half a cache's worth from
 * or to the slabs (arena.c). Two processes allocating at the same time
 * therefore share no cache line on the common path.
 *
 * Each cache operation is a step of the heap's own undo log (fp__shm_hlog:
 * the old value of each word is logged before it changes; hcommit empties
 * the log). Popping a chunk into a slot logs the cache count and the slot,
 * so a thread killed in between leaves a log that puts the chunk back in
 * the cache and the slot back to 0 when a survivor reclaims the heap
 * (thread.c). The slot is the journal's alloc slot of the update being
 * made, which is what ties an allocation to the update that needs it.
 *
 * Reuse after a grace period (epoch-based reclamation). Dict readers take
 * no lock: they follow bucket words to nodes while writers in other
 * processes replace and delete them. A chunk a reader may still be reading
 * must not be reused under it, so writers never free a chunk they unlink:
 * they retire it (fp__shm_retire) into their heap's limbo, tagged with the
 * global epoch read after the unlink. Every call announces itself in its
 * heap's pin word (fp__shm_pin: the current epoch, in the heap's own cache
 * line) and clears it when done. The epoch moves from e to e + 1 only when
 * every announced call announced e; so once the epoch reaches t + 2, no
 * call that began before a chunk retired at t was unlinked is still
 * running, and the chunk goes back to the cache. A thread that died inside
 * a call would hold the epoch forever: a heap whose pin stays the same for
 * a while is checked for a dead owner, and a dead owner's pin is cleared
 * (its thread holds no pointer any more).
 *
 * When to collect. A call's end collects once the heap's limbo weighs
 * FP__SHM_LIMBO_TRIGGER (64 small chunks, or spans worth a sixteenth of
 * the arena: see limbo_weight), and an allocation that finds no room
 * calls fp__shm_make_room before it gives up: that reclaims the heaps of
 * threads that died or exited without releasing theirs, collects what the
 * pins allow, and hands the heap's cached chunks back to their slabs (a
 * slab that empties returns its pages to the spans), so that FP_ENOMEM
 * means the live data (and other live threads' caches and limbo) leave
 * no room. The allocator also sends an allocation here before it carves
 * fresh pages, once per step of growth (arena.c, span_alloc): heaps left
 * by processes that exited come back then, not only in a full arena.
 */
#include "ipc/shm/check.h"

#include <sched.h>
#include <stdlib.h>
#include <time.h>

/* Chunks freed from the global limbo per global-lock hold. */
#define GLIMBO_BATCH 32

/* --- the heap's undo log ---------------------------------------------- */

void fp__shm_hlog(fp_manager *m, fp__shm_heap *h, uint64_t *p, uint64_t v) {
  uint64_t n = h->nlog;
  if (n >= FP__SHM_HLOG_MAX)
    abort(); /* a heap step logs at most 5 words: broken invariant */
  h->log[n].off = fp__shm_off(m, p);
  h->log[n].old = *p;
  FP__SHM_BARRIER();
  h->nlog = n + 1;
  FP__SHM_BARRIER();
  FP__SHM_CRASH_POINT();
  *p = v;
  FP__SHM_BARRIER();
  FP__SHM_CRASH_POINT();
}

void fp__shm_hcommit(fp__shm_heap *h) {
  FP__SHM_BARRIER();
  h->nlog = 0;
  FP__SHM_BARRIER();
}

void fp__shm_hrollback(fp_manager *m, fp__shm_heap *h) {
  uint64_t n = h->nlog > FP__SHM_HLOG_MAX ? FP__SHM_HLOG_MAX : h->nlog;
  if (n != 0)
    atomic_fetch_add(&m->repairs, 1);
  while (n-- > 0) {
    *(uint64_t *)fp__shm_ptr(m, h->log[n].off) = h->log[n].old;
    FP__SHM_BARRIER();
    FP__SHM_CRASH_POINT();
  }
  h->nlog = 0;
  FP__SHM_BARRIER();
}

/* --- allocation ------------------------------------------------------- */

/* Adds delta to h's span hint (only h's owner, or the thread draining a
 * dead h, writes it; others read it), never below 0. */
static void spans_add(fp__shm_heap *h, int64_t delta) {
  uint64_t v = atomic_load_explicit(&h->nlimbo_spans, memory_order_relaxed);
  v = delta < 0 && (uint64_t)-delta > v ? 0 : v + (uint64_t)delta;
  atomic_store_explicit(&h->nlimbo_spans, v, memory_order_relaxed);
}

/* What a retired chunk counts for in h->nlimbo: 1, plus 1 per 1/1024 of
 * the arena for a span of pages, so that the count-based trigger also
 * fires on bytes (arena.h). Depends on nothing that changes while the
 * chunk is retired, so retiring and collecting agree on it. */
static uint64_t limbo_weight(const fp_manager *m, uint64_t off) {
  uint64_t pages = fp__shm_large_pages(m, off);
  return 1 + (pages << (FP__SHM_PAGE_SHIFT + 10)) / m->size;
}

/* Whole pages for a request, in one global step. */
static int alloc_pages(fp_manager *m, fp__shm_heap *h, uint64_t *slot,
                       uint64_t size) {
  int rc;

  fp__shm_alock(m, h);
  rc = fp__shm_alloc_pages_locked(m, slot, size);
  fp__shm_acommit(m);
  fp__shm_aunlock(m);
  return rc;
}

/* Refills h's empty cache of class c; makes room if the arena has none,
 * and as a last resort gives back the empty slab each class keeps (in a
 * small arena those can hold most of it: a list's table, doubling, leaves
 * one behind in each class it passes through). Returns 1 when the cache
 * holds a chunk, 0 when there is no room. The cache is looked at again
 * after making room, which may have put chunks there: a refill on top of
 * them could overfill it. */
static int refill_cache(fp_manager *m, fp__shm_heap *h, int c) {
  int want = (int)fp__shm_cache_cap(c) / 2;

  if (fp__shm_refill(m, h, c, want) != 0)
    return 1;
  fp__shm_make_room(m, h);
  if (h->ncache[c] != 0 || fp__shm_refill(m, h, c, want) != 0)
    return 1;
  fp__shm_trim(m, h);
  return fp__shm_refill(m, h, c, want) != 0;
}

static int alloc_any(fp_manager *m, fp__shm_heap *h, uint64_t *slot,
                     uint64_t size);

/* What other heaps cache and retired counts as used, and only they give
 * it back: four processes churning values of every size on two CPUs held
 * 3.5 MB of a 4 MiB arena between them, and one of them failed with
 * FP_ENOMEM holding little itself. So a heap that finds no room first
 * asks every heap to give back at the end of its next call (m->squeeze),
 * waits for their answers, and tries once more. A busy peer answers
 * within microseconds. The wait ends when every live heap answered, when
 * none answered for SQUEEZE_QUIET_NS while none of those left is inside a
 * call (they are idle: an idle pool worker gave back before it slept),
 * or after SQUEEZE_WAIT_NS (a peer inside a long call, such as a foreach
 * callback). The caller is pinned and may hold a structure's lock: a peer
 * waiting for that lock answers late, which only makes this wait longer. */
#define SQUEEZE_WAIT_NS 20000000L
#define SQUEEZE_QUIET_NS 1000000L

static double secs_since(const struct timespec *t);

/* How many live heaps other than h have not given back for squeeze
 * `target`; *busy: whether one of them is inside a call. */
static int squeeze_pending(fp_manager *m, fp__shm_heap *h, uint64_t target,
                           int *busy) {
  uint64_t hw = atomic_load(&m->heap_hw);
  int n = 0;
  *busy = 0;
  for (uint64_t i = 0; i < hw; i++) {
    fp__shm_heap *x = fp__shm_heap_at(m, (int)i);
    if (x == h || FP__HS_TID(atomic_load(&x->state)) == 0 ||
        atomic_load_explicit(&x->squeezed, memory_order_acquire) >= target)
      continue;
    n++;
    *busy |= (int)(atomic_load(&x->pin) & 1);
  }
  return n;
}

static int alloc_after_squeeze(fp_manager *m, fp__shm_heap *h, uint64_t *slot,
                               uint64_t size) {
  uint64_t target = atomic_fetch_add(&m->squeeze, 1) + 1;
  struct timespec since, answered;
  int busy, left, before = -1;
  clock_gettime(CLOCK_MONOTONIC, &since);
  answered = since;
  for (int k = 0; (left = squeeze_pending(m, h, target, &busy)) > 0; k++) {
    if (left != before) {
      before = left;
      clock_gettime(CLOCK_MONOTONIC, &answered);
    }
    if (secs_since(&since) * 1e9 >= (double)SQUEEZE_WAIT_NS ||
        (!busy && secs_since(&answered) * 1e9 >= (double)SQUEEZE_QUIET_NS))
      break;
    if (k < 8)
      sched_yield();
    else
      nanosleep(&(struct timespec){0, 20000}, NULL);
  }
  return alloc_any(m, h, slot, size);
}

void fp__shm_squeezed(fp_manager *m, fp__shm_heap *h) {
  uint64_t s = atomic_load_explicit(&m->squeeze, memory_order_relaxed);
  fp__shm_give_back(m, h);
  atomic_store_explicit(&h->squeezed, s, memory_order_release);
}

int fp__shm_alloc(fp_manager *m, fp__shm_heap *h, uint64_t *slot,
                  uint64_t size) {
  int rc = alloc_any(m, h, slot, size);
  if (rc == FP_ENOMEM && atomic_load(&m->heap_hw) > 1)
    rc = alloc_after_squeeze(m, h, slot, size);
  if (rc == FP_ENOMEM)
    fp__shm_refuse(rc,
                   "the manager's arena is full: no room for %llu bytes "
                   "(arena_size %llu, %llu in use)",
                   (unsigned long long)size, (unsigned long long)m->size,
                   (unsigned long long)m->used);
  else if (rc == FP_EMSGSIZE)
    fp__shm_refuse(rc,
                   "%llu bytes: more than the manager's arena holds "
                   "(arena_size %llu)",
                   (unsigned long long)size, (unsigned long long)m->size);
  return rc;
}

/* fp__shm_alloc, without the message. */
static int alloc_any(fp_manager *m, fp__shm_heap *h, uint64_t *slot,
                     uint64_t size) {
  int c, rc;
  uint64_t n, base;

  if (size > FP__SHM_SMALL_MAX) {
    if ((rc = alloc_pages(m, h, slot, size)) == FP_ENOMEM) {
      fp__shm_make_room(m, h);
      rc = alloc_pages(m, h, slot, size);
    }
    if (rc == FP_ENOMEM) { /* as refill_cache does */
      fp__shm_trim(m, h);
      rc = alloc_pages(m, h, slot, size);
    }
    return rc;
  }
  c = fp__shm_class_of(size);
  if (h->ncache[c] == 0 && refill_cache(m, h, c) == 0) {
    /* No slab of the class fits. A chunk of a page or more can still have
     * pages of its own: the biggest classes' slabs are runs of 10 to 16
     * pages, which a small or fragmented arena may no longer have. */
    if (fp__shm_class_size(c) >= FP__SHM_PAGE)
      return alloc_pages(m, h, slot, size);
    return FP_ENOMEM;
  }
  n = h->ncache[c];
  base = fp__shm_cache_base(c);
  fp__shm_hlog(m, h, &h->ncache[c], n - 1);
  fp__shm_hlog(m, h, slot, h->cache[base + n - 1]);
  fp__shm_hcommit(h);
  return 0;
}

/* Moves the first chunk of h's limbo list b back to use: a small one into
 * the cache (making room first), a large one to the spans. One step. */
static void unlimbo_one(fp_manager *m, fp__shm_heap *h, int b) {
  uint64_t off = h->limbo[b], bytes = fp__shm_chunk_bytes(m, off);
  uint64_t next = *(uint64_t *)fp__shm_ptr(m, off);
  uint64_t w = limbo_weight(m, off);

  spans_add(h, -(int64_t)(w - 1));

  /* A span goes back to the spans, whatever its size: a chunk of a small
   * class may have had pages of its own (fp__shm_alloc). */
  if (fp__shm_large_pages(m, off) != 0) {
    fp__shm_alock(m, h);
    fp__shm_alog(m, &h->limbo[b], next);
    fp__shm_alog(m, &h->nlimbo, h->nlimbo - w);
    fp__shm_free_locked(m, off);
    fp__shm_acommit(m);
    fp__shm_aunlock(m);
    return;
  }
  int c = fp__shm_class_of(bytes);
  uint32_t cap = fp__shm_cache_cap(c);
  if (h->ncache[c] >= cap)
    fp__shm_flush(m, h, h, c, (int)cap / 2);
  uint64_t n = h->ncache[c];
  h->cache[fp__shm_cache_base(c) + n] = off; /* past ncache: unlogged */
  fp__shm_hlog(m, h, &h->limbo[b], next);
  fp__shm_hlog(m, h, &h->nlimbo, h->nlimbo - w);
  fp__shm_hlog(m, h, &h->ncache[c], n + 1);
  fp__shm_hcommit(h);
}

static void unlimbo_all(fp_manager *m, fp__shm_heap *h, int b) {
  while (h->limbo[b] != 0)
    unlimbo_one(m, h, b);
}

/* The body of fp__shm_retire for a chunk at off. Kept out of line: most
 * calls find an empty slot (the release slots of an insert), and return
 * before the prologue a body with calls in it costs. */
static __attribute__((noinline)) void
retire_chunk(fp_manager *m, fp__shm_heap *h, uint64_t *slot, uint64_t off) {
  /* The caller made the unlink visible before this epoch load (a full
   * fence, or the exchange that released the structure's lock). */
  uint64_t e = atomic_load(&m->epoch);
  int b = (int)(e % 3);

  /* A list of an older epoch in this bucket now waits for this epoch
   * too: later reuse is always safe, and retiring touches nothing but h
   * (a survivor repairing a dead thread's journal retires into the dead
   * thread's heap, and must not take locks as that thread). */
  /* Word 0 of a chunk in use is nobody's: link it unlogged. */
  *(uint64_t *)fp__shm_ptr(m, off) = h->limbo[b];
  fp__shm_hlog(m, h, &h->limbo[b], off);
  if (h->limbo_epoch[b] != e)
    fp__shm_hlog(m, h, &h->limbo_epoch[b], e);
  fp__shm_hlog(m, h, &h->nlimbo, h->nlimbo + limbo_weight(m, off));
  fp__shm_hlog(m, h, slot, 0);
  fp__shm_hcommit(h);
  spans_add(h, (int64_t)limbo_weight(m, off) - 1);
}

void fp__shm_retire(fp_manager *m, fp__shm_heap *h, uint64_t *slot,
                    int is_cref) {
  uint64_t v = *slot;

  if (v == 0 || (is_cref && v == 1))
    return;
  retire_chunk(m, h, slot, is_cref ? fp__shm_cref_off(v) : v);
}

/* --- epochs --------------------------------------------------------------- */

/* What this thread saw the last time a heap held the epoch back. */
static __thread struct {
  const fp_manager *m;
  int idx;
  uint64_t pin, pins;
  struct timespec since;
} stuck;

static double secs_since(const struct timespec *t) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)(now.tv_sec - t->tv_sec) +
         (double)(now.tv_nsec - t->tv_nsec) * 1e-9;
}

/* Heap x, pinned at an old epoch, holds the epoch back. If it has done so
 * with the very same pin for over a millisecond, and its owner is dead,
 * clears the pin (a dead thread reads nothing). Returns 1 if cleared. */
static int unstick(fp_manager *m, int i, fp__shm_heap *x, uint64_t pin) {
  uint64_t pins = atomic_load_explicit(&x->pins, memory_order_relaxed), s;

  if (stuck.m != m || stuck.idx != i || stuck.pin != pin ||
      stuck.pins != pins) {
    stuck.m = m;
    stuck.idx = i;
    stuck.pin = pin;
    stuck.pins = pins;
    clock_gettime(CLOCK_MONOTONIC, &stuck.since);
    return 0;
  }
  if (secs_since(&stuck.since) < 1e-3)
    return 0;
  s = atomic_load(&x->state);
  if (!fp__shm_owner_dead(x, s))
    return 0;
  return atomic_compare_exchange_strong(&x->pin, &pin, 0);
}

/* Moves the epoch from e to e + 1 if every pinned heap announced e.
 * Returns the epoch now. Call it unpinned. */
static uint64_t try_advance(fp_manager *m) {
  uint64_t e = atomic_load(&m->epoch), hw = atomic_load(&m->heap_hw);

  for (uint64_t i = 0; i < hw; i++) {
    fp__shm_heap *x = fp__shm_heap_at(m, (int)i);
    uint64_t pin = atomic_load(&x->pin);
    if ((pin & 1) && pin >> 1 != e && !unstick(m, (int)i, x, pin))
      return e;
  }
  if (atomic_compare_exchange_strong(&m->epoch, &e, e + 1))
    return e + 1;
  return e; /* another thread advanced it: e is now newer */
}

/* Frees up to GLIMBO_BATCH chunks of the global limbo that are safe at
 * epoch e, under one hold of the global lock (callers come here once per
 * FP__SHM_LIMBO_TRIGGER retires, so the lock is cheap). Returns 1 if it
 * freed any. */
static int collect_global(fp_manager *m, fp__shm_heap *h, uint64_t e) {
  int freed = 0;

  fp__shm_alock(m, h);
  for (int b = 0; b < 3; b++)
    for (int k = freed;
         k < GLIMBO_BATCH && m->glimbo[b] != 0 && m->glimbo_epoch[b] + 2 <= e;
         k++, freed++) {
      uint64_t off = m->glimbo[b];
      fp__shm_alog(m, &m->glimbo[b], *(uint64_t *)fp__shm_ptr(m, off));
      fp__shm_free_locked(m, off);
      fp__shm_acommit(m);
    }
  fp__shm_aunlock(m);
  return freed != 0;
}

/* Advances the epoch twice if the pins allow (which makes what was
 * retired in the current epoch reusable) and frees h's safe lists. */
static uint64_t collect_own(fp_manager *m, fp__shm_heap *h) {
  uint64_t e = try_advance(m);
  e = try_advance(m);
  for (int b = 0; b < 3; b++)
    if (h->limbo[b] != 0 && h->limbo_epoch[b] + 2 <= e)
      unlimbo_all(m, h, b);
  return e;
}

/* Only its owner frees a heap's limbo, so what a heap holds there no other
 * thread can use. While a call of another thread holds the epoch back (a
 * thread descheduled inside a call, on a busy machine), a writer replacing
 * large values would keep retiring them, and could park most of the
 * arena where its peers' allocations fail with FP_ENOMEM. While the
 * heaps' limbo holds spans of pages worth a quarter of the arena, a heap
 * that holds a 64th itself waits after collecting, unpinned and holding
 * no lock, for the pins to let the epoch move -- a bounded while: the
 * call holding it back may be a long one (a foreach callback). Small
 * chunks never make a heap wait: they hold little. */
#define HOARD_OWN 16    /* this heap's spans: a 64th of the arena, */
#define HOARD_TOTAL 256 /* all heaps' spans together: a quarter */
#define HOARD_WAIT_NS 20000000L

static int hoarding(fp_manager *m, fp__shm_heap *h) {
  uint64_t own = atomic_load_explicit(&h->nlimbo_spans, memory_order_relaxed);
  uint64_t total = 0, hw = atomic_load(&m->heap_hw);
  if (own < HOARD_OWN)
    return 0;
  for (uint64_t i = 0; i < hw && total < HOARD_TOTAL; i++)
    total += atomic_load_explicit(&fp__shm_heap_at(m, (int)i)->nlimbo_spans,
                                  memory_order_relaxed);
  return total >= HOARD_TOTAL;
}

static uint64_t wait_out_hoard(fp_manager *m, fp__shm_heap *h, uint64_t e) {
  struct timespec since;
  clock_gettime(CLOCK_MONOTONIC, &since);
  for (int k = 0; hoarding(m, h); k++) {
    if (secs_since(&since) * 1e9 >= (double)HOARD_WAIT_NS)
      break;
    if (k < 8)
      sched_yield();
    else
      nanosleep(&(struct timespec){0, 50000}, NULL);
    e = collect_own(m, h);
  }
  return e;
}

void fp__shm_collect(fp_manager *m, fp__shm_heap *h, uint64_t min) {
  uint64_t e = atomic_load(&m->epoch);

  if (h->nlimbo >= min)
    e = collect_own(m, h);
  else
    for (int b = 0; b < 3; b++)
      if (h->limbo[b] != 0 && h->limbo_epoch[b] + 2 <= e)
        unlimbo_all(m, h, b);
  if (hoarding(m, h))
    e = wait_out_hoard(m, h, e);
  while (collect_global(m, h, e))
    ;
}

/* --- draining a heap -------------------------------------------------- */

/* Moves heap d's limbo list b onto heap `to`'s limbo, or onto the global
 * limbo when `to` is NULL, in one step of the global lock (held by the
 * caller). Merged lists wait for the newer of the two epochs. */
static void limbo_move(fp_manager *m, fp__shm_heap *d, int b,
                       fp__shm_heap *to) {
  uint64_t head = d->limbo[b], tail = head, t = d->limbo_epoch[b];
  uint64_t n = limbo_weight(m, head), chunks = 1;
  uint64_t *list = to != NULL ? to->limbo : m->glimbo;
  uint64_t *epoch = to != NULL ? to->limbo_epoch : m->glimbo_epoch;
  int g = (int)(t % 3);

  while (*(uint64_t *)fp__shm_ptr(m, tail) != 0) {
    tail = *(uint64_t *)fp__shm_ptr(m, tail);
    n += limbo_weight(m, tail);
    chunks++;
  }
  if (to != NULL)
    spans_add(to, (int64_t)(n - chunks));
  fp__shm_alog(m, fp__shm_ptr(m, tail), list[g]);
  fp__shm_alog(m, &list[g], head);
  if (epoch[g] < t)
    fp__shm_alog(m, &epoch[g], t);
  if (to != NULL)
    fp__shm_alog(m, &to->nlimbo, to->nlimbo + n);
  fp__shm_alog(m, &d->limbo[b], 0);
  fp__shm_alog(m, &d->nlimbo, d->nlimbo - n);
}

/* A dead heap's retired chunks join the reclaimer's own limbo rather than
 * the global one: the reclaimer's next collection frees them, and
 * fp__shm_make_room may free them before the epoch moves (it cannot do so
 * with the global limbo, which also holds destroyed objects). A released
 * heap (h == d) has nobody to hand them to. */
void fp__shm_heap_drain(fp_manager *m, fp__shm_heap *h, fp__shm_heap *d) {
  for (int c = 0; c < FP__SHM_NCLASS; c++)
    while (d->ncache[c] != 0)
      fp__shm_flush(m, h, d, c, (int)d->ncache[c]);
  fp__shm_alock(m, h);
  for (int b = 0; b < 3; b++)
    if (d->limbo[b] != 0)
      limbo_move(m, d, b, d != h ? h : NULL);
  fp__shm_acommit(m);
  fp__shm_aunlock(m);
  atomic_store_explicit(&d->nlimbo_spans, 0, memory_order_relaxed);
}

/* --- making room ---------------------------------------------------------- */

/* Returns 1 if every heap but h is unpinned or pinned in an epoch after t:
 * then no call of another thread can still see a chunk retired in epoch t
 * (the condition try_advance checks before the advance that frees it, with
 * h left out). */
static int others_past(fp_manager *m, const fp__shm_heap *h, uint64_t t) {
  uint64_t hw = atomic_load(&m->heap_hw);

  for (uint64_t i = 0; i < hw; i++) {
    fp__shm_heap *x = fp__shm_heap_at(m, (int)i);
    uint64_t pin = atomic_load(&x->pin);
    if (x != h && (pin & 1) && pin >> 1 <= t)
      return 0;
  }
  return 1;
}

static int (*reclaimer)(fp_manager *m); /* arena.h, fp__shm_set_reclaimer */

void fp__shm_set_reclaimer(int (*reclaim_dead)(fp_manager *m)) {
  reclaimer = reclaim_dead;
}

/* The caller may be pinned, and its own pin then stops the epoch one short
 * of freeing what was retired in the current epoch. For h's limbo (what h
 * retired, and what the dead heaps it reclaimed had retired) that pin
 * protects nothing: an allocating call uses only the object it is in, its
 * alloc slots and what it read under the lock of the structure it changes
 * (arena.h, fp__shm_alloc), and a retired chunk was unlinked from its
 * structure before it was retired. So h's lists go back as soon as no
 * other call can see them. The global limbo waits for the epoch: it holds
 * destroyed objects, and the caller may be inside one whose destroy a
 * racing thread just finished (a list append allocates before it takes
 * the list's lock). */
void fp__shm_make_room(fp_manager *m, fp__shm_heap *h) {
  uint64_t e;

  /* Threads that died, or exited without releasing their heap (a process
   * whose main thread returns from main or calls exit() runs no
   * thread-key destructor): their caches go back to the slabs, their
   * limbo joins h's (fp__shm_heap_drain). The calling thread's heap is h,
   * which the reclaim leaves alone. */
  if (reclaimer != NULL)
    reclaimer(m);
  e = try_advance(m);
  e = try_advance(m);
  for (int b = 0; b < 3; b++)
    if (h->limbo[b] != 0 &&
        (h->limbo_epoch[b] + 2 <= e || others_past(m, h, h->limbo_epoch[b])))
      unlimbo_all(m, h, b);
  while (collect_global(m, h, e))
    ;
  /* Cached chunks keep their slabs alive, and a slab's pages merge with
   * their neighbours only once it is empty. The one empty slab each class
   * keeps for its next refill stays: fp__shm_alloc and fp__shm_obj_new
   * give those back (fp__shm_trim) only when this was not enough. */
  for (int c = 0; c < FP__SHM_NCLASS; c++)
    while (h->ncache[c] != 0)
      fp__shm_flush(m, h, h, c, (int)h->ncache[c]);
  fp__shm_room_made(m, h);
}

int fp__shm_give_back(fp_manager *m, fp__shm_heap *h) {
  fp__shm_collect(m, h, 0);
  for (int c = 0; c < FP__SHM_NCLASS; c++)
    while (h->ncache[c] != 0)
      fp__shm_flush(m, h, h, c, (int)h->ncache[c]);
  return h->nlimbo != 0;
}

/* --- consistency check ---------------------------------------------------- */

int fp__shm_heap_check(fp__shm_checker *c, fp__shm_heap *h) {
  uint64_t n, total = 0;
  int rc = 0, idx = fp__shm_heap_idx(c->m, h);
  char what[64]; /* "heap %d cache %d slot %llu" fits */

  if (h->nlog != 0 || h->j.state != FP__J_IDLE || h->j.nundo != 0 ||
      h->j.alloc[0] || h->j.alloc[1] || h->j.release[0] || h->j.release[1] ||
      h->j.deep_n || h->j.deep_from || h->j.deep_ring)
    return fp__shm_fail(c, "heap %d: log or journal not idle", idx);
  for (int k = 0; k < FP__SHM_NCLASS && rc == 0; k++) {
    if (h->ncache[k] > fp__shm_cache_cap(k))
      return fp__shm_fail(c, "heap %d: cache %d overfull", idx, k);
    for (uint64_t i = 0; i < h->ncache[k] && rc == 0; i++) {
      uint64_t off = h->cache[fp__shm_cache_base(k) + i];
      /* A span of pages (a big class's fallback) never goes in a cache:
       * one page has a class's size, but flushing it to a slab would
       * corrupt the arena. */
      if (fp__shm_chunk_bytes(c->m, off) != fp__shm_class_size(k) ||
          fp__shm_large_pages(c->m, off) != 0)
        return fp__shm_fail(c, "heap %d: cached chunk of another class", idx);
      snprintf(what, sizeof(what), "heap %d cache %d slot %llu", idx, k,
               (unsigned long long)i);
      rc = fp__shm_claim(c, off, what);
    }
  }
  for (int b = 0; b < 3 && rc == 0; b++) {
    snprintf(what, sizeof(what), "heap %d limbo %d", idx, b);
    rc = fp__shm_claim_list(c, h->limbo[b], &n, what);
    for (uint64_t off = h->limbo[b]; rc == 0 && off != 0;
         off = *(uint64_t *)fp__shm_ptr(c->m, off))
      total += limbo_weight(c->m, off);
  }
  if (rc == 0 && total != h->nlimbo)
    rc = fp__shm_fail(c, "heap %d: retired chunks weigh %llu, heap says %llu",
                      idx, (unsigned long long)total,
                      (unsigned long long)h->nlimbo);
  return rc;
}
