/* SPDX-License-Identifier: MIT */
/* alloc.c - IPC buffers from a private jemalloc arena (see alloc.h).
 *
 * The ipc/wire/ folder is everything that turns data into bytes on the wire
 * and back, with no knowledge of pools or processes: the value codec
 * (codec.c), printf-style pack/unpack over it (pack.c), length-prefixed
 * frames (frame.c, frame.h), the buffers they live in (this file), and the
 * error codes and per-thread messages the whole library reports (error.c,
 * error.h). It depends on nothing else in the tree, which is why the codec
 * fuzzer links it alone; ipc/shm/ (the Manager's shared memory), pool/ and
 * affinity/ build on it.
 *
 * Why jemalloc's explicit API: merely linking -ljemalloc into a shared
 * library does not replace malloc. The dynamic linker resolves malloc to
 * the first definition in breadth-first load order, and libc is loaded
 * before the libraries our .so pulls in, so glibc's malloc would still
 * serve us. Calling mallocx()/sdallocx() by name reaches jemalloc no matter
 * who owns malloc, and MALLOCX_ARENA keeps our buffers in an arena of our
 * own. MALLOCX_TCACHE_NONE bypasses the thread caches: IPC buffers are few
 * and large-ish, and caching them per thread would only pin memory in
 * threads that never touch IPC again.
 *
 * The arena is created once, with pthread_once. A constructor triggers the
 * same once at load time, so in practice the arena exists before the
 * program starts threads or forks (a fork in the middle of pthread_once in
 * another thread would leave the child's once stuck). jemalloc registers
 * its own pthread_atfork handlers covering every arena, so the buffers stay
 * usable in forked children, and arenas carry their own locks, so every call
 * here is thread-safe.
 *
 * FORKPOOL_ALLOC=libc in the environment when the library loads hands
 * every buffer to plain malloc instead, for the whole life of the process
 * and of the processes it forks (read once, in the constructor, so a
 * buffer is always freed by the allocator that made it). That is for
 * users hunting leaks in their own programs: valgrind and ASan do not
 * track a private jemalloc arena, so a writer never freed would go
 * unreported.
 *
 * jemalloc requires a nonzero size, so size 0 is mapped to 1 both when
 * allocating and when freeing (sized deallocation must see the same size
 * class it allocated).
 */
#include "ipc/wire/alloc.h"

#include <stdlib.h>

#ifndef FP_ALLOC_LIBC

#include <jemalloc/jemalloc.h>
#include <pthread.h>
#include <string.h>

static pthread_once_t arena_once = PTHREAD_ONCE_INIT;
static unsigned arena_index;
static int arena_flags = MALLOCX_TCACHE_NONE; /* default arena until made */
static int arena_ok;
static int use_libc; /* FORKPOOL_ALLOC=libc */

/* Creates the private arena, unless FORKPOOL_ALLOC=libc. On failure the
 * flags keep pointing at jemalloc's default arenas: degraded, never
 * broken. */
static void arena_create(void) {
  unsigned ind;
  size_t sz = sizeof(ind);
  const char *env = getenv("FORKPOOL_ALLOC");

  if (env != NULL && strcmp(env, "libc") == 0) {
    use_libc = 1;
    return;
  }
  if (mallctl("arenas.create", &ind, &sz, NULL, 0) == 0) {
    arena_index = ind;
    arena_flags = MALLOCX_ARENA(ind) | MALLOCX_TCACHE_NONE;
    arena_ok = 1;
  }
}

static int flags(void) {
  pthread_once(&arena_once, arena_create);
  return arena_flags;
}

__attribute__((constructor)) static void arena_preinit(void) {
  pthread_once(&arena_once, arena_create);
}

void *fp__alloc(size_t n) {
  int f = flags(); /* after the once: use_libc is set */
  return use_libc ? malloc(n ? n : 1) : mallocx(n ? n : 1, f);
}

void *fp__realloc(void *p, size_t old_n, size_t new_n) {
  if (p == NULL)
    return fp__alloc(new_n);
  (void)old_n; /* rallocx finds the old size itself */
  int f = flags();
  return use_libc ? realloc(p, new_n ? new_n : 1)
                  : rallocx(p, new_n ? new_n : 1, f);
}

void fp__free(void *p, size_t n) {
  if (p == NULL)
    return;
  int f = flags();
  if (use_libc)
    free(p);
  else
    sdallocx(p, n ? n : 1, f);
}

int fp__alloc_from_arena(const void *p) {
  unsigned ind;
  size_t sz = sizeof(ind);

  if (p == NULL || !fp__alloc_uses_arena())
    return 0;
  if (mallctl("arenas.lookup", &ind, &sz, (void *)&p, sizeof(p)) != 0)
    return 0;
  return ind == arena_index;
}

int fp__alloc_uses_arena(void) {
  pthread_once(&arena_once, arena_create);
  return arena_ok;
}

#else /* FP_ALLOC_LIBC: plain libc, visible to ASan and valgrind */

void *fp__alloc(size_t n) {
  return malloc(n ? n : 1);
}

void *fp__realloc(void *p, size_t old_n, size_t new_n) {
  (void)old_n;
  return realloc(p, new_n ? new_n : 1);
}

void fp__free(void *p, size_t n) {
  (void)n;
  free(p);
}

int fp__alloc_from_arena(const void *p) {
  (void)p;
  return 0;
}

int fp__alloc_uses_arena(void) {
  return 0;
}

#endif
