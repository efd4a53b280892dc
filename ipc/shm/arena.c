/* SPDX-License-Identifier: MIT */
/* arena.c - the manager's region and its global allocator: page spans that
 * merge with their free neighbours, and slabs of small chunks.
 *
 * Layout of the region (offsets from its base, which is the header):
 *   header (struct fp_manager) | page map | heap table | heap area
 * The page map holds one word per page of the region, describing the span
 * a page belongs to: FREE and LARGE spans mark their first and last pages
 * with their length in pages, a SLAB marks every page with its first
 * page's number. The heap area [heap, size) is carved from both ends:
 * slabs from the bottom up to brk, large spans (big values, tables,
 * arrays) from the top down to top. [heap, brk) and [top, size) are
 * always tiled by spans; [brk, top) is the uncarved rest.
 *
 * Spans. A request of several pages takes the first free span that fits
 * from 64 bins (exact lengths up to 32 pages, then powers of two), splits
 * off the rest, or carves fresh pages at its end of the rest. A freed span
 * merges with a free span just before and just after it in its part (the
 * page map's boundary words find them in O(1)), so memory freed in pieces
 * serves a later large request and a long churn does not grow the arena
 * without bound; a free span that borders the rest goes back to it.
 * Why two ends: a big value freed below a slab carved after it could
 * otherwise serve only requests up to its own length for as long as the
 * slab lives (what malloc avoids by mapping big blocks apart).
 *
 * Small chunks (up to FP__SHM_SMALL_MAX bytes) come in 31 size classes, 4
 * per doubling above 128 bytes (so a chunk wastes at most a fifth), and
 * live in slabs: a span of 3 to 16 pages holding a 64-byte header and
 * equal chunks, whose free chunks are linked through their first word.
 * Threads do not take chunks one at a time from here: their heaps
 * (heap.c) take a batch into a private cache (fp__shm_refill) and give
 * batches back (fp__shm_flush), so this lock is taken once per tens of
 * allocations. A slab that becomes empty goes back to the spans, unless it
 * is its class's last one with room.
 *
 * Crash safety. Everything here runs under the global lock m->mu as one
 * step: every word that was reachable before the step is changed through
 * fp__shm_alog(), which appends its old value to the header's undo log
 * before the store; the step ends when the log is emptied (acommit). A
 * holder that dies leaves the log non-empty; the next holder of the lock
 * (told by fp__shm_mutex_lock that the previous one died) replays it
 * backwards, which is idempotent. Writes into memory nobody could reach
 * before the step (fresh pages, the inside of a free span, chunks being
 * threaded into a new slab) need no logging: a rollback makes them
 * unreachable again. Word 0 of a free span's first page and of any chunk
 * is the allocator's link word; it is logged whenever the chunk or span
 * was reachable.
 */
#include "ipc/shm/check.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

long fp__shm_crash_countdown;

void fp__shm_crash_now(void) {
  if (--fp__shm_crash_countdown == 0)
    kill(getpid(), SIGKILL);
}

/* --- size classes ------------------------------------------------------- */

static const uint32_t class_size[FP__SHM_NCLASS] = {
    16,   32,   48,   64,   80,   96,   112,  128,  160,  192,  224,
    256,  320,  384,  448,  512,  640,  768,  896,  1024, 1280, 1536,
    1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168};

/* Pages per slab: the smallest count, up to 16, that leaves at most about
 * 1% of the slab unused after its header (4% for 2 and 3 KiB, 7% for 4
 * KiB), and holds at least 8 chunks. */
static const uint8_t slab_pages[FP__SHM_NCLASS] = {
    3, 3,  4, 3,  3, 4,  5, 6,  3, 4,  5, 6,  3,  8,  8, 12,
    3, 13, 9, 10, 6, 11, 4, 15, 7, 10, 8, 14, 14, 14, 16};

/* Cached chunks per class in a heap: 32 for small classes, about 8 KiB
 * worth for larger ones, at least 4 (8192 / size, clamped); and where
 * each class's slots begin in the heap's cache array (prefix sums). */
static const uint8_t cache_cap[FP__SHM_NCLASS] = {
    32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 25, 21, 18, 16,
    12, 10, 9,  8,  6,  5,  4,  4,  4,  4,  4,  4,  4,  4,  4};
static const uint16_t cache_base[FP__SHM_NCLASS] = {
    0,   32,  64,  96,  128, 160, 192, 224, 256, 288, 320,
    352, 384, 409, 430, 448, 464, 476, 486, 495, 503, 509,
    514, 518, 522, 526, 530, 534, 538, 542, 546};
_Static_assert(546 + 4 <= FP__SHM_CACHE_SLOTS, "heap cache array size");

int fp__shm_class_of(uint64_t size) {
  if (size <= 128)
    return size == 0 ? 0 : (int)((size + 15) / 16) - 1;
  /* 2^b < size <= 2^(b+1): classes 2^b * 5/4, 6/4, 7/4, 8/4. */
  int b = 63 - __builtin_clzll(size - 1);
  uint64_t q =
      (size - ((uint64_t)1 << b) + ((uint64_t)1 << (b - 2)) - 1) >> (b - 2);
  return 7 + (b - 7) * 4 + (int)q;
}

uint32_t fp__shm_class_size(int cls) {
  return class_size[cls];
}

uint32_t fp__shm_cache_cap(int cls) {
  return cache_cap[cls];
}

uint32_t fp__shm_cache_base(int cls) {
  return cache_base[cls];
}

/* --- page map ------------------------------------------------------------ */

enum { PM_FREE = 1, PM_LARGE = 2, PM_SLAB = 3 };
#define PM(kind, val) ((uint64_t)(val) << 2 | (kind))
#define PM_KIND(e) ((int)((e)&3))
#define PM_VAL(e) ((e) >> 2)

static uint64_t *pm(const fp_manager *m, uint64_t page) {
  return (uint64_t *)fp__shm_ptr(m, m->pagemap) + page;
}

static uint64_t page_of(uint64_t off) {
  return off >> FP__SHM_PAGE_SHIFT;
}

/* The slab header, at the start of a slab's first page. */
typedef struct slab {
  uint64_t link; /* a free span's link word before; unused in a slab */
  uint64_t span_prev;
  uint32_t cls;
  uint32_t nchunks;
  uint64_t nfree;
  uint64_t free; /* first free chunk (offset), chunks linked by word 0 */
  uint64_t next; /* the class's list of slabs with free chunks */
  uint64_t prev;
  uint64_t magic;
} slab;
#define SLAB_HDR 64
#define SLAB_MAGIC 0x62616c73706f6f66ULL

_Static_assert(sizeof(slab) == SLAB_HDR, "slab header size");

/* A free span's first page starts with its bin links. */
typedef struct span_hdr {
  uint64_t next;
  uint64_t prev;
} span_hdr;

static slab *slab_at(fp_manager *m, uint64_t off) {
  return fp__shm_ptr(m, off);
}

static uint64_t word0(fp_manager *m, uint64_t off) {
  return *(uint64_t *)fp__shm_ptr(m, off);
}

uint64_t fp__shm_chunk_bytes(const fp_manager *m, uint64_t off) {
  uint64_t e, s;
  const slab *sl;

  /* A caller without the global lock: a heap collecting its own retired
   * chunks (fp__shm_carved says why that is safe). */
  if (!fp__shm_carved(m, off, 16) || off % 16 != 0)
    return 0;
  e = *pm(m, page_of(off));
  if (PM_KIND(e) == PM_LARGE)
    return off % FP__SHM_PAGE == 0 ? PM_VAL(e) << FP__SHM_PAGE_SHIFT : 0;
  if (PM_KIND(e) != PM_SLAB)
    return 0;
  s = PM_VAL(e) << FP__SHM_PAGE_SHIFT;
  sl = fp__shm_ptr(m, s);
  if (sl->magic != SLAB_MAGIC || sl->cls >= FP__SHM_NCLASS ||
      off < s + SLAB_HDR || (off - s - SLAB_HDR) % class_size[sl->cls] != 0 ||
      (off - s - SLAB_HDR) / class_size[sl->cls] >= sl->nchunks)
    return 0;
  return class_size[sl->cls];
}

uint64_t fp__shm_large_pages(const fp_manager *m, uint64_t off) {
  uint64_t e = *pm(m, page_of(off));
  return PM_KIND(e) == PM_LARGE ? PM_VAL(e) : 0;
}

/* --- the global undo log ------------------------------------------------- */

void fp__shm_alog(fp_manager *m, uint64_t *p, uint64_t v) {
  uint64_t n = m->anundo;
  if (n >= FP__SHM_AUNDO_MAX)
    abort(); /* steps are bounded well below this: broken invariant */
  m->aundo[n].off = fp__shm_off(m, p);
  m->aundo[n].old = *p;
  FP__SHM_BARRIER();
  m->anundo = n + 1;
  FP__SHM_BARRIER();
  FP__SHM_CRASH_POINT();
  __atomic_store_n(p, v, __ATOMIC_RELAXED); /* some are read unlocked */
  FP__SHM_BARRIER();
  FP__SHM_CRASH_POINT();
}

/* Restores the log, newest entry first, then empties it. */
static void arollback(fp_manager *m) {
  uint64_t n = m->anundo;
  if (n > FP__SHM_AUNDO_MAX)
    n = FP__SHM_AUNDO_MAX;
  while (n-- > 0) {
    *(uint64_t *)fp__shm_ptr(m, m->aundo[n].off) = m->aundo[n].old;
    FP__SHM_BARRIER();
    FP__SHM_CRASH_POINT();
  }
  m->anundo = 0;
  FP__SHM_BARRIER();
}

void fp__shm_aabort(fp_manager *m) {
  arollback(m);
}

void fp__shm_acommit(fp_manager *m) {
  FP__SHM_BARRIER();
  m->anundo = 0;
  FP__SHM_BARRIER();
}

void fp__shm_alock(fp_manager *m, const fp__shm_heap *h) {
  if (fp__shm_mutex_lock(m, &m->mu, fp__shm_me(m, h),
                         FP__SHM_POLL_SOON) != 0) {
    atomic_fetch_add(&m->recovered, 1);
    if (m->anundo != 0)
      atomic_fetch_add(&m->repairs, 1);
  }
  /* After a dead holder, and harmless otherwise (the log is empty). */
  arollback(m);
}

void fp__shm_aunlock(fp_manager *m) {
  fp__shm_mutex_unlock(&m->mu);
}

/* --- spans ---------------------------------------------------------------- */

static int bin_of(uint64_t npages) {
  if (npages <= 32)
    return (int)npages - 1;
  int b = 32 + (63 - __builtin_clzll(npages)) - 5;
  return b < FP__SHM_NBIN ? b : FP__SHM_NBIN - 1;
}

static span_hdr *span_at(fp_manager *m, uint64_t off) {
  return fp__shm_ptr(m, off);
}

static void bin_insert(fp_manager *m, uint64_t off, uint64_t npages) {
  uint64_t *head = &m->bins[bin_of(npages)];
  span_hdr *s = span_at(m, off);

  fp__shm_alog(m, &s->next, *head);
  fp__shm_alog(m, &s->prev, 0);
  if (*head != 0)
    fp__shm_alog(m, &span_at(m, *head)->prev, off);
  fp__shm_alog(m, head, off);
}

static void bin_remove(fp_manager *m, uint64_t off, uint64_t npages) {
  span_hdr *s = span_at(m, off);

  if (s->prev != 0)
    fp__shm_alog(m, &span_at(m, s->prev)->next, s->next);
  else
    fp__shm_alog(m, &m->bins[bin_of(npages)], s->next);
  if (s->next != 0)
    fp__shm_alog(m, &span_at(m, s->next)->prev, s->prev);
}

/* Marks [off, off + n pages) in the page map as one span of a kind. */
static void mark_span(fp_manager *m, uint64_t off, uint64_t n, int kind) {
  uint64_t p = page_of(off);

  fp__shm_alog(m, pm(m, p), PM(kind, n));
  if (n > 1)
    fp__shm_alog(m, pm(m, p + n - 1), PM(kind, n));
}

/* Carves n fresh pages off the uncarved rest: at brk (from_top 0) or
 * below top. Returns the offset, or 0 when the rest is too small. */
static uint64_t span_carve(fp_manager *m, uint64_t n, int from_top) {
  uint64_t off;

  if (m->brk > m->top || (m->top - m->brk) >> FP__SHM_PAGE_SHIFT < n)
    return 0;
  if (from_top) {
    off = m->top - (n << FP__SHM_PAGE_SHIFT);
    fp__shm_alog(m, &m->top, off);
  } else {
    off = m->brk;
    fp__shm_alog(m, &m->brk, m->brk + (n << FP__SHM_PAGE_SHIFT));
  }
  if (fp__shm_carved_bytes(m) > m->carved_high)
    fp__shm_alog(m, &m->carved_high, fp__shm_carved_bytes(m));
  return off;
}

/* Takes the first n pages of the first free span of at least n pages
 * (of the bottom part only, when low_only), putting the rest back.
 * Returns its offset, or 0 when there is none. */
static uint64_t bin_take(fp_manager *m, uint64_t n, int low_only) {
  for (int b = bin_of(n); b < FP__SHM_NBIN; b++) {
    for (uint64_t off = m->bins[b]; off != 0; off = span_at(m, off)->next) {
      uint64_t len = PM_VAL(*pm(m, page_of(off)));
      if (len < n || (low_only && off >= m->brk))
        continue;
      bin_remove(m, off, len);
      /* The span's link words were reachable: keep their old values. */
      fp__shm_alog(m, &span_at(m, off)->next, 0);
      fp__shm_alog(m, &span_at(m, off)->prev, 0);
      if (len > n) {
        uint64_t rest = off + (n << FP__SHM_PAGE_SHIFT);
        mark_span(m, rest, len - n, PM_FREE);
        bin_insert(m, rest, len - n);
      }
      return off;
    }
  }
  return 0;
}

/* Finds n pages: a free span (bin_take), or fresh pages (span_carve) at
 * the bottom for a slab, at the top for a large span. Returns the
 * offset, or 0 when the arena is full. The caller marks the page map. A
 * slab takes a free span of the top part only as a last resort: sitting
 * between big spans, it would keep their pages from merging back into
 * one run when they are freed.
 *
 * Fresh pages cost memory for as long as the arena lives, so once the
 * carved area has grown a step (room_step) since the last time room was
 * made, a request that finds no free span returns 0 here, and its caller
 * takes the path of a full arena: fp__shm_make_room (heap.c), which
 * reclaims the heaps of threads that exited (a forked process that
 * returns from its function and _exits leaves the chunks it cached and
 * retired there) and collects retired chunks, then moves the mark
 * (fp__shm_room_made) and tries again. Without it, what exited processes
 * left behind came back only when the arena was full: the footprint grew
 * to the arena's size first. */
static uint64_t span_alloc(fp_manager *m, uint64_t n, int from_top) {
  uint64_t off = bin_take(m, n, !from_top);
  if (off != 0)
    return off;
  if (fp__shm_carved_bytes(m) >= m->room_mark)
    return 0;
  off = span_carve(m, n, from_top);
  if (off == 0 && !from_top)
    off = bin_take(m, n, 0);
  return off;
}

/* Frees the span [off, off + n pages), merging it with free neighbours. */
static void span_free(fp_manager *m, uint64_t off, uint64_t n) {
  uint64_t p = page_of(off), q = p + n, e;
  /* The pages of the span's part: neighbours outside it are not spans. */
  int low = off < m->brk;
  uint64_t first = page_of(low ? m->heap : m->top);
  uint64_t end = page_of(low ? m->brk : m->size);

  if (p > first && PM_KIND(e = *pm(m, p - 1)) == PM_FREE) {
    uint64_t len = PM_VAL(e); /* a free span ends at p-1 */
    p -= len;
    bin_remove(m, p << FP__SHM_PAGE_SHIFT, len);
    n += len;
  }
  if (q < end && PM_KIND(e = *pm(m, q)) == PM_FREE) {
    uint64_t len = PM_VAL(e);
    bin_remove(m, q << FP__SHM_PAGE_SHIFT, len);
    n += len;
  }
  off = p << FP__SHM_PAGE_SHIFT;
  /* A free span that borders the uncarved rest goes back to it, so that a
   * later request may take it together with that rest (kept in a bin, it
   * could serve at most its own length). */
  if (low && p + n == end) {
    fp__shm_alog(m, &m->brk, off);
    return;
  }
  if (!low && p == first) {
    fp__shm_alog(m, &m->top, (p + n) << FP__SHM_PAGE_SHIFT);
    return;
  }
  /* Inner boundary words of a merge keep stale values: only the span's
   * first and last pages are ever read. */
  mark_span(m, off, n, PM_FREE);
  bin_insert(m, off, n);
}

/* --- slabs ---------------------------------------------------------------- */

static void partial_insert(fp_manager *m, uint64_t off) {
  slab *s = slab_at(m, off);
  uint64_t *head = &m->partial[s->cls];

  fp__shm_alog(m, &s->next, *head);
  fp__shm_alog(m, &s->prev, 0);
  if (*head != 0)
    fp__shm_alog(m, &slab_at(m, *head)->prev, off);
  fp__shm_alog(m, head, off);
}

static void partial_remove(fp_manager *m, uint64_t off) {
  slab *s = slab_at(m, off);

  if (s->prev != 0)
    fp__shm_alog(m, &slab_at(m, s->prev)->next, s->next);
  else
    fp__shm_alog(m, &m->partial[s->cls], s->next);
  if (s->next != 0)
    fp__shm_alog(m, &slab_at(m, s->next)->prev, s->prev);
}

/* Builds a slab of class cls on a new span and puts it on the class's
 * list. Returns its offset, 0 when the arena is full. */
static uint64_t slab_new(fp_manager *m, int cls) {
  uint64_t n = slab_pages[cls], off = span_alloc(m, n, 0), size;
  slab *s;

  if (off == 0)
    return 0;
  for (uint64_t i = 0; i < n; i++)
    fp__shm_alog(m, pm(m, page_of(off) + i), PM(PM_SLAB, page_of(off)));
  /* Header words 0 and 8 were logged by span_alloc (or are fresh); the
   * rest of the span was unreachable, so it is built without logging. */
  s = slab_at(m, off);
  size = class_size[cls];
  s->cls = (uint32_t)cls;
  s->nchunks = (uint32_t)(((n << FP__SHM_PAGE_SHIFT) - SLAB_HDR) / size);
  s->nfree = s->nchunks;
  s->free = off + SLAB_HDR;
  for (uint64_t i = 0; i < s->nchunks; i++) {
    uint64_t c = off + SLAB_HDR + i * size;
    *(uint64_t *)fp__shm_ptr(m, c) = i + 1 < s->nchunks ? c + size : 0;
  }
  s->magic = SLAB_MAGIC;
  partial_insert(m, off);
  return off;
}

/* Returns an empty slab's pages to the spans. */
static void slab_release(fp_manager *m, uint64_t off) {
  slab *s = slab_at(m, off);

  partial_remove(m, off);
  fp__shm_alog(m, &s->magic, 0);
  span_free(m, off, slab_pages[s->cls]);
}

/* Takes one chunk off slab s (which has a free one). */
static uint64_t slab_pop(fp_manager *m, uint64_t off) {
  slab *s = slab_at(m, off);
  uint64_t c = s->free;

  fp__shm_alog(m, &s->free, word0(m, c));
  fp__shm_alog(m, &s->nfree, s->nfree - 1);
  if (s->nfree == 0)
    partial_remove(m, off);
  return c;
}

/* Takes up to want chunks off slab s (which has a free one) into dst[],
 * past the cache's count, so unreachable and unlogged. The slab's free
 * head and count are logged once, then stored plainly: a rollback
 * restores the first logged values, which is all that matters. Returns
 * the number taken. */
static int slab_take(fp_manager *m, uint64_t off, int want, uint64_t *dst) {
  slab *s = slab_at(m, off);
  uint64_t c = s->free;
  int got = 0;

  fp__shm_alog(m, &s->free, s->free);
  fp__shm_alog(m, &s->nfree, s->nfree);
  while (got < want && c != 0) {
    dst[got++] = c;
    c = word0(m, c);
  }
  s->free = c;
  s->nfree -= (uint64_t)got;
  FP__SHM_BARRIER();
  if (s->nfree == 0)
    partial_remove(m, off);
  return got;
}

/* Gives chunk c back to its slab. c's word 0 is logged when log_link is
 * set (c was reachable through a list that uses it). */
static void slab_push(fp_manager *m, uint64_t c, int log_link) {
  uint64_t off = PM_VAL(*pm(m, page_of(c))) << FP__SHM_PAGE_SHIFT;
  slab *s = slab_at(m, off);

  if (log_link)
    fp__shm_alog(m, fp__shm_ptr(m, c), s->free);
  else
    *(uint64_t *)fp__shm_ptr(m, c) = s->free;
  fp__shm_alog(m, &s->free, c);
  fp__shm_alog(m, &s->nfree, s->nfree + 1);
  if (s->nfree == 1)
    partial_insert(m, off);
  else if (s->nfree == s->nchunks &&
           (m->partial[s->cls] != off || s->next != 0))
    slab_release(m, off);
}

/* --- batches for the heaps' caches ---------------------------------------- */

int fp__shm_refill(fp_manager *m, fp__shm_heap *h, int cls, int want) {
  uint64_t n, base = fp__shm_cache_base(cls);
  int got = 0;

  fp__shm_alock(m, h);
  n = h->ncache[cls];
  while (got < want) {
    uint64_t s = m->partial[cls];
    if (s == 0 && (s = slab_new(m, cls)) == 0)
      break;
    got += slab_take(m, s, want - got, &h->cache[base + n + (uint64_t)got]);
  }
  if (got > 0) {
    fp__shm_alog(m, &h->ncache[cls], n + (uint64_t)got);
    fp__shm_alog(m, &m->used, m->used + (uint64_t)got * class_size[cls]);
  }
  fp__shm_acommit(m);
  fp__shm_aunlock(m);
  return got;
}

void fp__shm_flush(fp_manager *m, const fp__shm_heap *h, fp__shm_heap *d,
                   int cls, int n) {
  uint64_t k, base = fp__shm_cache_base(cls);
  int done = 0;

  fp__shm_alock(m, h);
  k = d->ncache[cls];
  /* Each chunk logs a few words, a released slab a few dozen: stop early
   * rather than overflow the log (the caller needs one free slot). */
  while (done < n && (uint64_t)done < k && m->anundo + 48 < FP__SHM_AUNDO_MAX)
    slab_push(m, d->cache[base + k - 1 - (uint64_t)done++], 0);
  if (done > 0) {
    fp__shm_alog(m, &d->ncache[cls], k - (uint64_t)done);
    fp__shm_alog(m, &m->used, m->used - (uint64_t)done * class_size[cls]);
  }
  fp__shm_acommit(m);
  fp__shm_aunlock(m);
}

/* slab_push keeps an empty slab when it is the only one of its class with
 * room (it is what the class's next refill takes), and one stays empty in
 * the list when a slab is inserted in front of it later. A request for a
 * long run of pages may need those pages back: kept slabs spread over the
 * arena cut its free pages into runs too short. Each release is its own
 * step (a release logs a few dozen words; all of them would not fit). */
void fp__shm_trim(fp_manager *m, const fp__shm_heap *h) {
  fp__shm_alock(m, h);
  for (int c = 0; c < FP__SHM_NCLASS; c++) {
    uint64_t off = m->partial[c];
    while (off != 0) {
      slab *s = slab_at(m, off);
      uint64_t next = s->next;
      if (s->nfree == s->nchunks) {
        slab_release(m, off);
        fp__shm_acommit(m);
      }
      off = next;
    }
  }
  fp__shm_aunlock(m);
}

/* Carved bytes between two makings of room: a sixty-fourth of the heap
 * area (16 MiB of the default 1 GiB), at least 16 pages. Room is made at
 * most once per step, which costs a scan of the heap table (heap.c). */
static uint64_t room_step(const fp_manager *m) {
  uint64_t step = (m->size - m->heap) / 64;
  return step < 16 * FP__SHM_PAGE ? 16 * FP__SHM_PAGE : step;
}

void fp__shm_room_made(fp_manager *m, const fp__shm_heap *h) {
  fp__shm_alock(m, h);
  fp__shm_alog(m, &m->room_mark, fp__shm_carved_bytes(m) + room_step(m));
  fp__shm_acommit(m);
  fp__shm_aunlock(m);
}

/* --- single chunks under the lock ----------------------------------------- */

/* The smallest class of at least size bytes whose chunks are 64-aligned
 * (its size a multiple of 64: slabs start their chunks at 64), or -1. */
static int class_of_aligned(uint64_t size) {
  for (int c = fp__shm_class_of(size); c < FP__SHM_NCLASS; c++)
    if (class_size[c] % 64 == 0)
      return c;
  return -1;
}

int fp__shm_alloc_pages_locked(fp_manager *m, uint64_t *slot,
                               uint64_t size) {
  uint64_t n = (size + FP__SHM_PAGE - 1) >> FP__SHM_PAGE_SHIFT, off;

  if (size > m->size - m->heap)
    return FP_EMSGSIZE;
  if ((off = span_alloc(m, n, 1)) == 0)
    return FP_ENOMEM;
  mark_span(m, off, n, PM_LARGE);
  fp__shm_alog(m, &m->used, m->used + (n << FP__SHM_PAGE_SHIFT));
  fp__shm_alog(m, slot, off);
  return 0;
}

int fp__shm_alloc_locked(fp_manager *m, uint64_t *slot, uint64_t size) {
  int cls = size <= FP__SHM_SMALL_MAX ? class_of_aligned(size) : -1;
  uint64_t off;

  if (cls < 0)
    return fp__shm_alloc_pages_locked(m, slot, size);
  uint64_t s = m->partial[cls];
  if (s == 0 && (s = slab_new(m, cls)) == 0)
    return FP_ENOMEM;
  off = slab_pop(m, s);
  fp__shm_alog(m, &m->used, m->used + class_size[cls]);
  fp__shm_alog(m, slot, off);
  return 0;
}

void fp__shm_free_locked(fp_manager *m, uint64_t off) {
  uint64_t e = *pm(m, page_of(off)), bytes;

  if (PM_KIND(e) == PM_LARGE) {
    bytes = PM_VAL(e) << FP__SHM_PAGE_SHIFT;
    span_free(m, off, PM_VAL(e)); /* logs the words it reuses */
  } else {
    bytes = fp__shm_chunk_bytes(m, off);
    slab_push(m, off, 1); /* word 0 was a list link: logged */
  }
  fp__shm_alog(m, &m->used, m->used - bytes);
}

void fp__shm_push_locked(fp_manager *m, uint64_t *head, uint64_t off) {
  fp__shm_alog(m, fp__shm_ptr(m, off), *head);
  fp__shm_alog(m, head, off);
}

/* --- layout --------------------------------------------------------------- */

int fp__shm_arena_init(fp_manager *m, uint64_t size) {
  uint64_t nheaps = size >> 18, end;

  /* One heap per 256 KiB of arena, 8 to 1024: a heap costs about 5 KiB of
   * the region, touched only when a thread uses it. */
  nheaps = nheaps < 8 ? 8 : nheaps > 1024 ? 1024 : nheaps;
  m->size = size;
  m->base = (uint64_t)(uintptr_t)m;
  m->pagemap = (sizeof(*m) + 63) & ~(uint64_t)63;
  m->heaps =
      (m->pagemap + (size >> FP__SHM_PAGE_SHIFT) * 8 + 63) & ~(uint64_t)63;
  m->nheaps = nheaps;
  end = m->heaps + nheaps * sizeof(fp__shm_heap);
  m->heap = (end + FP__SHM_PAGE - 1) & ~(FP__SHM_PAGE - 1);
  if (m->heap + 16 * FP__SHM_PAGE > size)
    return FP_EINVAL;
  m->brk = m->heap;
  m->top = size;
  m->carved_high = 0;
  m->room_mark = room_step(m);
  return 0;
}

/* --- consistency check ---------------------------------------------------- */

/* Checks slab s: header, free list (claimed as the allocator's), and the
 * list membership that nfree implies. Its chunks in use are claimed by
 * their holders. */
static int check_slab(fp__shm_checker *c, uint64_t off, uint64_t *npartial) {
  fp_manager *m = c->m;
  slab *s = slab_at(m, off);
  uint64_t size, n = 0, used;
  int rc;

  if (s->magic != SLAB_MAGIC || s->cls >= FP__SHM_NCLASS)
    return fp__shm_fail(c, "slab %llu: bad header", (unsigned long long)off);
  size = class_size[s->cls];
  used = SLAB_HDR + (uint64_t)s->nchunks * size;
  if (s->nchunks !=
          ((slab_pages[s->cls] << FP__SHM_PAGE_SHIFT) - SLAB_HDR) / size ||
      s->nfree > s->nchunks)
    return fp__shm_fail(c, "slab %llu: counts", (unsigned long long)off);
  if ((rc = fp__shm_claim_bytes(c, off, SLAB_HDR, "slab header")) != 0 ||
      (rc = fp__shm_claim_bytes(
           c, off + used, (slab_pages[s->cls] << FP__SHM_PAGE_SHIFT) - used,
           "slab tail")) != 0)
    return rc;
  c->pool_bytes += (slab_pages[s->cls] << FP__SHM_PAGE_SHIFT) - used +
                   SLAB_HDR + s->nfree * size;
  for (uint64_t f = s->free; f != 0 && rc == 0; f = word0(m, f), n++)
    if (f < off + SLAB_HDR || f >= off + used ||
        (f - off - SLAB_HDR) % size != 0)
      rc = fp__shm_fail(c, "slab %llu: free link %llu", (unsigned long long)off,
                        (unsigned long long)f);
    else
      rc = fp__shm_claim_bytes(c, f, size, "slab free chunk");
  if (rc == 0 && n != s->nfree)
    rc = fp__shm_fail(c, "slab %llu: %llu free chunks, header says %llu",
                      (unsigned long long)off, (unsigned long long)n,
                      (unsigned long long)s->nfree);
  *npartial += s->nfree > 0;
  return rc;
}

/* Walks [from, to), one part of the carved area, span by span through
 * the page map: the spans must tile it, free spans must not touch each
 * other (they would have merged). */
static int check_part(fp__shm_checker *c, uint64_t from, uint64_t to,
                      uint64_t *nfree, uint64_t *npart) {
  fp_manager *m = c->m;
  int prev_free = 0, rc = 0;
  uint64_t off = from;

  while (off < to && rc == 0) {
    uint64_t e = *pm(m, page_of(off)), n;
    int kind = PM_KIND(e);
    if (kind == PM_SLAB) {
      if (PM_VAL(e) != page_of(off) || slab_at(m, off)->cls >= FP__SHM_NCLASS)
        return fp__shm_fail(c, "page map: slab %llu", (unsigned long long)off);
      n = slab_pages[slab_at(m, off)->cls];
      rc = check_slab(c, off, npart);
    } else if (kind == PM_FREE || kind == PM_LARGE) {
      n = PM_VAL(e);
      if (n == 0 || *pm(m, page_of(off) + n - 1) != e ||
          (kind == PM_FREE && prev_free))
        return fp__shm_fail(c, "page map: span %llu", (unsigned long long)off);
      if (kind == PM_FREE) {
        rc = fp__shm_claim_bytes(c, off, n << FP__SHM_PAGE_SHIFT, "free span");
        c->pool_bytes += n << FP__SHM_PAGE_SHIFT;
        (*nfree)++;
      }
    } else {
      return fp__shm_fail(c, "page map: no span at %llu",
                          (unsigned long long)off);
    }
    prev_free = kind == PM_FREE;
    off += n << FP__SHM_PAGE_SHIFT;
  }
  if (rc == 0 && off != to)
    return fp__shm_fail(c, "page map: a span crosses %llu",
                        (unsigned long long)to);
  return rc;
}

static int check_spans(fp__shm_checker *c, uint64_t *nfree, uint64_t *npart) {
  int rc = check_part(c, c->m->heap, c->m->brk, nfree, npart);
  return rc != 0 ? rc : check_part(c, c->m->top, c->m->size, nfree, npart);
}

/* The bins and the partial lists must list exactly the free spans and
 * the slabs with free chunks. */
static int check_lists(fp__shm_checker *c, uint64_t nfree, uint64_t npart) {
  fp_manager *m = c->m;
  uint64_t n = 0;

  for (int b = 0; b < FP__SHM_NBIN; b++)
    for (uint64_t off = m->bins[b], prev = 0; off != 0;
         off = span_at(m, off)->next) {
      uint64_t e = *pm(m, page_of(off));
      if (PM_KIND(e) != PM_FREE || bin_of(PM_VAL(e)) != b ||
          span_at(m, off)->prev != prev || ++n > nfree)
        return fp__shm_fail(c, "bin %d: bad span %llu", b,
                            (unsigned long long)off);
      prev = off;
    }
  if (n != nfree)
    return fp__shm_fail(c, "bins hold %llu spans of %llu free",
                        (unsigned long long)n, (unsigned long long)nfree);
  n = 0;
  for (int k = 0; k < FP__SHM_NCLASS; k++)
    for (uint64_t off = m->partial[k], prev = 0; off != 0;
         off = slab_at(m, off)->next) {
      slab *s = slab_at(m, off);
      if (s->magic != SLAB_MAGIC || (int)s->cls != k || s->nfree == 0 ||
          s->prev != prev || ++n > npart)
        return fp__shm_fail(c, "class %d: bad slab %llu on its list", k,
                            (unsigned long long)off);
      prev = off;
    }
  if (n != npart)
    return fp__shm_fail(c, "partial lists hold %llu of %llu slabs with room",
                        (unsigned long long)n, (unsigned long long)npart);
  return 0;
}

int fp__shm_arena_check(fp__shm_checker *c) {
  fp_manager *m = c->m;
  uint64_t nfree = 0, npart = 0, n;
  int rc;

  if (m->anundo != 0)
    return fp__shm_fail(c, "allocator log not empty");
  if ((rc = check_spans(c, &nfree, &npart)) != 0 ||
      (rc = check_lists(c, nfree, npart)) != 0)
    return rc;
  for (int b = 0; b < 3 && rc == 0; b++)
    rc = fp__shm_claim_list(c, m->glimbo[b], &n, "global limbo");
  return rc;
}
