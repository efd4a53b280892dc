/* SPDX-License-Identifier: MIT */
/* forked.c - how a copy of the master knows it is a copy, and how a
 * thread knows it is a pool's thread.
 *
 * A process forked from the master (by the user, or a worker started by
 * the fork server) inherits every pool's memory but none of its threads.
 * Each pool records the fork generation it was made in
 * (ipc/wire/forkgen.c: it changes in every child, made by fork(),
 * _Fork() or a raw system call), so a copy tells that a pool is not its
 * own with a few loads instead of a getpid() system call per call.
 */
#include "pool/pool_int.h"

#include "ipc/wire/forkgen.h"

#include <pthread.h>

/* Set by each pool thread for itself (pool.c): which thread runs a loop
 * is, like which process owns a pool, something a fork changes. */
__thread const fp_pool *fp__tl_loop_pool;

static void on_fork_child(void) {
  fp__tl_loop_pool = NULL; /* the child's one thread runs no loop */
}

static void register_atfork(void) {
  pthread_atfork(NULL, NULL, on_fork_child);
}

uint64_t fp__fork_gen_now(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, register_atfork);
  return fp__fork_gen();
}

int fp__pool_foreign(const fp_pool *pool) {
  return fp__made_elsewhere(pool->fork_gen);
}

int fp__made_elsewhere(uint64_t gen) {
  return gen != fp__fork_gen();
}
