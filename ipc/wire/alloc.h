/* SPDX-License-Identifier: MIT */
/* alloc.h - where forkpool's IPC buffers come from (internal header).
 *
 * Every codec and frame buffer is allocated here, from a private jemalloc
 * arena reached through jemalloc's explicit API (mallocx/rallocx/sdallocx
 * with MALLOCX_ARENA), so IPC traffic neither fragments nor contends with
 * the application's own heap. Built with -DFP_ALLOC_LIBC (the sanitizer
 * builds), the same calls go to malloc/realloc/free so ASan and valgrind
 * see every buffer.
 *
 * Sizes are passed back on realloc/free (sized deallocation), so callers
 * must remember how much they asked for; size 0 is allowed everywhere.
 * All functions are thread-safe and fork-safe. Nothing here is public.
 */
#ifndef FP_IPC_ALLOC_H
#define FP_IPC_ALLOC_H

#include <stddef.h>

#if defined(__GNUC__)
#define FP__HIDDEN __attribute__((visibility("hidden")))
#else
#define FP__HIDDEN
#endif

/* Returns a new buffer of n bytes (uninitialised), or NULL when out of
 * memory. Free it with fp__free(p, n). */
FP__HIDDEN void *fp__alloc(size_t n);

/* Resizes p (from fp__alloc/fp__realloc with size old_n; NULL allowed) to
 * new_n bytes, keeping the first min(old_n, new_n) bytes. Returns the new
 * pointer, or NULL when out of memory, in which case p is still valid and
 * unchanged. */
FP__HIDDEN void *fp__realloc(void *p, size_t old_n, size_t new_n);

/* Frees p, which fp__alloc/fp__realloc returned with size n. NULL is
 * ignored. After the call p is no longer valid. */
FP__HIDDEN void fp__free(void *p, size_t n);

/* Returns 1 when p was allocated in forkpool's private arena, else 0
 * (always 0 under FP_ALLOC_LIBC, and for NULL). p must be NULL or a live
 * pointer obtained from jemalloc: jemalloc cannot look up foreign memory. */
FP__HIDDEN int fp__alloc_from_arena(const void *p);

/* Returns 1 when buffers come from the private jemalloc arena, 0 when the
 * build uses libc malloc (FP_ALLOC_LIBC), the process was started with
 * FORKPOOL_ALLOC=libc, or the arena could not be created (then the
 * default jemalloc arenas serve the requests). */
FP__HIDDEN int fp__alloc_uses_arena(void);

#endif /* FP_IPC_ALLOC_H */
