/* arena.h - the manager's shared-memory arena (internal header).
 *
 * A manager is one mmap(MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE) region. Its
 * header (struct fp_manager) lives at offset 0 of the region, so the
 * fp_manager pointer is the region's base address and is valid in every
 * process forked after the manager was created. Everything inside the region
 * refers to everything else by offset from the base, never by pointer.
 *
 * Memory is handed out by a power-of-two size-class allocator (see
 * arena.c) protected by one robust process-shared mutex. Shared objects
 * (dict, list, counter, lock, array) start with an fp__shm_obj header and
 * are linked into a registry so the consistency checker can walk them all.
 *
 * Crash consistency. Every lock in the arena is a robust mutex. Every
 * structure protected by a lock owns a journal (fp__shm_journal): before a
 * word that is reachable from the structure is changed, its old value is
 * appended to the journal's undo log; chunks allocated by the operation are
 * recorded in alloc slots and chunks it frees in release slots. A lock
 * holder killed half-way leaves the journal ACTIVE (the next locker rolls
 * the operation back: restore the undo log, free the alloc slots) or
 * COMMITTED (the next locker rolls it forward: free the release slots).
 * Either way the structure is exactly as before or exactly as after the
 * operation, and no chunk leaks. The allocator keeps its own undo log in the
 * arena header; fp__shm_alloc_slot()/fp__shm_free_slot() write the chunk
 * offset into (or clear) a slot inside the arena as part of the allocator's
 * own atomic step, which is what ties the two journals together.
 *
 * Why a killed process leaves a usable prefix: SIGKILL is delivered at an
 * instruction boundary, so the dead process's stores are exactly a prefix of
 * its program order. A compiler barrier between "append to the log" and
 * "change the word" is enough to keep that order in the emitted code; the
 * next locker sees all of those stores because the kernel's robust-futex
 * handling and the mutex acquisition order them before its own reads.
 *
 * Lock order: a structure's lock, then the allocator's. Nothing holds two
 * structure locks at once (except fp__shm_check, which runs quiescent).
 */
#ifndef FP_IPC_SHM_ARENA_H
#define FP_IPC_SHM_ARENA_H

#include "forkpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define FP__SHM_HIDDEN __attribute__((visibility("hidden")))
#else
#define FP__SHM_HIDDEN
#endif

#define FP__SHM_MAGIC 0x666f726b706f6f6cULL /* "forkpool" */
#define FP__SHM_PAGE_SHIFT 12
#define FP__SHM_PAGE ((uint64_t)1 << FP__SHM_PAGE_SHIFT)
#define FP__SHM_MIN_SHIFT 4 /* smallest chunk: 16 bytes */
#define FP__SHM_NCLASS 41   /* classes 2^0 .. 2^40 (only >= 2^4 used) */
#define FP__SHM_MAX_SIZE ((uint64_t)1 << 40) /* offsets fit in 40 bits */
#define FP__SHM_MIN_SIZE ((uint64_t)256 << 10)
#define FP__SHM_DEFAULT_SIZE ((uint64_t)1 << 30)
#define FP__SHM_AUNDO_MAX 128 /* allocator undo entries */
#define FP__SHM_UNDO_MAX 16   /* structure undo entries */

/* Object types; also the top byte of a ref. */
enum {
  FP__SHM_DICT = 1,
  FP__SHM_LIST = 2,
  FP__SHM_COUNTER = 3,
  FP__SHM_LOCK = 4,
  FP__SHM_ARRAY = 5
};

/* Per-type magic numbers stored in fp__shm_obj.magic; 0 means "freed". */
#define FP__SHM_OBJ_MAGIC(type) (0x5348u << 16 | 0xa500u | (uint32_t)(type))

/* One undo record: the 8 bytes that were at offset off (any alignment). */
typedef struct fp__shm_undo {
  uint64_t off;
  uint64_t old;
} fp__shm_undo;

enum { FP__J_IDLE = 0, FP__J_ACTIVE = 1, FP__J_COMMITTED = 2 };

/* A structure's journal. Invariant while the owning lock is free: state is
 * IDLE, nundo is 0 and every slot is 0. See the file header for the
 * protocol; arena.c implements it. */
typedef struct fp__shm_journal {
  uint32_t state;
  uint32_t nundo;
  uint64_t alloc[2];        /* chunks allocated by the operation */
  uint64_t alloc_size[2];   /* their requested sizes */
  uint64_t release[2];      /* chunks to free once committed */
  uint64_t release_size[2]; /* their requested sizes */
  uint64_t deep_n; /* if nonzero: release[0] is an array of deep_n chunk
                      offsets (0/1 = none; bits above 40 ignored) each
                      starting with its u64 size; they are freed before the
                      array itself */
  fp__shm_undo undo[FP__SHM_UNDO_MAX];
} fp__shm_journal;

/* The header every shared object starts with (64 bytes, 64-aligned). */
typedef struct fp__shm_obj {
  uint32_t magic; /* FP__SHM_OBJ_MAGIC(type) while alive, 0 once freed */
  uint32_t type;
  uint64_t self; /* offset of this header in the arena */
  uint64_t size; /* bytes requested for the object's chunk */
  uint64_t gen;  /* creation number, part of the object's ref */
  uint64_t next; /* registry links (offsets, 0 = none) */
  uint64_t prev;
  uint64_t reserved[2];
} fp__shm_obj;

/* The arena header, at offset 0 of the region. */
struct fp_manager {
  uint64_t magic;
  uint64_t size;     /* bytes mapped */
  uint64_t heap;     /* offset of the first chunk (page aligned) */
  uint64_t base;     /* address of the mapping, for sanity checks */
  uint64_t brk;      /* [heap, brk) has been carved into chunks */
  uint64_t used;     /* bytes in live chunks (class sizes) */
  uint64_t nlive;    /* live chunks */
  uint64_t objects;  /* registry head (offset of an fp__shm_obj, 0 = none) */
  uint64_t nobjects; /* registry length */
  uint64_t gen;      /* objects ever created */
  _Atomic uint64_t repairs;           /* journals rolled back or forward after a
                                         holder died (allocator's included) */
  _Atomic uint64_t recovered;         /* internal locks taken over from a dead
                                         holder (EOWNERDEAD) */
  uint64_t free_head[FP__SHM_NCLASS]; /* free list per class */
  pthread_mutex_t mu;                 /* protects all of the above */
  uint64_t anundo;                    /* allocator undo log length */
  fp__shm_undo aundo[FP__SHM_AUNDO_MAX];
};

/* Returns the arena an object lives in (no check). */
static inline fp_manager *fp__shm_of(const fp__shm_obj *o) {
  return (fp_manager *)((char *)o - o->self);
}

/* Offset <-> pointer. */
static inline void *fp__shm_ptr(const fp_manager *m, uint64_t off) {
  return (char *)m + off;
}
static inline uint64_t fp__shm_off(const fp_manager *m, const void *p) {
  return (uint64_t)((const char *)p - (const char *)m);
}

/* Checks that o is a live object of the given type inside a valid arena.
 * Returns 0, FP_EINVAL (NULL, not an object, freed) or FP_ETYPE (a live
 * object of another type). */
FP__SHM_HIDDEN int fp__shm_obj_check(const void *o, int type);

/* Creates an object of `size` bytes (>= sizeof(fp__shm_obj)), zero-filled,
 * header filled in, and calls init(obj, arg) (may be NULL) before
 * publishing it in the registry: creation is one atomic step of the
 * allocator, so a crash leaves either no object or a fully built one. init
 * runs under the allocator lock and must not allocate; a nonzero return
 * from it undoes everything and is returned. Returns 0 and *out, FP_ENOMEM
 * (arena full), FP_EMSGSIZE (size larger than the arena could ever hold),
 * or a locking error. */
FP__SHM_HIDDEN int fp__shm_obj_new(fp_manager *m, int type, uint64_t size,
                                   int (*init)(void *obj, void *arg), void *arg,
                                   void **out);

/* Unlinks an object from the registry, clears its magic and frees its chunk
 * in one atomic step. The caller has released everything the object owns. */
FP__SHM_HIDDEN int fp__shm_obj_free(fp_manager *m, fp__shm_obj *o);

/* Returns the object a ref names if it is a live object of that type, else
 * NULL; *err gets FP_EINVAL or FP_ETYPE. */
FP__SHM_HIDDEN void *fp__shm_obj_from_ref(fp_manager *m, uint64_t ref, int type,
                                          int *err);

/* Returns the ref of a live object: type << 56 | (gen & 0xffff) << 40 |
 * offset. */
FP__SHM_HIDDEN uint64_t fp__shm_obj_ref(const fp__shm_obj *o);

/* Allocates `size` bytes and stores the chunk's offset into *slot, which
 * must lie inside the arena and be 0, as one atomic step of the allocator.
 * Returns 0, FP_ENOMEM or FP_EMSGSIZE; on failure *slot stays 0. */
FP__SHM_HIDDEN int fp__shm_alloc_slot(fp_manager *m, uint64_t *slot,
                                      uint64_t size);

/* If *slot (inside the arena) is nonzero, frees that chunk of `size`
 * requested bytes and sets *slot to 0, atomically; *slot is read under the
 * allocator lock, so calling it again after a crash is harmless. size 0
 * means "the chunk's first u64 holds its size" (dict nodes, list values);
 * that word is then read under the lock too, after any allocator repair. */
FP__SHM_HIDDEN void fp__shm_free_slot(fp_manager *m, uint64_t *slot,
                                      uint64_t size);

/* Locks a robust mutex guarding a structure with journal j (may be NULL),
 * repairing the structure if the previous holder died. Returns 0 or a
 * negative errno from pthread (e.g. -ENOTRECOVERABLE). */
FP__SHM_HIDDEN int fp__shm_lock(fp_manager *m, pthread_mutex_t *mu,
                                fp__shm_journal *j);
FP__SHM_HIDDEN void fp__shm_unlock(pthread_mutex_t *mu);

/* Initialises a robust, process-shared mutex of the given pthread type
 * (PTHREAD_MUTEX_NORMAL inside the library, ERRORCHECK for fp_lock) in the
 * arena. Returns 0 or a negative errno. */
FP__SHM_HIDDEN int fp__shm_mutex_init(pthread_mutex_t *mu, int type);

/* Journal protocol, used with the structure's lock held:
 *   fp__shm_jbegin(j)              state IDLE -> ACTIVE
 *   j->alloc_size[k] = n, then fp__shm_alloc_slot(m, &j->alloc[k], n)
 *     (size first: a repairer frees the slot with that size)
 *   fill the new chunks (unreachable, no logging needed)
 *   fp__shm_jset(m, j, &word, v)   for each reachable word changed
 *   fp__shm_jwrite(m, j, p, src, n) for a small reachable byte range; the
 *     8 bytes before p + n must belong to the same locked object
 *   j->release[k] = chunk, j->release_size[k] = n (plain stores)
 *   fp__shm_jcommit(m, j)          ACTIVE -> COMMITTED -> frees -> IDLE
 * or fp__shm_jabort(m, j) to roll back (e.g. after FP_ENOMEM). */
FP__SHM_HIDDEN void fp__shm_jbegin(fp__shm_journal *j);
FP__SHM_HIDDEN void fp__shm_jset(fp_manager *m, fp__shm_journal *j,
                                 uint64_t *word, uint64_t v);
FP__SHM_HIDDEN void fp__shm_jwrite(fp_manager *m, fp__shm_journal *j, void *dst,
                                   const void *src, size_t n);
FP__SHM_HIDDEN void fp__shm_jcommit(fp_manager *m, fp__shm_journal *j);
FP__SHM_HIDDEN void fp__shm_jabort(fp_manager *m, fp__shm_journal *j);

/* Repairs a journal left by a dead holder (rolls back or forward). */
FP__SHM_HIDDEN void fp__shm_repair(fp_manager *m, fp__shm_journal *j);

/* Class bytes of a request of `size` bytes (0 when it can never fit). */
FP__SHM_HIDDEN uint64_t fp__shm_class_bytes(uint64_t size);

/* The allocator's lock, for the checker: taking it repairs an allocator
 * step whose process died. Returns 0 or a negative errno. */
FP__SHM_HIDDEN int fp__shm_alock(fp_manager *m);
FP__SHM_HIDDEN void fp__shm_aunlock(fp_manager *m);

/* Validates a value to be stored: exactly one well-formed encoded value.
 * Returns 0, FP_EINVAL (NULL), FP_EMSGSIZE (over 4 GiB) or FP_EPROTO. */
FP__SHM_HIDDEN int fp__shm_check_value(const void *v, size_t vlen);

/* Little-endian int64 helpers for in-place INT updates. */
static inline int64_t fp__shm_le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return (int64_t)v;
}
static inline void fp__shm_put_le64(unsigned char *p, int64_t x) {
  uint64_t v = (uint64_t)x;
  for (int i = 0; i < 8; i++, v >>= 8)
    p[i] = (unsigned char)v;
}

/* Test hook for deterministic crash tests: when set to n > 0 in a process,
 * that process SIGKILLs itself at the n-th crash point it passes (every
 * logged store of the allocator and of the journals, every state change of
 * a journal, every step of a repair). 0 (the default) disables it. Process
 * local, not shared. */
FP__SHM_HIDDEN extern long fp__shm_crash_countdown;

#endif /* FP_IPC_SHM_ARENA_H */
