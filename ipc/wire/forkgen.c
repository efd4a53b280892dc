/* SPDX-License-Identifier: MIT */
/* forkgen.c - the fork generation (forkgen.h).
 *
 * pthread_atfork's child handler bumps the generation after fork(); it
 * never runs after _Fork() (the async-signal-safe fork crash handlers
 * use) or a raw fork/clone system call. Those children are caught by a
 * word in a page marked MADV_WIPEONFORK, which the kernel hands every
 * child zeroed, however it was made: a zero word means "a new process
 * that has not counted itself yet". Its first caller claims the word
 * (0 -> CLAIMED), bumps the generation, then marks it SEEN; other threads
 * of the child meanwhile wait the few instructions that takes.
 */
#include "ipc/wire/forkgen.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/mman.h>

enum { FRESH_CHILD = 0, CLAIMED = 1, SEEN = 2 };

static _Atomic uint64_t gen = 1;
/* The wipe-on-fork word, or a word that is never wiped when the kernel
 * refuses the advice (the atfork handler is then all there is). */
static _Atomic uint32_t never_wiped = SEEN;
static _Atomic(_Atomic uint32_t *) wipe_word;
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* Counts this process as a new one, once, whichever thread comes first. */
static void count_new_process(_Atomic uint32_t *w) {
  uint32_t v = FRESH_CHILD;
  if (atomic_compare_exchange_strong(w, &v, CLAIMED)) {
    atomic_fetch_add(&gen, 1);
    atomic_store_explicit(w, SEEN, memory_order_release);
    return;
  }
  while (atomic_load_explicit(w, memory_order_acquire) != SEEN)
    sched_yield();
}

static void on_fork_child(void) {
  _Atomic uint32_t *w = atomic_load_explicit(&wipe_word, memory_order_relaxed);
  if (w != &never_wiped && w != NULL &&
      atomic_load_explicit(w, memory_order_relaxed) == FRESH_CHILD)
    count_new_process(w); /* the kernel wiped it: one count for both */
  else
    atomic_fetch_add(&gen, 1);
}

static void init_once(void) {
  _Atomic uint32_t *w = &never_wiped;
  void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p != MAP_FAILED) {
#ifdef MADV_WIPEONFORK
    if (madvise(p, 4096, MADV_WIPEONFORK) == 0) {
      w = p;
      atomic_store(w, SEEN);
    } else {
      munmap(p, 4096);
    }
#else
    munmap(p, 4096);
#endif
  }
  atomic_store_explicit(&wipe_word, w, memory_order_release);
  pthread_atfork(NULL, NULL, on_fork_child);
}

uint64_t fp__fork_gen(void) {
  _Atomic uint32_t *w = atomic_load_explicit(&wipe_word, memory_order_acquire);
  if (w == NULL) {
    pthread_once(&once, init_once);
    w = atomic_load_explicit(&wipe_word, memory_order_acquire);
  }
  if (atomic_load_explicit(w, memory_order_acquire) != SEEN)
    count_new_process(w);
  return atomic_load_explicit(&gen, memory_order_relaxed);
}
