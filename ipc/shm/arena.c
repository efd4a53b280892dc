/* arena.c - the manager's shared-memory arena and its allocator.
 *
 * The region is one anonymous shared mapping; struct fp_manager (see
 * arena.h) sits at offset 0 and [heap, size) is carved into chunks.
 *
 * Allocator. A request of n bytes gets a chunk of the smallest power-of-two
 * class 2^k >= max(n, 16). Each class has a singly linked free list threaded
 * through the first word of its free chunks. A request whose list is empty
 * takes the smallest free chunk of a larger class and splits it in halves,
 * pushing the upper halves onto the lists below (a buddy allocator that does
 * not merge). When no larger chunk is free either, it carves fresh memory at
 * brk: a whole page, split down, for classes below the page size, and 2^k
 * bytes for the others. brk stays page aligned, so a chunk of class k is
 * always aligned to min(2^k, page). Freed chunks go back to their class's
 * list and are reused by requests of the same or smaller classes; they are
 * never merged back, so memory freed in small pieces does not serve a later
 * large request (documented limit). A full arena returns FP_ENOMEM before
 * anything was written.
 *
 * Crash safety of the allocator. The header words it changes (free list
 * heads, brk, used, nlive, registry links, the caller's slot) are changed
 * only through alog(), which first appends the old value to the header's
 * undo log (aundo/anundo) and then stores. The step ends when anundo is set
 * back to 0 (the commit point). A process that dies in between leaves
 * anundo > 0: the next locker of the allocator mutex (EOWNERDEAD) restores
 * the logged words in reverse order, which is idempotent, so even a repairer
 * that dies is repaired by the next one. Writes into chunks that were not
 * reachable before the step (the upper halves of a split chunk, a new
 * object's body) need no logging: after a rollback nobody can reach them.
 * The first word of a chunk being freed IS logged: it was reachable.
 *
 * Structure journals (fp__shm_journal) use the same idea one level up; see
 * the protocol in arena.h and jrollback()/jfinish() below.
 *
 * The consistency checker at the end walks the allocator and every object
 * and accounts for every byte of [heap, brk).
 */
#include "ipc/shm/check.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

long fp__shm_crash_countdown;

/* A crash point of the deterministic crash tests (see arena.h). */
#define CRASH_POINT()                                                          \
  do {                                                                         \
    if (fp__shm_crash_countdown > 0 && --fp__shm_crash_countdown == 0)         \
      kill(getpid(), SIGKILL);                                                 \
  } while (0)

/* A compiler barrier: keeps stores in program order in the emitted code,
 * which is all a SIGKILLed process's observers need (see arena.h). */
#define BARRIER() atomic_signal_fence(memory_order_seq_cst)

static uint32_t class_of(uint64_t size) {
  uint32_t k = FP__SHM_MIN_SHIFT;
  while (k < FP__SHM_NCLASS - 1 && ((uint64_t)1 << k) < size)
    k++;
  return k;
}

/* Class size of a request (0 when it can never fit). */
uint64_t fp__shm_class_bytes(uint64_t size) {
  if (size > FP__SHM_MAX_SIZE)
    return 0;
  return (uint64_t)1 << class_of(size);
}
#define class_bytes fp__shm_class_bytes

/* --- allocator undo log ------------------------------------------------ */

/* Logs the old value of the 8-byte word at p (inside the arena) and stores
 * v. The log entry is complete before anundo counts it, and anundo counts it
 * before the word changes. */
static void alog(fp_manager *m, uint64_t *p, uint64_t v) {
  uint64_t n = m->anundo;
  if (n >= FP__SHM_AUNDO_MAX)
    abort(); /* a step never logs that many words: broken invariant */
  m->aundo[n].off = fp__shm_off(m, p);
  m->aundo[n].old = *p;
  BARRIER();
  m->anundo = n + 1;
  BARRIER();
  CRASH_POINT();
  *p = v;
  BARRIER();
  CRASH_POINT();
}

/* Restores the allocator's undo log, newest entry first, then empties it. */
static void arollback(fp_manager *m) {
  uint64_t n = m->anundo;
  if (n > FP__SHM_AUNDO_MAX)
    n = FP__SHM_AUNDO_MAX;
  while (n-- > 0) {
    uint64_t *p = fp__shm_ptr(m, m->aundo[n].off);
    *p = m->aundo[n].old;
    BARRIER();
    CRASH_POINT();
  }
  BARRIER();
  m->anundo = 0;
  BARRIER();
}

/* Commit point of an allocator step. */
static void acommit(fp_manager *m) {
  BARRIER();
  m->anundo = 0;
  BARRIER();
}

static int alock(fp_manager *m) {
  int rc = pthread_mutex_lock(&m->mu);
  if (rc == EOWNERDEAD) {
    atomic_fetch_add(&m->recovered, 1);
    if (m->anundo != 0)
      atomic_fetch_add(&m->repairs, 1);
    arollback(m);
    pthread_mutex_consistent(&m->mu);
    return 0;
  }
  if (rc != 0)
    return -rc;
  if (m->anundo != 0) /* cannot happen: repaired before consistent */
    arollback(m);
  return 0;
}

static void aunlock(fp_manager *m) {
  pthread_mutex_unlock(&m->mu);
}

int fp__shm_alock(fp_manager *m) {
  return alock(m);
}

void fp__shm_aunlock(fp_manager *m) {
  aunlock(m);
}

/* Pops a chunk of class k, splitting a larger free chunk or carving fresh
 * memory when needed. Must run inside an allocator step (lock held, log
 * open). Returns the chunk's offset, or 0 when the arena is full; on 0
 * nothing was changed. */
static uint64_t alloc_locked(fp_manager *m, uint32_t k) {
  uint64_t off, *head;
  uint32_t j, s;

  head = &m->free_head[k];
  if (*head != 0) {
    off = *head;
    alog(m, head, *(uint64_t *)fp__shm_ptr(m, off));
    return off;
  }
  for (j = k + 1; j < FP__SHM_NCLASS; j++)
    if (m->free_head[j] != 0)
      break;
  if (j < FP__SHM_NCLASS) {
    off = m->free_head[j];
    alog(m, &m->free_head[j], *(uint64_t *)fp__shm_ptr(m, off));
  } else {
    /* Carve fresh memory: a page for small classes, 2^k bytes otherwise. */
    j = k < FP__SHM_PAGE_SHIFT ? FP__SHM_PAGE_SHIFT : k;
    if (m->brk > m->size || m->size - m->brk < ((uint64_t)1 << j))
      return 0;
    off = m->brk;
    alog(m, &m->brk, m->brk + ((uint64_t)1 << j));
  }
  /* Split the class-j chunk at off down to class k: the upper half of each
   * split goes to the free list of its class (lists below j were empty or
   * we would not be here... except in the carve case, where they need not
   * be; pushing works either way). */
  for (s = j; s > k; s--) {
    uint64_t half = off + ((uint64_t)1 << (s - 1));
    *(uint64_t *)fp__shm_ptr(m, half) = m->free_head[s - 1]; /* unreachable */
    alog(m, &m->free_head[s - 1], half);
  }
  return off;
}

/* Pushes a chunk of class k back onto its free list (inside a step). */
static void free_locked(fp_manager *m, uint64_t off, uint32_t k) {
  /* The link overwrites the chunk's first word, which is logged too: a
   * rollback makes the chunk live again, and a deep release that is redone
   * after the rollback reads the chunk's size from that very word. (The
   * crash-point test found this.) */
  alog(m, (uint64_t *)fp__shm_ptr(m, off), m->free_head[k]);
  alog(m, &m->free_head[k], off);
}

static int slot_in_arena(fp_manager *m, const uint64_t *slot) {
  uint64_t off = fp__shm_off(m, slot);
  return (const char *)slot >= (const char *)m && off + 8 <= m->size &&
         off % 8 == 0;
}

int fp__shm_alloc_slot(fp_manager *m, uint64_t *slot, uint64_t size) {
  uint64_t bytes = class_bytes(size), off;
  int rc;

  if (bytes == 0 || bytes > m->size - m->heap)
    return FP_EMSGSIZE;
  if (!slot_in_arena(m, slot))
    abort();
  if ((rc = alock(m)) != 0)
    return rc;
  off = alloc_locked(m, class_of(size));
  if (off == 0) {
    arollback(m); /* nothing was logged, but keep the rule simple */
    aunlock(m);
    return FP_ENOMEM;
  }
  alog(m, &m->used, m->used + bytes);
  alog(m, &m->nlive, m->nlive + 1);
  alog(m, slot, off);
  acommit(m);
  aunlock(m);
  return 0;
}

void fp__shm_free_slot(fp_manager *m, uint64_t *slot, uint64_t size) {
  if (!slot_in_arena(m, slot))
    abort();
  if (alock(m) != 0)
    return; /* ENOTRECOVERABLE: never made inconsistent by us */
  if (*slot != 0) {
    /* Slots may carry tag bits above the 40-bit offset (dict buckets). */
    uint64_t off = *slot & (FP__SHM_MAX_SIZE - 1);
    /* Read a chunk's own size word only now, under the lock: the repair
     * alock() may just have done restores that very word. */
    uint32_t k = class_of(size ? size : *(uint64_t *)fp__shm_ptr(m, off));
    free_locked(m, off, k);
    alog(m, &m->used, m->used - ((uint64_t)1 << k));
    alog(m, &m->nlive, m->nlive - 1);
    alog(m, slot, 0);
    acommit(m);
  }
  aunlock(m);
}

/* --- objects ------------------------------------------------------------ */

/* Header checks shared by fp__shm_obj_check and begin_destroy. */
static int obj_header_check(const fp__shm_obj *o, int type) {
  const fp_manager *m;
  uint32_t mg;

  if (o == NULL)
    return FP_EINVAL;
  mg = o->magic;
  if ((mg & 0xffffff00u) != (FP__SHM_OBJ_MAGIC(0) & 0xffffff00u))
    return FP_EINVAL;
  if (o->type < FP__SHM_DICT || o->type > FP__SHM_ARRAY ||
      mg != FP__SHM_OBJ_MAGIC(o->type))
    return FP_EINVAL;
  m = fp__shm_of(o);
  if (m->magic != FP__SHM_MAGIC || m->base != (uint64_t)(uintptr_t)m)
    return FP_EINVAL;
  if ((int)o->type != type)
    return FP_ETYPE;
  return 0;
}

int fp__shm_obj_check(const void *p, int type) {
  const fp__shm_obj *o = p;
  int rc = obj_header_check(o, type);
  if (rc == 0 && !fp__shm_obj_alive(o))
    return FP_EINVAL;
  return rc;
}

int fp__shm_obj_begin_destroy(void *p, int type) {
  fp__shm_obj *o = p;
  int rc = obj_header_check(o, type);
  if (rc == 0)
    atomic_store(&o->dying, 1); /* one word: crash-safe as it stands */
  return rc;
}

int fp__shm_obj_new(fp_manager *m, int type, uint64_t size,
                    int (*init)(void *obj, void *arg), void *arg, void **out) {
  uint64_t bytes = class_bytes(size), off;
  fp__shm_obj *o;
  int rc;

  *out = NULL;
  if (bytes == 0 || bytes > m->size - m->heap)
    return FP_EMSGSIZE;
  if ((rc = alock(m)) != 0)
    return rc;
  off = alloc_locked(m, class_of(size));
  if (off == 0) {
    arollback(m);
    aunlock(m);
    return FP_ENOMEM;
  }
  /* The chunk is unreachable until the registry link below, except for its
   * first word if it came off a free list (the list's link, which a
   * rollback puts back in use): log that word, then build the rest
   * without logging. */
  o = fp__shm_ptr(m, off);
  alog(m, (uint64_t *)o, 0);
  memset(o, 0, size);
  o->type = (uint32_t)type;
  o->self = off;
  o->size = size;
  o->gen = m->gen + 1;
  if (init != NULL && (rc = init(o, arg)) != 0) {
    arollback(m);
    aunlock(m);
    return rc;
  }
  o->magic = FP__SHM_OBJ_MAGIC(type);
  o->next = m->objects;
  if (m->objects != 0) {
    fp__shm_obj *h = fp__shm_ptr(m, m->objects);
    alog(m, &h->prev, off);
  }
  alog(m, &m->objects, off);
  alog(m, &m->nobjects, m->nobjects + 1);
  alog(m, &m->gen, m->gen + 1);
  alog(m, &m->used, m->used + bytes);
  alog(m, &m->nlive, m->nlive + 1);
  acommit(m);
  aunlock(m);
  *out = o;
  return 0;
}

int fp__shm_obj_free(fp_manager *m, fp__shm_obj *o) {
  uint64_t magic_word;
  uint32_t k = class_of(o->size);
  int rc;

  if ((rc = alock(m)) != 0)
    return rc;
  if (o->prev != 0)
    alog(m, &((fp__shm_obj *)fp__shm_ptr(m, o->prev))->next, o->next);
  else
    alog(m, &m->objects, o->next);
  if (o->next != 0)
    alog(m, &((fp__shm_obj *)fp__shm_ptr(m, o->next))->prev, o->prev);
  alog(m, &m->nobjects, m->nobjects - 1);
  /* magic and type share the first word; clear the magic half. */
  memcpy(&magic_word, o, 8);
  alog(m, (uint64_t *)o, magic_word & ~(uint64_t)0xffffffffu);
  alog(m, &m->used, m->used - ((uint64_t)1 << k));
  alog(m, &m->nlive, m->nlive - 1);
  free_locked(m, o->self, k);
  acommit(m);
  aunlock(m);
  return 0;
}

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
  if (m == NULL || m->magic != FP__SHM_MAGIC)
    return NULL;
  if (off < m->heap || off + sizeof(*o) > m->brk)
    return NULL;
  o = fp__shm_ptr(m, off);
  if (o->self != off || o->magic != FP__SHM_OBJ_MAGIC(o->type) ||
      !fp__shm_obj_alive(o) || ref_tag(m, o) != tag)
    return NULL;
  if (rtype != o->type || (int)o->type != type) {
    *err = FP_ETYPE;
    return NULL;
  }
  *err = 0;
  return o;
}

/* --- structure journals ------------------------------------------------- */

void fp__shm_jbegin(fp__shm_journal *j) {
  j->nundo = 0;
  BARRIER();
  j->state = FP__J_ACTIVE;
  BARRIER();
  CRASH_POINT();
}

void fp__shm_jwrite(fp_manager *m, fp__shm_journal *j, void *dst,
                    const void *src, size_t n) {
  char *d = dst;
  const char *s = src;

  /* Log the old bytes in 8-byte pieces that never reach past dst + n: the
   * pieces start at 0, 8, 16, ... and the last one is pulled back to end
   * exactly at n. A range shorter than 8 bytes is logged as the 8 bytes
   * ending at dst + n, which reach back into the same object (callers
   * guarantee that: values sit after a 24-byte node header). Overlapping
   * pieces hold the same original bytes, so the replay order is moot. */
  for (size_t i = 0; i < n; i += 8) {
    ptrdiff_t at = (ptrdiff_t)i;
    if (i + 8 > n)
      at = (ptrdiff_t)n - 8;
    if (j->nundo >= FP__SHM_UNDO_MAX)
      abort();
    j->undo[j->nundo].off = fp__shm_off(m, d + at);
    memcpy(&j->undo[j->nundo].old, d + at, 8);
    BARRIER();
    j->nundo++;
    BARRIER();
    CRASH_POINT();
  }
  BARRIER();
  memcpy(d, s, n);
  BARRIER();
  CRASH_POINT();
}

void fp__shm_jset(fp_manager *m, fp__shm_journal *j, uint64_t *word,
                  uint64_t v) {
  fp__shm_jwrite(m, j, word, &v, 8);
}

/* Rolls an ACTIVE operation back: restore the undo log newest first (an
 * idempotent replay), forget the release slots (nothing was freed before
 * the commit), free what the operation allocated (fp__shm_free_slot zeroes
 * each slot atomically, so a replay skips what was already freed). */
static void jrollback(fp_manager *m, fp__shm_journal *j) {
  uint32_t n = j->nundo > FP__SHM_UNDO_MAX ? FP__SHM_UNDO_MAX : j->nundo;
  while (n-- > 0) {
    memcpy(fp__shm_ptr(m, j->undo[n].off), &j->undo[n].old, 8);
    BARRIER();
    CRASH_POINT();
  }
  j->nundo = 0;
  j->deep_n = 0;
  j->release[0] = j->release[1] = 0;
  BARRIER();
  for (int k = 0; k < 2; k++)
    fp__shm_free_slot(m, &j->alloc[k], j->alloc_size[k]);
  BARRIER();
  j->state = FP__J_IDLE;
  BARRIER();
}

/* Rolls a COMMITTED operation forward: the new state is published, so the
 * alloc slots now belong to the structure; free the release slots. A
 * deep release frees every chunk listed in the released array first (each
 * entry zeroed as it goes), then clears deep_n, then frees the array. */
static void jfinish(fp_manager *m, fp__shm_journal *j) {
  j->alloc[0] = j->alloc[1] = 0;
  j->nundo = 0;
  if (j->deep_n != 0 && j->release[0] != 0) {
    uint64_t *arr = fp__shm_ptr(m, j->release[0]);
    for (uint64_t i = 0; i < j->deep_n; i++)
      if (arr[i] > 1) {
        fp__shm_free_slot(m, &arr[i], 0); /* size: the chunk's word 0 */
        CRASH_POINT();
      }
  }
  BARRIER();
  j->deep_n = 0;
  BARRIER();
  CRASH_POINT();
  for (int k = 0; k < 2; k++)
    fp__shm_free_slot(m, &j->release[k], j->release_size[k]);
  BARRIER();
  j->state = FP__J_IDLE;
  BARRIER();
}

void fp__shm_jcommit(fp_manager *m, fp__shm_journal *j) {
  BARRIER();
  j->state = FP__J_COMMITTED;
  BARRIER();
  CRASH_POINT();
  jfinish(m, j);
}

void fp__shm_jabort(fp_manager *m, fp__shm_journal *j) {
  jrollback(m, j);
}

void fp__shm_repair(fp_manager *m, fp__shm_journal *j) {
  if (j->state == FP__J_IDLE)
    return;
  atomic_fetch_add(&m->repairs, 1);
  /* The dead holder may also have died inside an allocator step on one of
   * this journal's slots. Settle the allocator first (taking its lock rolls
   * such a step back), so that the slots read below are final: nobody else
   * touches them, since we hold the structure's lock. (The crash-point
   * test found the race this prevents.) */
  if (alock(m) == 0)
    aunlock(m);
  if (j->state == FP__J_ACTIVE)
    jrollback(m, j);
  else if (j->state == FP__J_COMMITTED)
    jfinish(m, j);
}

int fp__shm_mutex_init(pthread_mutex_t *mu, int type) {
  pthread_mutexattr_t a;
  int rc;

  if ((rc = pthread_mutexattr_init(&a)) != 0)
    return -rc;
  rc = pthread_mutexattr_settype(&a, type);
  if (rc == 0)
    rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (rc == 0)
    rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  if (rc == 0)
    rc = pthread_mutex_init(mu, &a);
  pthread_mutexattr_destroy(&a);
  return -rc;
}

int fp__shm_lock(fp_manager *m, pthread_mutex_t *mu, fp__shm_journal *j) {
  int rc = pthread_mutex_lock(mu);
  if (rc == EOWNERDEAD) {
    atomic_fetch_add(&m->recovered, 1);
    /* Repair before declaring the mutex consistent: a repairer that dies
     * half-way leaves the mutex owner-dead again for the next one. */
    if (j != NULL)
      fp__shm_repair(m, j);
    pthread_mutex_consistent(mu);
    return 0;
  }
  if (rc != 0)
    return -rc;
  if (j != NULL && j->state != FP__J_IDLE)
    fp__shm_repair(m, j);
  return 0;
}

void fp__shm_unlock(pthread_mutex_t *mu) {
  pthread_mutex_unlock(mu);
}

/* --- manager ------------------------------------------------------------ */

/* A random, nonzero 64-bit identity for a new manager: the kernel's
 * random bytes, or, should getrandom fail, the clock, the pid and the
 * mapping's address mixed together. */
static uint64_t new_identity(const fp_manager *m) {
  uint64_t id = 0;
  struct timespec ts;

  if (getrandom(&id, sizeof(id), GRND_NONBLOCK) != (ssize_t)sizeof(id)) {
    clock_gettime(CLOCK_MONOTONIC, &ts);
    id = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
         ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)m;
    id *= 0x9e3779b97f4a7c15ULL;
  }
  return id != 0 ? id : 1;
}

int fp_manager_new(fp_manager **out, const fp_manager_opts *opts) {
  uint64_t size = FP__SHM_DEFAULT_SIZE;
  fp_manager *m;
  void *p;
  int rc;

  if (out == NULL)
    return FP_EINVAL;
  *out = NULL;
  if (opts != NULL && opts->arena_size != 0)
    size = opts->arena_size;
  if (size < FP__SHM_MIN_SIZE || size > FP__SHM_MAX_SIZE)
    return FP_EINVAL;
  size = (size + FP__SHM_PAGE - 1) & ~(FP__SHM_PAGE - 1);
  p = mmap(NULL, size, PROT_READ | PROT_WRITE,
           MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return errno == ENOMEM ? FP_ENOMEM : -errno;
  /* Fresh anonymous memory is zero: only non-zero fields need setting. */
  m = p;
  m->size = size;
  m->heap = (sizeof(*m) + FP__SHM_PAGE - 1) & ~(FP__SHM_PAGE - 1);
  m->brk = m->heap;
  m->base = (uint64_t)(uintptr_t)m;
  if ((rc = fp__shm_mutex_init(&m->mu, PTHREAD_MUTEX_NORMAL)) != 0) {
    munmap(p, size);
    return rc;
  }
  m->id = new_identity(m);
  m->magic = FP__SHM_MAGIC;
  *out = m;
  return 0;
}

void fp_manager_free(fp_manager *m) {
  if (m == NULL || m->magic != FP__SHM_MAGIC)
    return;
  munmap(m, m->size);
}

int fp_manager_stats_get(fp_manager *m, fp_manager_stats *out) {
  int rc;

  if (m == NULL || out == NULL || m->magic != FP__SHM_MAGIC)
    return FP_EINVAL;
  if ((rc = alock(m)) != 0)
    return rc;
  out->arena_size = m->size;
  out->used = m->used;
  out->free = (m->size - m->brk) + (m->brk - m->heap - m->used);
  out->objects = m->nobjects;
  out->repairs = atomic_load(&m->repairs);
  out->footprint = m->brk - m->heap;
  aunlock(m);
  return 0;
}

/* --- consistency checker ------------------------------------------------ */

int fp__shm_fail(fp__shm_checker *c, const char *fmt, ...) {
  va_list ap;

  if (c->err != NULL && c->errlen > 0 && c->err[0] == '\0') {
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
  }
  return FP_EPROTO;
}

/* Marks the granules of one chunk as seen; fails on any overlap. */
int fp__shm_claim_range(fp__shm_checker *c, uint64_t off, uint64_t size,
                       const char *what) {
  fp_manager *m = c->m;
  uint64_t bytes = fp__shm_class_bytes(size), align, g, n;

  if (bytes == 0)
    return fp__shm_fail(c, "%s: size %llu impossible", what,
                        (unsigned long long)size);
  align = bytes < FP__SHM_PAGE ? bytes : FP__SHM_PAGE;
  if (off < m->heap || off > m->brk || m->brk - off < bytes || off % align != 0)
    return fp__shm_fail(c,
                        "%s: chunk %llu+%llu outside [%llu,%llu) or "
                        "misaligned",
                        what, (unsigned long long)off,
                        (unsigned long long)bytes, (unsigned long long)m->heap,
                        (unsigned long long)m->brk);
  g = (off - m->heap) / 16;
  n = bytes / 16;
  for (uint64_t i = g; i < g + n; i++) {
    if (c->bits[i / 64] & ((uint64_t)1 << (i % 64)))
      return fp__shm_fail(c, "%s: chunk %llu overlaps another chunk", what,
                          (unsigned long long)off);
    c->bits[i / 64] |= (uint64_t)1 << (i % 64);
  }
  return 0;
}

int fp__shm_claim(fp__shm_checker *c, uint64_t off, uint64_t size,
                  const char *what) {
  c->live_bytes += fp__shm_class_bytes(size);
  c->live_chunks++;
  return fp__shm_claim_range(c, off, size, what);
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

int fp__shm_check_journal(fp__shm_checker *c, const fp__shm_journal *j) {
  if (j->state != FP__J_IDLE || j->nundo != 0 || j->alloc[0] != 0 ||
      j->alloc[1] != 0 || j->release[0] != 0 || j->release[1] != 0 ||
      j->deep_n != 0)
    return fp__shm_fail(c, "journal not idle (state %u, %u undo entries)",
                        j->state, j->nundo);
  return 0;
}
