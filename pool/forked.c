/* SPDX-License-Identifier: MIT */
/* forked.c - how a copy of the master knows it is a copy.
 *
 * A process forked from the master (by the user, or a worker started by
 * the fork server) inherits every pool's memory but none of its threads.
 * Each pool records the fork generation it was made in; every fork bumps
 * the generation in the child (pthread_atfork), so a copy tells that a
 * pool is not its own with one relaxed load instead of a getpid() system
 * call per call.
 */
#include "pool/pool_int.h"

#include <pthread.h>

static _Atomic unsigned fork_gen;

static void on_fork_child(void) {
  atomic_fetch_add(&fork_gen, 1);
}

static void register_atfork(void) {
  pthread_atfork(NULL, NULL, on_fork_child);
}

unsigned fp__fork_gen_now(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, register_atfork);
  return atomic_load_explicit(&fork_gen, memory_order_relaxed);
}

int fp__pool_foreign(const fp_pool *pool) {
  return pool->fork_gen !=
         atomic_load_explicit(&fork_gen, memory_order_relaxed);
}
