/* SPDX-License-Identifier: MIT */
/* idle.c - the hook a process runs before it sleeps (idle.h). */
#include "ipc/wire/idle.h"

#include <stdatomic.h>
#include <stddef.h>

static _Atomic(int (*)(void)) hook;

void fp__idle_hook_set(int (*fn)(void)) {
  atomic_store_explicit(&hook, fn, memory_order_release);
}

int fp__idle_run(void) {
  int (*fn)(void) = atomic_load_explicit(&hook, memory_order_acquire);
  return fn != NULL ? fn() : 0;
}
