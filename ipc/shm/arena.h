/* SPDX-License-Identifier: MIT */
/* arena.h - the manager's shared-memory arena (internal header).
 *
 * A manager is one mmap(MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE) region that
 * every process forked after its creation maps at the same address. Its
 * header (struct fp_manager) lives at offset 0, so the fp_manager pointer
 * is the region's base address; everything inside refers to everything
 * else by offset from the base, never by pointer.
 *
 * Layout: the header, a page map (one word per page of the region), the
 * table of per-thread heaps, then the heap area [heap, size), which the
 * allocator carves from both ends: slabs from the bottom up to brk, large
 * spans from the top down to top. [brk, top) is the uncarved rest.
 *
 * Who does what (one file each):
 *   lock.c     fp__shm_mutex: a 32-bit lock word naming its holder's heap,
 *              spin then futex; a waiter that finds the holder dead (procfs)
 *              takes the lock over and is told to repair.
 *   arena.c    the region, the global allocator lock and its undo log,
 *              page spans that merge with free neighbours, slabs of small
 *              chunks handed to per-thread caches in batches.
 *   heap.c     per-thread heaps: chunk caches (alloc and free without the
 *              global lock), the heap's own undo log, retiring chunks
 *              through epochs so that lock-free readers never see a chunk
 *              reused under them.
 *   journal.c  the per-heap journal that makes a structure update atomic
 *              under a crash (undo log, alloc and release slots).
 *   thread.c   binding a thread to its heap, structure locks, and the
 *              reclaim of a dead thread's heap (which repairs its journal).
 *   obj.c      object headers, the registry, refs.
 *   check.c    the consistency checker (the only file that knows every
 *              object type).
 *
 * Crash consistency in one paragraph. SIGKILL stops a process at an
 * instruction boundary, so the shared memory it leaves is exactly a prefix
 * of its stores in program order (compiler barriers keep that order in the
 * emitted code). Every multi-word change is therefore preceded by logging
 * the old value of each reachable word it changes, in a log that a
 * survivor can replay backwards: the global allocator's log (header), a
 * heap's own log (small cache and limbo steps), and a heap's journal
 * (structure updates, which also record the chunks they allocate and
 * release). A survivor that finds a dead holder's lock, or a dead thread's
 * heap, replays those logs (rollback) or finishes a committed update (roll
 * forward); each replay step is idempotent, so a survivor that dies while
 * repairing is repaired in turn.
 *
 * Lock order: a structure's lock, then the global allocator lock. Nothing
 * holds two structure locks at once (except the checker, which runs
 * quiescent).
 */
#ifndef FP_IPC_SHM_ARENA_H
#define FP_IPC_SHM_ARENA_H

#include "forkpool.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>

#if defined(__GNUC__)
#define FP__SHM_HIDDEN __attribute__((visibility("hidden")))
#else
#define FP__SHM_HIDDEN
#endif

#define FP__SHM_MAGIC 0x666f726b706f6f6cULL /* "forkpool" */
#define FP__SHM_PAGE_SHIFT 12
#define FP__SHM_PAGE ((uint64_t)1 << FP__SHM_PAGE_SHIFT)
#define FP__SHM_MAX_SIZE ((uint64_t)1 << 40) /* offsets fit in 40 bits */
#define FP__SHM_MIN_SIZE ((uint64_t)256 << 10)
#define FP__SHM_DEFAULT_SIZE ((uint64_t)1 << 30)

#define FP__SHM_NCLASS 31       /* small chunk classes, 16 B .. 7 KiB */
#define FP__SHM_SMALL_MAX 7168  /* larger requests get whole pages */
#define FP__SHM_NBIN 64         /* free span bins */
#define FP__SHM_AUNDO_MAX 320   /* global allocator undo entries */
#define FP__SHM_HLOG_MAX 8      /* heap step undo entries */
#define FP__SHM_UNDO_MAX 16     /* journal undo entries */
#define FP__SHM_PUB_MAX 4       /* words of a journal's publication */
#define FP__SHM_HEAP_MAX 2048   /* heaps (threads) per manager, at most */
#define FP__SHM_CACHE_SLOTS 560 /* cached chunk slots of one heap */

/* A chunk reference as tables store it: offset / 16 in the low 36 bits
 * (other bits are the owner's: a dict bucket keeps hash bits above), 0 and
 * 1 never name a chunk (0 empty, 1 a dict tombstone). */
#define FP__SHM_CREF_MASK (((uint64_t)1 << 36) - 1)
static inline uint64_t fp__shm_cref(uint64_t off) {
  return off >> 4;
}
static inline uint64_t fp__shm_cref_off(uint64_t e) {
  return (e & FP__SHM_CREF_MASK) << 4;
}

/* Object types; also the top bits of a ref. */
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

/* --- lock (lock.c) ------------------------------------------------------ */

/* A process-shared lock word: 0 when free, else the holder's identity
 * (FP__SHM_OWNER of its heap) with bit 31 set while someone may sleep on
 * it. See lock.c. */
typedef _Atomic uint32_t fp__shm_mutex;

#define FP__SHM_WAITERS 0x80000000u
/* A heap's lock identity: index + 1 (11 bits) and its generation (20). */
#define FP__SHM_OWNER(idx, gen)                                                \
  (((uint32_t)(idx) + 1) | (((uint32_t)(gen)&0xfffffu) << 11))
#define FP__SHM_OWNER_IDX(w) ((int)((w)&0x7ffu) - 1)
#define FP__SHM_OWNER_GEN(w) (((w) >> 11) & 0xfffffu)

/* --- journal (journal.c) ------------------------------------------------ */

enum { FP__J_IDLE = 0, FP__J_ACTIVE = 1, FP__J_COMMITTED = 2 };

/* A heap's journal: the update its thread is making to the structure whose
 * lock it holds. Invariant while the thread is between calls: state IDLE,
 * nundo 0, every slot 0. Slots hold chunk offsets. */
typedef struct fp__shm_journal {
  uint32_t state;
  uint32_t nundo;
  uint64_t alloc[2];   /* chunks allocated by the update */
  uint64_t release[2]; /* chunks to retire once committed */
  uint64_t deep_n;     /* if nonzero, release[0] is a table whose deep_n
                          entries (crefs, from byte 16 on) are retired first */
  uint64_t deep_from;  /* ... from its entry deep_from on, */
  uint64_t deep_ring;  /* round a ring of that many entries (a power of
                          two), or straight on when 0 */
  uint32_t npub;       /* words of the publication once it is logged, else 0 */
  uint32_t pub_first;  /* its undo entries: undo[pub_first .. +npub) */
  uint64_t pub_new[FP__SHM_PUB_MAX]; /* the values those words take */
  fp__shm_undo undo[FP__SHM_UNDO_MAX];
} fp__shm_journal;

/* --- heap (heap.c, thread.c) ------------------------------------------- */

/* A heap's state word: a thread id in the low 32 bits (0 = FREE), the
 * heap's generation in bits 32..51 (bumped at every registration), and
 * bit 63 while a survivor reclaims the heap of a dead owner: the thread id
 * is then the reclaimer's. */
#define FP__HS_TID(s) ((uint32_t)((s)&0xffffffffu))
#define FP__HS_GEN(s) ((uint32_t)(((s) >> 32) & 0xfffffu))
#define FP__HS_RECLAIM ((uint64_t)1 << 63)
#define FP__HS_MAKE(gen, tid) ((uint64_t)((gen)&0xfffffu) << 32 | (tid))

/* One heap per (thread, manager). Only its owner thread writes it, except
 * the pin, which others read, and a reclaim after the owner died. */
typedef struct fp__shm_heap {
  _Atomic uint64_t state;
  _Atomic uint64_t start; /* owner's start time (clock ticks since boot,
                             procfs), 0 until the owner wrote it */
  uint64_t pad1[6];
  /* EBR: (epoch << 1 | 1) while inside a call, 0 outside; its own line. */
  _Atomic uint64_t pin __attribute__((aligned(64)));
  _Atomic uint64_t pins; /* calls so far (written by the owner only), to
                            tell a stuck pin from a busy heap */
  _Atomic uint64_t squeezed; /* the last m->squeeze it gave back for
                                (written by the owner only; heap.c) */
  uint64_t nlog __attribute__((aligned(64)));
  fp__shm_undo log[FP__SHM_HLOG_MAX]; /* heap step undo log */
  uint64_t limbo[3];                  /* retired chunks, linked by word 0 */
  uint64_t limbo_epoch[3];            /* epoch each list was retired in */
  uint64_t nlimbo;                    /* their weight: see limbo_weight */
  _Atomic uint64_t nlimbo_spans; /* the part of nlimbo that spans of
                                    pages add: a hint, not logged, that
                                    other heaps read (heap.c, hoards) */
  fp__shm_journal j;
  uint64_t ncache[FP__SHM_NCLASS];     /* cached chunks per class */
  uint64_t cache[FP__SHM_CACHE_SLOTS]; /* class c: cache_base(c) + i */
} __attribute__((aligned(64))) fp__shm_heap;

/* --- objects (obj.c) ---------------------------------------------------- */

/* The header every shared object starts with (64 bytes, 64-aligned). Word
 * 0 belongs to the allocator (the retire link), like every chunk's. */
typedef struct fp__shm_obj {
  uint64_t link;
  uint32_t magic; /* FP__SHM_OBJ_MAGIC(type) while alive, 0 once freed */
  uint32_t type;
  uint64_t self; /* offset of this header in the arena */
  uint64_t size; /* bytes requested for the object's chunk */
  uint64_t gen;  /* creation number, part of the object's ref */
  uint64_t next; /* registry links (offsets, 0 = none) */
  uint64_t prev;
  _Atomic uint64_t dying; /* nonzero once a destroy began: every call but
                             the destroy itself fails with FP_EINVAL */
} fp__shm_obj;

/* --- the arena header --------------------------------------------------- */

struct fp_manager {
  /* Read-mostly: set at creation. */
  uint64_t magic;
  uint64_t size;    /* bytes mapped */
  uint64_t base;    /* address of the mapping, for sanity checks */
  uint64_t id;      /* random identity, part of every ref */
  uint64_t pagemap; /* offset of u64[size / page]: see arena.c */
  uint64_t heaps;   /* offset of fp__shm_heap[nheaps] */
  uint64_t nheaps;  /* heap table length */
  uint64_t heap;    /* offset of the first page of the heap area */
  /* The epoch of reclamation (heap.c), on its own line: read by every
   * call, written rarely. */
  _Atomic uint64_t epoch __attribute__((aligned(64)));
  /* Bumped by an allocation that found no room: every heap gives back
   * what it caches and what it retired at the end of its next call
   * (fp__shm_call_end, heap.c). Read by every call too, written rarely. */
  _Atomic uint64_t squeeze;
  /* Counters updated with atomics, apart from the allocator's line. */
  _Atomic uint64_t repairs __attribute__((aligned(64)));
  _Atomic uint64_t recovered; /* locks taken over from a dead holder */
  _Atomic uint64_t heap_hw;   /* heap slots ever used (scan bound) */
  /* Everything below is protected by mu, the global allocator lock. */
  fp__shm_mutex mu __attribute__((aligned(64)));
  uint32_t pad;
  uint64_t brk;         /* [heap, brk) is carved into spans, from below */
  uint64_t top;         /* [top, size) is carved into spans, from above */
  uint64_t carved_high; /* the most bytes carved at once (span_free may
                           give pages back): the footprint of
                           fp_manager_stats */
  uint64_t room_mark;   /* carved bytes from which carving waits for a
                           fp__shm_make_room first (arena.c, span_alloc) */
  uint64_t used;     /* bytes handed out: live, cached, retired */
  uint64_t objects;  /* registry head (offset of an fp__shm_obj, 0 = none) */
  uint64_t nobjects; /* registry length */
  uint64_t gen;      /* objects ever created */
  uint64_t bins[FP__SHM_NBIN];         /* free spans by length */
  uint64_t partial[FP__SHM_NCLASS];    /* slabs with free chunks, by class */
  uint64_t glimbo[3], glimbo_epoch[3]; /* chunks retired by heaps that were
                                          released or reclaimed */
  uint64_t anundo;                     /* global allocator undo log */
  fp__shm_undo aundo[FP__SHM_AUNDO_MAX];
};

/* Offset <-> pointer. */
static inline void *fp__shm_ptr(const fp_manager *m, uint64_t off) {
  return (char *)m + off;
}
static inline uint64_t fp__shm_off(const fp_manager *m, const void *p) {
  return (uint64_t)((const char *)p - (const char *)m);
}

/* 1 when [off, off + bytes) lies in one carved part of the heap area,
 * [heap, brk) or [top, size). brk and top change under the global lock;
 * a caller without it reads each as it was at some moment, and never
 * past a chunk still allocated: only a free moves them back, over spans
 * that are free. */
static inline int fp__shm_carved(const fp_manager *m, uint64_t off,
                                 uint64_t bytes) {
  uint64_t brk = __atomic_load_n(&m->brk, __ATOMIC_RELAXED);
  uint64_t top = __atomic_load_n(&m->top, __ATOMIC_RELAXED);

  if (off >= m->heap && off < brk)
    return bytes <= brk - off;
  return off >= top && off < m->size && bytes <= m->size - off;
}

/* Bytes of the carved area (under the global lock, or in the checker). */
static inline uint64_t fp__shm_carved_bytes(const fp_manager *m) {
  return m->brk - m->heap + m->size - m->top;
}

/* Returns the arena an object lives in (no check). */
static inline fp_manager *fp__shm_of(const fp__shm_obj *o) {
  return (fp_manager *)((char *)o - o->self);
}

static inline fp__shm_heap *fp__shm_heap_at(const fp_manager *m, int i) {
  return (fp__shm_heap *)fp__shm_ptr(m, m->heaps) + i;
}
static inline int fp__shm_heap_idx(const fp_manager *m, const fp__shm_heap *h) {
  return (int)(h - (const fp__shm_heap *)fp__shm_ptr(m, m->heaps));
}

/* Test hook for deterministic crash tests: when set to n > 0 in a process,
 * that process SIGKILLs itself at the n-th crash point it passes (every
 * logged store of the allocator, the heaps and the journals, every state
 * change of a journal, every step of a repair). 0 (the default) disables
 * it. Process local, not shared. */
FP__SHM_HIDDEN extern long fp__shm_crash_countdown;
FP__SHM_HIDDEN void fp__shm_crash_now(void);

/* A crash point (see fp__shm_crash_countdown). */
#define FP__SHM_CRASH_POINT()                                                  \
  do {                                                                         \
    if (fp__shm_crash_countdown > 0)                                           \
      fp__shm_crash_now();                                                     \
  } while (0)

/* A compiler barrier: keeps stores in program order in the emitted code,
 * which is all a SIGKILLed process's observers need. */
#define FP__SHM_BARRIER() atomic_signal_fence(memory_order_seq_cst)

/* --- lock.c ------------------------------------------------------------- */

/* Returns 1 if the thread named by heap h's state s is dead: no such
 * thread, a zombie, or (for an owner that recorded its start time) a
 * thread of that id that started at another time (the id was reused).
 * Reads procfs: slow, call it only after waiting. */
FP__SHM_HIDDEN int fp__shm_owner_dead(const fp__shm_heap *h, uint64_t s);

/* The start time procfs reports for thread tid, or 0. */
FP__SHM_HIDDEN uint64_t fp__shm_start_time(uint32_t tid);

/* How many pauses (about 20-40 ns each) a waiter leaves a held lock
 * alone before its first look, and between looks once past BACKOFF_MAX
 * (lock.c). SOON suits a lock that a thread seldom takes twice in a row:
 * the global allocator's, a dict stripe's. LATE suits a list's: a process
 * appending in a loop takes it again ~50 ns after releasing it, and a
 * look by the other process then moves the lock, the list's header line
 * and its tail line between CPUs -- with early looks every few appends
 * (two processes appending made 0.67-0.85x of one). Looking every ~50 us
 * lets the holder run about a thousand appends from its own cache per
 * hand-over (0.87-1.00x), at the price of that much latency for a
 * contended call. */
#define FP__SHM_POLL_SOON 4
#define FP__SHM_POLL_LATE 2048

/* Takes mu for `me` (an FP__SHM_OWNER value), first looking again after
 * first_poll pauses (FP__SHM_POLL_*) when it is held. Returns 0, or the
 * previous holder's word (nonzero) when that holder died holding it: the
 * caller now holds the lock and must repair what it protects. Never fails
 * otherwise; waits (spinning, then sleeping) as long as a live holder
 * keeps it. */
FP__SHM_HIDDEN uint32_t fp__shm_mutex_lock(fp_manager *m, fp__shm_mutex *mu,
                                           uint32_t me, uint32_t first_poll);
FP__SHM_HIDDEN void fp__shm_mutex_unlock(fp__shm_mutex *mu);

/* --- arena.c: the global allocator ------------------------------------- */

/* Size class of a small request (0 .. NCLASS-1), its bytes. */
FP__SHM_HIDDEN int fp__shm_class_of(uint64_t size);
FP__SHM_HIDDEN uint32_t fp__shm_class_size(int cls);
FP__SHM_HIDDEN uint32_t fp__shm_cache_cap(int cls);  /* slots per class */
FP__SHM_HIDDEN uint32_t fp__shm_cache_base(int cls); /* first slot */

/* Bytes of the chunk at off (its class or its span), or 0 when off is not
 * the start of a chunk handed out by the allocator. */
FP__SHM_HIDDEN uint64_t fp__shm_chunk_bytes(const fp_manager *m, uint64_t off);
/* Pages of the chunk at off when it is a span of whole pages, 0 when it is
 * a slab's chunk: one page map load, cheap enough for every retire. */
FP__SHM_HIDDEN uint64_t fp__shm_large_pages(const fp_manager *m, uint64_t off);

/* Lays out a fresh region of `size` bytes at m: page map, heap table, heap
 * area. Returns 0 or FP_EINVAL (too small for its own tables). */
FP__SHM_HIDDEN int fp__shm_arena_init(fp_manager *m, uint64_t size);

/* The global allocator lock, taken by heap h (repairs the allocator when
 * the previous holder died). */
FP__SHM_HIDDEN void fp__shm_alock(fp_manager *m, const fp__shm_heap *h);
FP__SHM_HIDDEN void fp__shm_aunlock(fp_manager *m);

/* Logs the old value of the word at p (inside the arena) in the global
 * undo log, then stores v; fp__shm_acommit() ends the step. For callers
 * that hold the global lock. */
FP__SHM_HIDDEN void fp__shm_alog(fp_manager *m, uint64_t *p, uint64_t v);
FP__SHM_HIDDEN void fp__shm_acommit(fp_manager *m);
/* Undoes the current step (e.g. after FP_ENOMEM half-way). */
FP__SHM_HIDDEN void fp__shm_aabort(fp_manager *m);

/* Moves up to `want` chunks of class cls into h's cache (one step under
 * the global lock, carving a new slab if needed). Returns the number
 * moved, 0 when the arena is full. */
FP__SHM_HIDDEN int fp__shm_refill(fp_manager *m, fp__shm_heap *h, int cls,
                                  int want);
/* Gives up to n of heap d's cached chunks of class cls back to their
 * slabs (one step under the global lock, taken as heap h); a slab that
 * becomes empty returns to the spans, merging with free neighbours. */
FP__SHM_HIDDEN void fp__shm_flush(fp_manager *m, const fp__shm_heap *h,
                                  fp__shm_heap *d, int cls, int n);
/* Returns every empty slab to the spans, including the one a class keeps
 * for its next refill (the global lock taken as heap h). */
FP__SHM_HIDDEN void fp__shm_trim(fp_manager *m, const fp__shm_heap *h);
/* Moves the room mark one step past the carved area (one step under the
 * global lock, taken as heap h): fp__shm_make_room calls it once it has
 * made what room it could, so that the allocation that sent it there may
 * carve fresh pages. */
FP__SHM_HIDDEN void fp__shm_room_made(fp_manager *m, const fp__shm_heap *h);

/* Allocates a chunk of `size` bytes outside any cache, aligned to 64
 * (objects, heap-less callers) and stores its offset in *slot, in one step
 * under the global lock, which the caller holds. Returns 0, FP_ENOMEM or
 * FP_EMSGSIZE; *slot stays 0 on failure. */
FP__SHM_HIDDEN int fp__shm_alloc_locked(fp_manager *m, uint64_t *slot,
                                        uint64_t size);
/* The same with whole pages of its own for any size (a span, freed as
 * one): what a chunk of a page or more falls back to when no slab of its
 * class fits (fp__shm_alloc). */
FP__SHM_HIDDEN int fp__shm_alloc_pages_locked(fp_manager *m, uint64_t *slot,
                                              uint64_t size);
/* Frees the chunk at off (a step helper: the global lock is held). The
 * caller unlinks it from wherever it was, in the same step. */
FP__SHM_HIDDEN void fp__shm_free_locked(fp_manager *m, uint64_t off);
/* Pushes the chunk at off onto a free list threaded through word 0:
 * *head (a heap's limbo or the global limbo). Step helper, lock held. */
FP__SHM_HIDDEN void fp__shm_push_locked(fp_manager *m, uint64_t *head,
                                        uint64_t off);

/* --- heap.c ------------------------------------------------------------- */

/* Heap step log: log old value, store (fp__shm_hlog); end (hcommit);
 * replay after the owner died (hrollback). */
FP__SHM_HIDDEN void fp__shm_hlog(fp_manager *m, fp__shm_heap *h, uint64_t *p,
                                 uint64_t v);
FP__SHM_HIDDEN void fp__shm_hcommit(fp__shm_heap *h);
FP__SHM_HIDDEN void fp__shm_hrollback(fp_manager *m, fp__shm_heap *h);

/* Allocates `size` bytes and stores the chunk's offset into *slot (0
 * before), in one step of h's log (small sizes, from h's cache) or of the
 * global log (pages; also a small class of 4 KiB or more whose slab finds
 * no room). Returns 0, FP_ENOMEM or FP_EMSGSIZE; *slot stays 0 on
 * failure. When the arena has no room it calls fp__shm_make_room and
 * tries again, then once more after fp__shm_trim; making room may reuse
 * what sits in h's limbo although h is pinned. So the caller must not
 * use, after the call, a pointer to a chunk that is in a heap's limbo:
 * what it read under the lock of the structure it changes is live, and
 * so are its alloc slots and the object it is in (a destroyed object goes
 * to the global limbo, which waits for the caller's pin); a pointer kept
 * from a lock-free read before the lock is not (dict.c and list.c keep
 * none). */
FP__SHM_HIDDEN int fp__shm_alloc(fp_manager *m, fp__shm_heap *h, uint64_t *slot,
                                 uint64_t size);

/* Retires the chunk named by *slot (an offset, or a cref when is_cref):
 * it joins h's limbo for the current epoch and *slot becomes 0, in one
 * step; it is freed once no call that could have seen it is running. 0 in
 * *slot: nothing. The store that unlinked the chunk must be visible to
 * every CPU before the call: a full fence (atomic_thread_fence, seq_cst)
 * or a sequentially consistent read-modify-write after it, such as the
 * exchange that releases a lock. */
FP__SHM_HIDDEN void fp__shm_retire(fp_manager *m, fp__shm_heap *h,
                                   uint64_t *slot, int is_cref);

/* Enters / leaves a lock-free section: chunks retired meanwhile by anyone
 * are not reused before fp__shm_unpin. */
static inline void fp__shm_pin(fp_manager *m, fp__shm_heap *h) {
  uint64_t e = atomic_load_explicit(&m->epoch, memory_order_acquire);
  atomic_store_explicit(
      &h->pins, atomic_load_explicit(&h->pins, memory_order_relaxed) + 1,
      memory_order_relaxed);
  atomic_exchange(&h->pin, e << 1 | 1);
}
static inline void fp__shm_unpin(fp__shm_heap *h) {
  atomic_store_explicit(&h->pin, 0, memory_order_release);
}

/* Gives back what h caches and retired because an allocation of another
 * heap found no room (m->squeeze, heap.c). */
FP__SHM_HIDDEN void fp__shm_squeezed(fp_manager *m, fp__shm_heap *h);

/* The weight of retired chunks (h->nlimbo) a heap lets pile up before a
 * call's end collects them (fp__shm_collect with this min). A chunk weighs
 * 1, a span of pages 1 more per 1/1024 of the arena it holds: so 64 small
 * chunks, or retired spans worth a sixteenth of the arena, trigger a
 * collection, and a big value comes back at the end of the call that
 * replaced it rather than after 63 more retires. */
#define FP__SHM_LIMBO_TRIGGER 64

/* Frees what h retired that is now safe to reuse, trying to advance the
 * epoch first when h holds more than `min` retired chunks. */
FP__SHM_HIDDEN void fp__shm_collect(fp_manager *m, fp__shm_heap *h,
                                    uint64_t min);

/* Ends a call of h's owner on a structure of m: unpins, then gives back
 * what h holds when another heap asked for room, or else collects what it
 * retired once that piled up. m is read by the caller before the call's
 * structure may be freed. */
static inline void fp__shm_call_end(fp_manager *m, fp__shm_heap *h) {
  fp__shm_unpin(h);
  if (atomic_load_explicit(&m->squeeze, memory_order_relaxed) !=
      atomic_load_explicit(&h->squeezed, memory_order_relaxed))
    fp__shm_squeezed(m, h);
  else if (h->nlimbo >= FP__SHM_LIMBO_TRIGGER)
    fp__shm_collect(m, h, FP__SHM_LIMBO_TRIGGER);
}

/* Returns every cached chunk of heap d to the slabs and moves d's retired
 * chunks to the caller's heap h (d is a dead thread's, being reclaimed) or
 * to the global limbo (d == h, being released). h's identity takes the
 * global lock. */
FP__SHM_HIDDEN void fp__shm_heap_drain(fp_manager *m, fp__shm_heap *h,
                                       fp__shm_heap *d);

/* Frees what h retired that is safe to reuse (fp__shm_collect) and
 * returns h's cached chunks to their slabs; h stays its owner's. Returns
 * 1 when h still holds retired chunks (a call of another thread held the
 * epoch back), 0 when it holds nothing. */
FP__SHM_HIDDEN int fp__shm_give_back(fp_manager *m, fp__shm_heap *h);

/* The last resort of an allocation that found no room, for the calling
 * thread's heap h, pinned or not, with or without a structure lock: reclaims
 * the heaps of dead threads, advances the epoch as far as the pins allow,
 * frees what is safe of h's and the global limbo, and gives h's cached
 * chunks back to their slabs (a slab that empties goes back to the spans).
 * Every change is a step of the logs above, as everywhere else. */
FP__SHM_HIDDEN void fp__shm_make_room(fp_manager *m, fp__shm_heap *h);

/* How fp__shm_make_room reclaims the heaps of dead owners: thread.c
 * (fp__shm_reclaim_dead) sets it once per process, before any thread
 * has a heap to allocate with. A pointer rather than a call, because
 * thread.c builds on heap.c and not the other way round. */
FP__SHM_HIDDEN void fp__shm_set_reclaimer(int (*reclaim_dead)(fp_manager *m));

/* --- journal.c ---------------------------------------------------------- */

/* Journal protocol, used while holding the structure's lock (h is the
 * caller's heap, j = &h->j):
 *   fp__shm_jbegin(h)               IDLE -> ACTIVE
 *   fp__shm_alloc(m, h, &j->alloc[k], n), then fill the chunk while
 *     nothing points at it
 *   j->release[k] = chunk (plain stores)
 *   fp__shm_jset(m, h, &word, v)    for each reachable word changed that
 *     lock-free readers do not look at (or see no difference in)
 *   fp__shm_jpublish(m, h, words, vals, n)   the words they look at, last
 *   fp__shm_jcommit(m, h)           ACTIVE -> COMMITTED -> retires -> IDLE
 * or fp__shm_jabort(m, h) to roll back (e.g. after FP_ENOMEM).
 * fp__shm_jmark(h) / fp__shm_jfinish(m, h) split jcommit for callers that
 * unlock in between (a committed journal needs no lock to finish);
 * jfinish must follow the unlock directly (it relies on the unlock's
 * exchange as the fence before retiring). */
FP__SHM_HIDDEN void fp__shm_jbegin(fp__shm_heap *h);
FP__SHM_HIDDEN void fp__shm_jset(fp_manager *m, fp__shm_heap *h, uint64_t *word,
                                 uint64_t v);
/* The update's publication: its last stores, the first of which
 * (words[0]) is the one lock-free readers see the update by (a bucket, a
 * list's length). Logs all n (<= FP__SHM_PUB_MAX) old and new values, then
 * stores words[0], then the others. Once words[0] holds its new value the
 * update counts as done: a reader may have seen it, so a repair rolls it
 * forward (re-storing the logged values) instead of back. Nothing but
 * jmark/jcommit may follow it. */
FP__SHM_HIDDEN void fp__shm_jpublish(fp_manager *m, fp__shm_heap *h,
                                     uint64_t *const *words,
                                     const uint64_t *vals, int n);
FP__SHM_HIDDEN void fp__shm_jcommit(fp_manager *m, fp__shm_heap *h);
FP__SHM_HIDDEN void fp__shm_jmark(fp__shm_heap *h);
FP__SHM_HIDDEN void fp__shm_jfinish(fp_manager *m, fp__shm_heap *h);
FP__SHM_HIDDEN void fp__shm_jabort(fp_manager *m, fp__shm_heap *h);

/* Repairs dead heap d's journal: ACTIVE rolls back (forward when its
 * publication's first word was stored), COMMITTED rolls forward; what it
 * retires goes to d's own limbo, in steps of d's own log, so that a
 * survivor that dies while repairing leaves d repairable. Idempotent. */
FP__SHM_HIDDEN void fp__shm_jrepair(fp_manager *m, fp__shm_heap *d);

/* --- thread.c ----------------------------------------------------------- */

/* The calling thread's id (cached; a forked child gets its own). */
FP__SHM_HIDDEN uint32_t fp__shm_my_tid(void);

/* Returns the calling thread's heap in m, registering one on first use (a
 * forked child gets its own). NULL when every heap slot belongs to a live
 * thread. */
FP__SHM_HIDDEN fp__shm_heap *fp__shm_heap_get(fp_manager *m);

/* The lock identity of heap h. */
static inline uint32_t fp__shm_me(const fp_manager *m, const fp__shm_heap *h) {
  return FP__SHM_OWNER(
      fp__shm_heap_idx(m, h),
      FP__HS_GEN(atomic_load_explicit(&h->state, memory_order_relaxed)));
}

/* Takes a structure lock for h; if its holder died, reclaims the holder's
 * heap first (which repairs the structure from the holder's journal). */
FP__SHM_HIDDEN void fp__shm_lock(fp_manager *m, fp__shm_heap *h,
                                 fp__shm_mutex *mu, uint32_t first_poll);
static inline void fp__shm_unlock(fp__shm_mutex *mu) {
  fp__shm_mutex_unlock(mu);
}

/* Reclaims heap d if it still has generation gen and its owner is dead:
 * replays its heap log, repairs its journal, returns its chunks, frees the
 * slot. Safe to race with other reclaimers (one wins, the others wait for
 * it); a reclaimer that dies is taken over. h is the caller's heap. */
FP__SHM_HIDDEN void fp__shm_reclaim(fp_manager *m, fp__shm_heap *h,
                                    fp__shm_heap *d, uint32_t gen);

/* Process-wide list of the managers mapped in this process, so that a
 * thread's exit releases its heaps only in managers still mapped. */
FP__SHM_HIDDEN void fp__shm_mapped_add(fp_manager *m);
FP__SHM_HIDDEN void fp__shm_mapped_remove(fp_manager *m);

/* Gives back what the calling thread's heaps keep for later in every
 * manager it uses and that is still mapped: cached free chunks go back to
 * their slabs, retired ones whose grace period is over are freed. Only a
 * heap's owner can do this, so an idle thread that never calls it holds
 * them until it exits; a pool worker runs it before it sleeps (the idle
 * hook, ipc/wire/idle.h), so that idle workers do not hold a small arena
 * (docs/manager.md, "The arena"). Returns 1 when some heap still holds
 * retired chunks a call of another thread keeps for now (try again
 * later), 0 when nothing is left. Cheap when the caches are empty. */
FP__SHM_HIDDEN int fp__shm_thread_idle(void);

/* MPI worker ranks (FP_TRANSPORT_MPI). A worker rank's process is not a
 * fork of rank 0: no manager of rank 0 is mapped in it, and a manager it
 * made before fp_pool_new() (every rank runs the program up to that call)
 * is its own copy, laid out like rank 0's, whose objects a ref of rank 0
 * may name at the very same offset; the 27-bit tag would then be the only
 * thing telling them apart. So the MPI link calls enter_worker_rank() on
 * a worker rank before it forks anything (the fork server and the workers
 * inherit the mark), which marks every manager mapped then as such a copy;
 * from then on ref_refused() refuses to resolve a ref against a copy, a
 * NULL manager, or a pointer that is no manager mapped in this process.
 * Managers made afterwards on the rank (by an initializer or a task) are
 * the rank's own and resolve as usual. Returns 0 (resolve), or 1 with *err
 * set to FP_ENOTSUP or FP_EINVAL and the reason left as the last error and
 * as the running task's failure message. */
FP__SHM_HIDDEN void fp__shm_enter_worker_rank(int rank);
FP__SHM_HIDDEN int fp__shm_ref_refused(const fp_manager *m, const char *call,
                                       int *err);

/* Reclaims every heap whose owner is dead (the checker's settle step). */
FP__SHM_HIDDEN int fp__shm_reclaim_dead(fp_manager *m);

/* --- obj.c -------------------------------------------------------------- */

/* Checks that o is a live object of the given type inside a valid arena.
 * Returns 0, FP_EINVAL (NULL, not an object, freed, being destroyed) or
 * FP_ETYPE (a live object of another type); a refusal sets the message
 * (fp__shm_refuse). */
FP__SHM_HIDDEN int fp__shm_obj_check(const void *o, int type);

/* For a call on o, which the caller has checked: pins the calling thread's
 * heap (into *h), then checks o again, so that a destroy that had not
 * begun by then cannot have o's memory reused before the caller unpins
 * (heap.c). Returns 0 with *h pinned, or FP_ENOMEM (no heap slot) or
 * fp__shm_obj_check's error with nothing pinned. */
FP__SHM_HIDDEN int fp__shm_obj_pin(void *o, int type, fp__shm_heap **h);

/* A refused Manager call: sets the thread's fp_last_error() from a printf
 * format and returns rc. Only refusals (misuse, a full arena) call it;
 * ordinary outcomes (FP_ENOENT, FP_ERANGE, FP_EEXIST, ...) do not, so a
 * call that succeeds or finds nothing never formats a message. */
FP__SHM_HIDDEN int fp__shm_refuse(int rc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A read's output writer refused what the call copies into it (rc from
 * the fp_write_* call; err_before: the writer's sticky error before the
 * call): sets the message saying why and returns rc. */
FP__SHM_HIDDEN int fp__shm_out_refused(int rc, int err_before);
/* fp_write_raw(out, enc, n), with fp__shm_out_refused's message when the
 * writer refuses the value. */
FP__SHM_HIDDEN int fp__shm_write_out(fp_writer *out, const void *enc, size_t n);

/* The checks of a creating call's manager and out pointer: 0, or
 * FP_EINVAL with the message. */
FP__SHM_HIDDEN int fp__shm_check_new(const fp_manager *m, const void *out);

/* Whether this thread is inside an fp_dict_foreach on a dict of m
 * (dict.c): fp_manager_free of m from its callback is refused. */
FP__SHM_HIDDEN int fp__shm_walking(const fp_manager *m);

/* "dict", "list", "counter", "lock", "array" ("object" otherwise). */
FP__SHM_HIDDEN const char *fp__shm_type_name(int type);

/* Returns 1 while o is alive and no destroy has begun. Structures call it
 * again after taking a lock: a destroy marks the object dying before it
 * takes the object's locks, so a caller that got the lock after the
 * destroy's pass sees the mark and must not change anything. */
static inline int fp__shm_obj_alive(const fp__shm_obj *o) {
  return atomic_load(&o->dying) == 0;
}

/* First step of every destroy: checks o like fp__shm_obj_check, but also
 * accepts an object whose destroy began earlier (a destroy that was
 * interrupted may be called again), and marks it dying -- under the
 * global lock, which creating and freeing objects take, so the mark never
 * lands on a new object made at the same place by a racing destroy and
 * create. *gen gets the object's creation number, for fp__shm_obj_free.
 * Returns 0, FP_EINVAL, FP_ETYPE or FP_ENOMEM (no heap slot). */
FP__SHM_HIDDEN int fp__shm_obj_begin_destroy(void *o, int type, uint64_t *gen);

/* Creates an object of `size` bytes (>= sizeof(fp__shm_obj)), zero-filled,
 * header filled in, and calls init(obj, arg) (may be NULL) before
 * publishing it in the registry: one step of the global allocator, so a
 * crash leaves either no object or a fully built one. init must not
 * allocate. Returns 0 and *out, FP_ENOMEM, FP_EMSGSIZE or FP_EAGAIN (no
 * heap slot for this thread). */
FP__SHM_HIDDEN int fp__shm_obj_new(fp_manager *m, int type, uint64_t size,
                                   int (*init)(void *obj, void *arg), void *arg,
                                   void **out);

/* Unlinks an object from the registry, clears its magic and retires its
 * chunk in one step, if it is still the object of creation number gen
 * (from fp__shm_obj_begin_destroy); FP_EINVAL when a racing destroy freed
 * it first. The caller has released everything the object owns. */
FP__SHM_HIDDEN int fp__shm_obj_free(fp_manager *m, fp__shm_obj *o,
                                    uint64_t gen);

/* A whole destroy of an object that owns nothing else (counter, lock,
 * array). */
FP__SHM_HIDDEN int fp__shm_obj_destroy(void *o, int type);

/* The start of a destroy that clears the object before freeing it (dict,
 * list): pins the caller's heap *before* fp__shm_obj_begin_destroy, so
 * that a racing destroy may free the object but no create can reuse its
 * memory while this one clears it. Returns as begin_destroy; on 0 *m,
 * *h (pinned: unpin after the clear, then fp__shm_obj_free) and *gen. */
FP__SHM_HIDDEN int fp__shm_obj_begin_clearing_destroy(void *o, int type,
                                                      fp_manager **m,
                                                      fp__shm_heap **h,
                                                      uint64_t *gen);

/* Returns the object a ref names if it is a live object of that type, else
 * NULL; *err gets FP_EINVAL or FP_ETYPE. */
FP__SHM_HIDDEN void *fp__shm_obj_from_ref(fp_manager *m, uint64_t ref, int type,
                                          int *err);

/* Returns the ref of a live object: type << 61 | tag << 34 | offset / 64,
 * where the 27-bit tag is a hash of the manager's random identity and the
 * object's creation number: a ref of another manager, or of an object
 * that was freed and whose chunk now holds another object, fails the tag
 * check (but for a 2^-27 chance). Arena offsets fit in 40 bits and
 * objects are 64-byte aligned, so offset / 64 fits in 34 bits. */
FP__SHM_HIDDEN uint64_t fp__shm_obj_ref(const fp__shm_obj *o);

/* Validates a value to be stored: exactly one well-formed encoded value.
 * Returns 0, FP_EINVAL (NULL), FP_EMSGSIZE (over 4 GiB) or FP_EPROTO. */
FP__SHM_HIDDEN int fp__shm_check_value(const void *v, size_t vlen);

/* fp__shm_check_value for a caller's argument: a refusal also sets the
 * message (the checker's own uses of check_value must not). */
FP__SHM_HIDDEN int fp__shm_check_arg(const void *v, size_t vlen);

/* Little-endian int64 helpers. A little-endian host copies the bytes as
 * they stand: the byte loop, which gcc does not fold into one load, costs
 * some 30 instructions on every scalar the dict and list store or read. */
static inline int64_t fp__shm_le64(const unsigned char *p) {
  uint64_t v = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(&v, p, 8);
#else
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
#endif
  return (int64_t)v;
}
static inline void fp__shm_put_le64(unsigned char *p, int64_t x) {
  uint64_t v = (uint64_t)x;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(p, &v, 8);
#else
  for (int i = 0; i < 8; i++, v >>= 8)
    p[i] = (unsigned char)v;
#endif
}

#endif /* FP_IPC_SHM_ARENA_H */
