/* SPDX-License-Identifier: MIT */
/* thread.c - binding threads to heaps, structure locks, and reclaiming the
 * heap of a thread that died.
 *
 * A thread's first call on a manager claims a free slot of the manager's
 * heap table by one compare-and-swap of the slot's state word (its thread
 * id and a new generation), and remembers the heap in a small thread-local
 * table keyed by manager address and identity (its least recently bound
 * entries spill to a list on the side: a binding is never dropped to make
 * room, as a call up the stack -- a foreach whose callback uses other
 * managers -- may be using its heap). A forked child has new
 * thread ids and must not use its parent's heaps: the thread-local
 * entries carry the process's fork generation (ipc/wire/forkgen.c, which
 * changes in every child, made by fork(), _Fork() or a raw system call).
 * A thread that exits releases its heaps (a pthread key
 * destructor returns their cached chunks and frees the slots), in the
 * managers still mapped in the process (fp__shm_mapped_add/remove).
 *
 * A thread that dies instead (SIGKILL, a crash) leaves its heap owned by a
 * dead thread id. Survivors find it three ways: a lock whose word names the
 * heap (fp__shm_lock), a heap that holds the epoch back (heap.c clears its
 * pin), or a full heap table (claim adopts a dead heap). Reclaiming a heap
 * first marks it (bit 63 and the reclaimer's thread id in the state word,
 * so that others wait for a live reclaimer and take over from a dead one),
 * then settles the global allocator, replays the heap's own log, repairs
 * its journal -- which restores or finishes the structure update the dead
 * thread was making under the lock -- and only then frees the slot or
 * adopts it under a new generation. Waiters on a lock the dead thread held
 * see the generation change only after the repair, and then take the lock.
 */
#include "ipc/shm/arena.h"
#include "ipc/wire/error.h"
#include "ipc/wire/forkgen.h"
#include "ipc/wire/idle.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NBIND 8

/* One thread's heap in one manager. Valid while fgen is this process's
 * fork generation (ipc/wire/forkgen.h). */
typedef struct bind {
  fp_manager *m;
  uint64_t id;
  uint64_t fgen;
  fp__shm_heap *h;
} bind;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_key_t exit_key;
static pthread_mutex_t mapped_mu = PTHREAD_MUTEX_INITIALIZER;
typedef struct mapping {
  fp_manager *m;
  uint64_t id;
  int copy; /* mapped before this process became an MPI worker rank */
} mapping;
static mapping *mapped;
static size_t nmapped, capmapped;
/* The MPI worker rank this process serves (inherited by its forks); 0 on
 * rank 0 and without MPI. Written once, before any thread of ours runs
 * tasks, so plain loads suffice. */
static int worker_rank;

static __thread bind binds[NBIND]; /* looked at on every call */
static __thread bind *spill;        /* the rest (malloc'd) */
static __thread size_t nspill, capspill;
static __thread struct {
  uint64_t fgen;
  uint32_t tid;
  uint64_t start;
} me_cache;

/* --- who am I ------------------------------------------------------------- */

static uint32_t my_tid(void) {
  uint64_t g = fp__fork_gen();
  if (me_cache.fgen != g) {
    me_cache.tid = (uint32_t)syscall(SYS_gettid);
    me_cache.start = fp__shm_start_time(me_cache.tid);
    me_cache.fgen = g;
  }
  return me_cache.tid;
}

uint32_t fp__shm_my_tid(void) {
  return my_tid();
}

static uint64_t my_start(void) {
  my_tid();
  return me_cache.start;
}

/* --- the mapped managers -------------------------------------------------- */

static void atfork_prepare(void) {
  pthread_mutex_lock(&mapped_mu);
}
static void atfork_parent(void) {
  pthread_mutex_unlock(&mapped_mu);
}
static void atfork_child(void) {
  pthread_mutex_unlock(&mapped_mu);
}

static int is_mapped_locked(const fp_manager *m, uint64_t id) {
  for (size_t i = 0; i < nmapped; i++)
    if (mapped[i].m == m && mapped[i].id == id)
      return 1;
  return 0;
}

void fp__shm_mapped_add(fp_manager *m) {
  pthread_mutex_lock(&mapped_mu);
  if (nmapped == capmapped) {
    size_t cap = capmapped ? capmapped * 2 : 8;
    void *p = realloc(mapped, cap * sizeof(*mapped));
    if (p == NULL) { /* then this manager's heaps are not released at
                        thread exit: reclaimed once the thread is gone */
      pthread_mutex_unlock(&mapped_mu);
      return;
    }
    mapped = p;
    capmapped = cap;
  }
  mapped[nmapped].m = m;
  mapped[nmapped].copy = 0;
  mapped[nmapped++].id = m->id;
  pthread_mutex_unlock(&mapped_mu);
}

void fp__shm_enter_worker_rank(int rank) {
  pthread_mutex_lock(&mapped_mu);
  worker_rank = rank > 0 ? rank : 0;
  for (size_t i = 0; i < nmapped; i++)
    mapped[i].copy = 1;
  pthread_mutex_unlock(&mapped_mu);
}

int fp__shm_ref_refused(const fp_manager *m, const char *call, int *err) {
  char msg[400];
  int found = 0, copy = 0;
  if (worker_rank == 0)
    return 0; /* rank 0, or no MPI: the ref's own checks decide */
  pthread_mutex_lock(&mapped_mu);
  for (size_t i = 0; i < nmapped && !found; i++)
    if (mapped[i].m == m) {
      found = 1;
      copy = mapped[i].copy;
    }
  pthread_mutex_unlock(&mapped_mu);
  if (found && !copy)
    return 0;
  /* Not one of ours, or our copy: a ref of rank 0 names memory that does
   * not exist here, so any answer would be wrong. */
  *err = found ? FP_ENOTSUP : FP_EINVAL;
  snprintf(msg, sizeof(msg),
           "%s: Manager objects do not cross MPI ranks: this process "
           "serves worker rank %d, and %s (docs/mpi.md)",
           call, worker_rank,
           m == NULL ? "has no manager (NULL): rank 0's shared memory is not "
                       "mapped here"
           : found   ? "this manager was made before fp_pool_new(), so it is "
                       "this rank's own copy, not rank 0's shared memory"
                     : "no manager is mapped at that address here");
  fp__set_last_error(*err, msg);
  fp_task_fail("%s", msg);
  return 1;
}

static int release(fp_manager *m, fp__shm_heap *h);

void fp__shm_mapped_remove(fp_manager *m) {
  uint64_t g = fp__fork_gen();

  pthread_mutex_lock(&mapped_mu);
  /* The caller's own heap goes back now; other threads' heaps stay owned
   * by them until they exit (and are then reclaimed as dead). */
  for (int i = 0; i < NBIND; i++)
    if (binds[i].m == m && binds[i].id == m->id && binds[i].fgen == g) {
      release(m, binds[i].h);
      memset(&binds[i], 0, sizeof(binds[i]));
    }
  for (size_t i = 0; i < nspill; i++)
    if (spill[i].m == m && spill[i].id == m->id && spill[i].fgen == g) {
      release(m, spill[i].h);
      spill[i--] = spill[--nspill];
    }
  for (size_t i = 0; i < nmapped; i++)
    if (mapped[i].m == m) {
      mapped[i] = mapped[--nmapped];
      break;
    }
  pthread_mutex_unlock(&mapped_mu);
}

/* Calls fn on each of the calling thread's heaps of this process, in the
 * managers still mapped (mapped_mu held); returns how many returned
 * non-zero. */
static int each_heap_locked(int (*fn)(fp_manager *, fp__shm_heap *)) {
  uint64_t g = fp__fork_gen();
  int n = 0;

  for (int i = 0; i < NBIND; i++)
    if (binds[i].h != NULL && binds[i].fgen == g &&
        is_mapped_locked(binds[i].m, binds[i].id))
      n += fn(binds[i].m, binds[i].h) != 0;
  for (size_t i = 0; i < nspill; i++)
    if (spill[i].fgen == g && is_mapped_locked(spill[i].m, spill[i].id))
      n += fn(spill[i].m, spill[i].h) != 0;
  return n;
}

int fp__shm_thread_idle(void) {
  pthread_mutex_lock(&mapped_mu);
  int left = each_heap_locked(fp__shm_give_back);
  pthread_mutex_unlock(&mapped_mu);
  return left != 0;
}

/* The pthread key destructor: the thread exits between calls. */
static void on_thread_exit(void *arg) {
  pthread_mutex_lock(&mapped_mu);
  each_heap_locked(release);
  memset(binds, 0, sizeof(binds));
  free(spill);
  spill = NULL;
  nspill = capspill = 0;
  pthread_mutex_unlock(&mapped_mu);
}

static void init_once(void) {
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
  pthread_key_create(&exit_key, on_thread_exit);
  fp__shm_set_reclaimer(fp__shm_reclaim_dead);
  fp__idle_hook_set(fp__shm_thread_idle);
}

/* --- claiming, releasing, reclaiming -------------------------------------- */

static void bump_hw(fp_manager *m, uint64_t n) {
  uint64_t hw = atomic_load(&m->heap_hw);
  while (hw < n && !atomic_compare_exchange_weak(&m->heap_hw, &hw, n))
    ;
}

/* Frees heap h's slot after its chunks went back: start first, so that a
 * later owner's liveness is never judged by this owner's start time. */
static void free_slot(fp__shm_heap *h, uint64_t s) {
  atomic_store(&h->start, 0);
  atomic_store(&h->state, FP__HS_MAKE(FP__HS_GEN(s), 0));
}

/* Releases the caller's own heap (between calls). Returns 0, in
 * each_heap_locked's shape: nothing is left to the heap. */
static int release(fp_manager *m, fp__shm_heap *h) {
  fp__shm_collect(m, h, 0);
  fp__shm_heap_drain(m, h, h);
  free_slot(h, atomic_load(&h->state));
  return 0;
}

/* Puts dead heap d, marked as being reclaimed by us, back in order: the
 * global allocator first (a step d died in may have touched d's words),
 * then d's own log, then d's journal. locker takes the global lock. */
static void repair(fp_manager *m, const fp__shm_heap *locker, fp__shm_heap *d) {
  atomic_store(&d->pin, 0);
  fp__shm_alock(m, locker);
  fp__shm_aunlock(m);
  fp__shm_hrollback(m, d);
  fp__shm_jrepair(m, d);
}

/* Marks heap d (seen in state s, owner dead or reclaimer dead) as being
 * reclaimed by the calling thread. Returns the marked state, or 0 if d
 * changed meanwhile. */
static uint64_t mark(fp__shm_heap *d, uint64_t s) {
  uint64_t ns = FP__HS_RECLAIM | FP__HS_MAKE(FP__HS_GEN(s), my_tid());
  return atomic_compare_exchange_strong(&d->state, &s, ns) ? ns : 0;
}

void fp__shm_reclaim(fp_manager *m, fp__shm_heap *h, fp__shm_heap *d,
                     uint32_t gen) {
  uint64_t s, ns;

  for (;;) {
    s = atomic_load(&d->state);
    if (FP__HS_TID(s) == 0 || FP__HS_GEN(s) != gen || d == h)
      return;
    if (!fp__shm_owner_dead(d, s)) {
      if (!(s & FP__HS_RECLAIM))
        return; /* a live owner: nothing to reclaim */
      nanosleep(&(struct timespec){0, 100000}, NULL); /* a live reclaimer */
      continue;
    }
    if ((ns = mark(d, s)) != 0)
      break;
  }
  repair(m, h, d);
  fp__shm_heap_drain(m, h, d);
  free_slot(d, ns);
}

/* Adopts dead heap d (seen in state s) as the calling thread's: repaired
 * as any reclaim, then owned under the next generation, caches and limbo
 * kept. Returns 1, or 0 if another thread moved first. */
static int adopt(fp_manager *m, fp__shm_heap *d, uint64_t s) {
  uint64_t ns = mark(d, s);

  if (ns == 0)
    return 0;
  repair(m, d, d); /* the global lock as d's marked identity */
  atomic_store(&d->start, 0);
  atomic_store(&d->state, FP__HS_MAKE(FP__HS_GEN(ns) + 1, my_tid()));
  atomic_store(&d->start, my_start());
  return 1;
}

/* Claims a free heap slot, or adopts a dead thread's. NULL if every slot
 * belongs to a live thread. */
static fp__shm_heap *claim(fp_manager *m) {
  for (uint64_t i = 0; i < m->nheaps; i++) {
    fp__shm_heap *h = fp__shm_heap_at(m, (int)i);
    uint64_t s = atomic_load(&h->state);
    if (FP__HS_TID(s) != 0)
      continue;
    if (atomic_compare_exchange_strong(
            &h->state, &s, FP__HS_MAKE(FP__HS_GEN(s) + 1, my_tid()))) {
      atomic_store(&h->start, my_start());
      bump_hw(m, i + 1);
      return h;
    }
  }
  for (uint64_t i = 0; i < m->nheaps; i++) {
    fp__shm_heap *h = fp__shm_heap_at(m, (int)i);
    uint64_t s = atomic_load(&h->state);
    if (FP__HS_TID(s) != 0 && fp__shm_owner_dead(h, s) && adopt(m, h, s))
      return h;
  }
  return NULL;
}

/* Whether binding b is usable: made in this process (fork generation g),
 * its manager still mapped. Other entries are free: a dead one's heap was
 * released by fp__shm_mapped_remove, or belongs to the parent process. */
static int bind_live_locked(const bind *b, uint64_t g) {
  return b->h != NULL && b->fgen == g && is_mapped_locked(b->m, b->id);
}

/* A free entry of binds, or -1. */
static int free_bind_locked(uint64_t g) {
  for (int i = 0; i < NBIND; i++)
    if (!bind_live_locked(&binds[i], g))
      return i;
  return -1;
}

/* Finds m's binding in the spill list (dropping dead entries on the way);
 * -1 when there is none. */
static long find_spilled_locked(const fp_manager *m, uint64_t g) {
  for (size_t i = 0; i < nspill; i++) {
    if (!bind_live_locked(&spill[i], g))
      spill[i--] = spill[--nspill];
    else if (spill[i].m == m && spill[i].id == m->id)
      return (long)i;
  }
  return -1;
}

/* Room for one more spilled entry. */
static int spill_reserve_locked(void) {
  if (nspill < capspill)
    return 0;
  size_t cap = capspill ? capspill * 2 : NBIND;
  bind *p = realloc(spill, cap * sizeof(*p));
  if (p == NULL)
    return FP_ENOMEM;
  spill = p;
  capspill = cap;
  return 0;
}

/* Puts b in binds: in a free entry, else in place of the least recently
 * bound, which moves to the spill list -- at spilled index `from` when b
 * came from there (a swap), else at its end (reserved by the caller). */
static void bind_put_locked(bind b, uint64_t g, long from) {
  int slot = free_bind_locked(g);

  if (slot >= 0) {
    if (from >= 0)
      spill[from] = spill[--nspill];
    binds[slot] = b;
    return;
  }
  bind old = binds[0];
  memmove(binds, binds + 1, sizeof(binds[0]) * (NBIND - 1));
  binds[NBIND - 1] = b;
  spill[from >= 0 ? (size_t)from : nspill++] = old;
}

/* The slow half of fp__shm_heap_get: the thread's spilled binding of m,
 * or a newly claimed heap. NULL when every slot of m's heap table belongs
 * to a live thread, or no memory is left to remember one more binding. */
static fp__shm_heap *bind_slow(fp_manager *m) {
  uint64_t g;
  fp__shm_heap *h = NULL;
  long at;

  pthread_once(&once, init_once);
  g = fp__fork_gen();
  pthread_mutex_lock(&mapped_mu);
  if ((at = find_spilled_locked(m, g)) >= 0) {
    h = spill[at].h;
    bind_put_locked(spill[at], g, at);
  } else if (free_bind_locked(g) < 0 && spill_reserve_locked() != 0) {
    pthread_mutex_unlock(&mapped_mu);
    fp__shm_refuse(FP_ENOMEM, "out of memory for this thread's binding to "
                              "the manager");
    return NULL;
  }
  pthread_mutex_unlock(&mapped_mu);
  if (h != NULL)
    return h;
  if ((h = claim(m)) == NULL) {
    fp__shm_refuse(FP_ENOMEM, "no free heap slot in the manager: every "
                              "slot is held by a live thread");
    return NULL;
  }
  /* Only this thread changes its entries, and the room reserved above is
   * still there: the put cannot fail. */
  pthread_mutex_lock(&mapped_mu);
  bind_put_locked((bind){m, m->id, g, h}, g, -1);
  pthread_mutex_unlock(&mapped_mu);
  pthread_setspecific(exit_key, (void *)1);
  return h;
}

fp__shm_heap *fp__shm_heap_get(fp_manager *m) {
  uint64_t g = fp__fork_gen();
  for (int i = 0; i < NBIND; i++)
    if (binds[i].m == m && binds[i].fgen == g && binds[i].id == m->id)
      return binds[i].h;
  return bind_slow(m);
}

/* --- structure locks ------------------------------------------------------ */

/* After a lock was taken over: the dead holder may itself have been
 * reclaiming the heap of an earlier holder of this lock (which is how it
 * came to hold it), and died half-way. Finishes every reclaim whose
 * reclaimer is dead, so that the structure is whole before it is used. */
static void finish_dead_reclaims(fp_manager *m, fp__shm_heap *h) {
  for (uint64_t i = 0; i < atomic_load(&m->heap_hw); i++) {
    fp__shm_heap *d = fp__shm_heap_at(m, (int)i);
    uint64_t s = atomic_load(&d->state);
    if ((s & FP__HS_RECLAIM) && fp__shm_owner_dead(d, s))
      fp__shm_reclaim(m, h, d, FP__HS_GEN(s));
  }
}

void fp__shm_lock(fp_manager *m, fp__shm_heap *h, fp__shm_mutex *mu,
                  uint32_t first_poll) {
  uint32_t dead = fp__shm_mutex_lock(m, mu, fp__shm_me(m, h), first_poll);
  int i;

  if (dead == 0)
    return;
  atomic_fetch_add(&m->recovered, 1);
  i = FP__SHM_OWNER_IDX(dead);
  if (i >= 0 && (uint64_t)i < m->nheaps)
    fp__shm_reclaim(m, h, fp__shm_heap_at(m, i), FP__SHM_OWNER_GEN(dead));
  finish_dead_reclaims(m, h);
}

int fp__shm_reclaim_dead(fp_manager *m) {
  fp__shm_heap *h = fp__shm_heap_get(m);

  if (h == NULL)
    return FP_EAGAIN;
  for (uint64_t i = 0; i < atomic_load(&m->heap_hw); i++) {
    fp__shm_heap *d = fp__shm_heap_at(m, (int)i);
    uint64_t s = atomic_load(&d->state);
    if (d != h && FP__HS_TID(s) != 0 && fp__shm_owner_dead(d, s))
      fp__shm_reclaim(m, h, d, FP__HS_GEN(s));
  }
  return 0;
}
