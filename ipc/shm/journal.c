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
 *   3. changes each reachable word (a bucket, a count, a table word)
 *      through fp__shm_jset, which first appends the word's old value to
 *      the undo log;
 *   4. records chunks it unlinked in the release slots, marks the journal
 *      COMMITTED, retires them, and marks it IDLE.
 * The lock word names the holder's heap, so a survivor that takes the lock
 * over from a dead holder finds this journal (thread.c) and repairs it:
 * ACTIVE restores the undo log newest first and retires the alloc slots
 * (rollback); COMMITTED retires what is left in the release slots (roll
 * forward). Every repair step is idempotent.
 *
 * Chunks are retired, not freed (heap.c): lock-free readers may still be
 * looking at an unlinked node, and at a node a rollback unpublished.
 */
#include "ipc/shm/arena.h"

#include <stdlib.h>
#include <string.h>

void fp__shm_jbegin(fp__shm_heap *h) {
  h->j.nundo = 0;
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
  j->deep_n = 0;
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
  if (j->deep_n != 0 && j->release[0] != 0) {
    uint64_t *e = (uint64_t *)fp__shm_ptr(m, j->release[0]) + 2;
    for (uint64_t i = 0; i < j->deep_n; i++)
      fp__shm_retire(m, d, &e[i], 1);
  }
  FP__SHM_BARRIER();
  j->deep_n = 0;
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
  if (d->j.state == FP__J_ACTIVE)
    rollback(m, d);
  else
    forward(m, d, 0);
}
