/* SPDX-License-Identifier: MIT */
/* journal.c - the per-heap journal that makes a structure update atomic
 * when its thread is killed half-way.
 *
 * A thread updates a dict stripe or a list only while holding its lock,
 * and holds one such lock at a time, so each heap needs one journal. An
 * update
 *   1. marks the journal ACTIVE (fp__shm_jbegin);
 *   2. allocates new chunks (a node, a bigger table) into the journal's
 *      alloc slots -- the heap writes the slot in the same logged step as
 *      its own bookkeeping -- and fills them while nothing points at them;
 *   3. records chunks it unlinks in the release slots, and changes each
 *      reachable word (a table word, a count) through fp__shm_jset, which
 *      first appends the word's old value to the undo log;
 *   4. publishes: fp__shm_jpublish logs the old and new values of the
 *      words lock-free readers see the update by (a bucket, a list's
 *      length), then stores them, the first one first;
 *   5. marks the journal COMMITTED, retires the release slots, and marks
 *      it IDLE.
 * The lock word names the holder's heap, so a survivor that takes the lock
 * over from a dead holder finds this journal (thread.c) and repairs it.
 * ACTIVE: if the publication's first word holds its new value, a reader
 * may have seen the update, so it must stand: the repair stores the
 * publication's values again and rolls forward; otherwise it restores the
 * undo log newest first and retires the alloc slots (rollback). COMMITTED
 * retires what is left in the release slots (roll forward). Every repair
 * step is idempotent. Rolling back an update a reader had seen would let
 * a key, or a list item, appear and then vanish, and a lock-free add_int
 * on such a key would be lost with it.
 *
 * Chunks are retired, not freed (heap.c): lock-free readers may still be
 * looking at an unlinked node, and at a node a rollback unpublished.
 */
#include "ipc/shm/arena.h"

#include <stdlib.h>
#include <string.h>

void fp__shm_jbegin(fp__shm_heap *h) {
  h->j.nundo = 0;
  h->j.npub = 0;
  FP__SHM_BARRIER();
  h->j.state = FP__J_ACTIVE;
  FP__SHM_BARRIER();
  FP__SHM_CRASH_POINT();
}

void fp__shm_jset(fp_manager *m, fp__shm_heap *h, uint64_t *word, uint64_t v) {
  fp__shm_journal *j = &h->j;

  if (j->nundo >= FP__SHM_UNDO_MAX)
    abort(); /* updates log a handful of words: broken invariant */
  j->undo[j->nundo].off = fp__shm_off(m, word);
  j->undo[j->nundo].old = *word;
  FP__SHM_BARRIER();
  j->nundo++;
  FP__SHM_BARRIER();
  FP__SHM_CRASH_POINT();
  /* A relaxed atomic store: lock-free readers load these words. */
  atomic_store_explicit((_Atomic uint64_t *)word, v, memory_order_release);
  FP__SHM_BARRIER();
  FP__SHM_CRASH_POINT();
}

void fp__shm_jpublish(fp_manager *m, fp__shm_heap *h, uint64_t *const *words,
                      const uint64_t *vals, int n) {
  fp__shm_journal *j = &h->j;

  if (n < 1 || n > FP__SHM_PUB_MAX || j->nundo + (uint32_t)n > FP__SHM_UNDO_MAX)
    abort(); /* updates publish a handful of words: broken invariant */
  for (int k = 0; k < n; k++) {
    j->undo[j->nundo + k].off = fp__shm_off(m, words[k]);
    j->undo[j->nundo + k].old = *words[k];
    j->pub_new[k] = vals[k];
  }
  j->pub_first = j->nundo;
  FP__SHM_BARRIER();
  j->nundo += (uint32_t)n;
  FP__SHM_BARRIER();
  j->npub = (uint32_t)n; /* the log is complete: a repair may trust it */
  FP__SHM_BARRIER();
  FP__SHM_CRASH_POINT();
  for (int k = 0; k < n; k++) {
    atomic_store_explicit((_Atomic uint64_t *)words[k], vals[k],
                          memory_order_release);
    FP__SHM_BARRIER();
    FP__SHM_CRASH_POINT();
  }
}

/* Whether dead heap d's ACTIVE update was published: its publication is
 * logged and the first word holds the new value. (A publication whose
 * first word keeps its value changes nothing a reader could tell.) */
static int published(fp_manager *m, const fp__shm_heap *d) {
  const fp__shm_journal *j = &d->j;

  if (j->npub == 0 || j->npub > FP__SHM_PUB_MAX ||
      j->pub_first + j->npub > FP__SHM_UNDO_MAX)
    return 0;
  const fp__shm_undo *u = &j->undo[j->pub_first];
  return atomic_load((_Atomic uint64_t *)fp__shm_ptr(m, u->off)) != u->old;
}

/* Completes dead heap d's published update: stores its publication again
 * (the owner may have died between two of its stores), then marks the
 * journal COMMITTED, for forward() to finish. */
static void republish(fp_manager *m, fp__shm_heap *d) {
  fp__shm_journal *j = &d->j;

  for (uint32_t k = 0; k < j->npub; k++) {
    atomic_store_explicit(
        (_Atomic uint64_t *)fp__shm_ptr(m, j->undo[j->pub_first + k].off),
        j->pub_new[k], memory_order_release);
    FP__SHM_BARRIER();
    FP__SHM_CRASH_POINT();
  }
  j->state = FP__J_COMMITTED;
  FP__SHM_BARRIER();
  FP__SHM_CRASH_POINT();
}

/* Rolls an ACTIVE update of heap d back. */
static void rollback(fp_manager *m, fp__shm_heap *d) {
  fp__shm_journal *j = &d->j;
  uint32_t n = j->nundo > FP__SHM_UNDO_MAX ? FP__SHM_UNDO_MAX : j->nundo;

  while (n-- > 0) {
    atomic_store_explicit((_Atomic uint64_t *)fp__shm_ptr(m, j->undo[n].off),
                          j->undo[n].old, memory_order_release);
    FP__SHM_BARRIER();
    FP__SHM_CRASH_POINT();
  }
  j->nundo = 0;
  j->npub = 0;
  j->deep_n = 0;
  j->deep_from = j->deep_ring = 0;
  j->release[0] = j->release[1] = 0;
  atomic_thread_fence(memory_order_seq_cst); /* the restores, then retire */
  for (int k = 0; k < 2; k++)
    fp__shm_retire(m, d, &j->alloc[k], 0);
  j->state = FP__J_IDLE;
  FP__SHM_BARRIER();
}

/* Rolls a COMMITTED update of heap d forward: the alloc slots now belong
 * to the structure; retire the release slots, the entries of a deep
 * release first (each zeroed as it goes), then deep_n, then the table.
 * fenced: the caller just released the structure's lock, whose exchange
 * made the update's unlinking stores visible (see fp__shm_retire). */
static void forward(fp_manager *m, fp__shm_heap *d, int fenced) {
  fp__shm_journal *j = &d->j;

  if (!fenced)
    atomic_thread_fence(memory_order_seq_cst);
  j->alloc[0] = j->alloc[1] = 0;
  j->nundo = 0;
  j->npub = 0;
  if (j->deep_n != 0 && j->release[0] != 0) {
    uint64_t *e = (uint64_t *)fp__shm_ptr(m, j->release[0]) + 2;
    uint64_t mask = j->deep_ring ? j->deep_ring - 1 : UINT64_MAX;
    for (uint64_t i = 0; i < j->deep_n; i++)
      fp__shm_retire(m, d, &e[(j->deep_from + i) & mask], 1);
  }
  FP__SHM_BARRIER();
  j->deep_n = 0;
  FP__SHM_BARRIER();
  /* Meaningless with deep_n 0: a crash before this is fine. */
  j->deep_from = j->deep_ring = 0;
  FP__SHM_BARRIER();
  FP__SHM_CRASH_POINT();
  for (int k = 0; k < 2; k++)
    fp__shm_retire(m, d, &j->release[k], 0);
  j->state = FP__J_IDLE;
  FP__SHM_BARRIER();
}

void fp__shm_jmark(fp__shm_heap *h) {
  FP__SHM_BARRIER();
  h->j.state = FP__J_COMMITTED;
  FP__SHM_BARRIER();
  FP__SHM_CRASH_POINT();
}

void fp__shm_jfinish(fp_manager *m, fp__shm_heap *h) {
  forward(m, h, 1);
}

void fp__shm_jcommit(fp_manager *m, fp__shm_heap *h) {
  fp__shm_jmark(h);
  forward(m, h, 0);
}

void fp__shm_jabort(fp_manager *m, fp__shm_heap *h) {
  rollback(m, h);
}

void fp__shm_jrepair(fp_manager *m, fp__shm_heap *d) {
  if (d->j.state == FP__J_IDLE)
    return;
  atomic_fetch_add(&m->repairs, 1);
  if (d->j.state == FP__J_ACTIVE && published(m, d))
    republish(m, d);
  if (d->j.state == FP__J_ACTIVE)
    rollback(m, d);
  else
    forward(m, d, 0);
}
