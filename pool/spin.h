/* SPDX-License-Identifier: MIT */
/* spin.h - how every busy-wait of the pool waits (header only).
 *
 * The pool spins briefly where sleeping would cost more than the wait: a
 * worker waiting for its next task, a caller waiting for its result, the
 * pool thread between two looks at its loop (a cross-CPU wake-up costs
 * tens of microseconds on small VMs; local.h bounds who may spin).
 *
 * A spinner must not keep the CPU that the thread it waits for needs. When
 * the other CPUs look busy at the moment of a wake-up, the kernel places
 * the woken thread on its waker's CPU, and a caller and a worker that come
 * to share a CPU that way stay together: both are cache-hot, so the
 * balancer does not move either. They then took turns only when a spin
 * ran out of time: one apply_rtt run in four measured 4-18 us per round
 * trip instead of 1.5, the worker spinning 50 us without a task hundreds
 * of times while its task waited for the worker's CPU. Two measures:
 *
 *  - every spin loop yields its CPU every FP__SPIN_YIELD_NS: with nothing
 *    else runnable there, sched_yield() returns at once (0.4 us on this
 *    VM, under 10% of the spin); with the awaited thread there, that
 *    thread runs now;
 *  - a worker waiting for tasks on the CPU of the master thread that feeds
 *    it moves to another CPU it may use (worker.c, move_off_cpu).
 *
 * Measured over 24-30 runs of `fpbench apply` each: the median round trip
 * went from 2.05 us (6 runs in 24 above 3.35 us) to 1.42 us (none above
 * 3.35 us in 30, the slowest 1.61 us).
 */
#ifndef FP_POOL_SPIN_H
#define FP_POOL_SPIN_H

#include "pool/clock.h"

#include <sched.h>

#define FP__SPIN_YIELD_NS 5000

static inline void fp__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

/* When a spin loop next yields its CPU. */
typedef struct fp__spinner {
  int64_t yield_at;
} fp__spinner;

static inline void fp__spinner_start(fp__spinner *s, int64_t now) {
  s->yield_at = now + FP__SPIN_YIELD_NS;
}

/* Call at each look of a spin loop at the clock (now): yields the CPU
 * once every FP__SPIN_YIELD_NS of spinning. */
static inline void fp__spinner_tick(fp__spinner *s, int64_t now) {
  if (now < s->yield_at)
    return;
  sched_yield();
  s->yield_at = fp__now_ns() + FP__SPIN_YIELD_NS;
}

#endif
