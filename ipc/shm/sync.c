/* SPDX-License-Identifier: MIT */
/* sync.c - the manager's counter and lock.
 *
 * A counter is an arena object holding one 8-byte aligned _Atomic int64_t;
 * every call is a single C11 atomic operation (sequentially consistent), so
 * it never blocks and a process killed at any instant leaves either the old
 * or the new value: there is nothing to repair. Lock-free on every platform
 * where atomic_is_lock_free(int64) holds (x86-64, AArch64), which is also
 * what makes it safe across processes.
 *
 * A lock is an arena object holding one robust, process-shared pthread
 * mutex. When its holder dies the kernel marks it owner-dead; the next
 * acquirer gets EOWNERDEAD, which we turn into FP_EOWNERDEAD after calling
 * pthread_mutex_consistent(): the caller owns the lock and must check the
 * state the lock protects (we cannot know what that state is).
 */
#include "ipc/shm/arena.h"

#include <math.h>
#include <time.h>

#if defined(__SANITIZE_THREAD__)
#define FP__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FP__TSAN 1
#endif
#endif
#ifndef FP__TSAN
#define FP__TSAN 0
#endif

#if FP__TSAN
/* ThreadSanitizer does not know pthread_mutex_clocklock, and its timedlock
 * does not record a lock that returns EOWNERDEAD: a lock it never saw
 * makes the matching unlock look wrong. Its builds poll trylock (which it
 * knows in full) until the monotonic deadline instead. */
static int tsan_timedlock(pthread_mutex_t *mu, const struct timespec *until) {
  for (;;) {
    struct timespec now;
    int rc = pthread_mutex_trylock(mu);
    if (rc != EBUSY)
      return rc;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec > until->tv_sec ||
        (now.tv_sec == until->tv_sec && now.tv_nsec >= until->tv_nsec))
      return ETIMEDOUT;
    nanosleep(&(struct timespec){0, 100000}, NULL);
  }
}
#endif

struct fp_counter {
  fp__shm_obj hdr;
  _Atomic int64_t value;
};

struct fp_lock {
  fp__shm_obj hdr;
  pthread_mutex_t mu;
  _Atomic uint32_t holder; /* thread id of the holder, 0 when free: lets a
                              release by a non-holder fail without asking
                              pthread (which sanitizers report as misuse).
                              Relaxed: the mutex orders it, and a thread
                              never reads back its own id after it stored
                              0 (coherence); seq_cst stores here halved
                              the lock's throughput from 2 processes */
};

_Static_assert(sizeof(fp__shm_obj) % 8 == 0, "counter must be 8-aligned");

/* --- counter ------------------------------------------------------------ */

static int init_counter(void *obj, void *arg) {
  atomic_init(&((fp_counter *)obj)->value, *(int64_t *)arg);
  return 0;
}

int fp_counter_new(fp_manager *m, int64_t initial, fp_counter **out) {
  void *o;
  int rc;

  if (out != NULL)
    *out = NULL;
  if ((rc = fp__shm_check_new(m, out)) != 0)
    return rc;
  rc = fp__shm_obj_new(m, FP__SHM_COUNTER, sizeof(fp_counter), init_counter,
                       &initial, &o);
  if (rc == 0)
    *out = o;
  return rc;
}

int fp_counter_destroy(fp_counter *c) {
  return fp__shm_obj_destroy(c, FP__SHM_COUNTER);
}

int fp_counter_add(fp_counter *c, int64_t delta, int64_t *new_value) {
  int rc = fp__shm_obj_check(c, FP__SHM_COUNTER);
  if (rc != 0)
    return rc;
  /* fetch_add on a signed atomic wraps (C11 7.17.7.5): no UB. */
  int64_t old = atomic_fetch_add(&c->value, delta);
  if (new_value != NULL)
    *new_value = (int64_t)((uint64_t)old + (uint64_t)delta);
  return 0;
}

int fp_counter_get(fp_counter *c, int64_t *value) {
  int rc = fp__shm_obj_check(c, FP__SHM_COUNTER);
  if (rc != 0)
    return rc;
  if (value == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL value pointer");
  *value = atomic_load(&c->value);
  return 0;
}

int fp_counter_set(fp_counter *c, int64_t value) {
  int rc = fp__shm_obj_check(c, FP__SHM_COUNTER);
  if (rc != 0)
    return rc;
  atomic_store(&c->value, value);
  return 0;
}

int fp_counter_cas(fp_counter *c, int64_t *expected, int64_t desired) {
  int rc = fp__shm_obj_check(c, FP__SHM_COUNTER);
  if (rc != 0)
    return rc;
  if (expected == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL expected pointer");
  return atomic_compare_exchange_strong(&c->value, expected, desired) ? 1 : 0;
}

uint64_t fp_counter_ref(const fp_counter *c) {
  if (fp__shm_obj_check(c, FP__SHM_COUNTER) != 0)
    return 0;
  return fp__shm_obj_ref(&c->hdr);
}

int fp_counter_from_ref(fp_manager *m, uint64_t ref, fp_counter **out) {
  int err;
  if (out == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL out pointer");
  *out = fp__shm_obj_from_ref(m, ref, FP__SHM_COUNTER, &err);
  return err;
}

/* --- lock --------------------------------------------------------------- */

/* A robust, process-shared, error-checking pthread mutex in the arena:
 * relocking by the holder gives EDEADLK instead of a silent self-deadlock,
 * unlocking by a non-holder EPERM. */
static int init_lock(void *obj, void *arg) {
  pthread_mutexattr_t a;
  int rc;

  if ((rc = pthread_mutexattr_init(&a)) != 0)
    return -rc;
  rc = pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
  if (rc == 0)
    rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (rc == 0)
    rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  if (rc == 0)
    rc = pthread_mutex_init(&((fp_lock *)obj)->mu, &a);
  pthread_mutexattr_destroy(&a);
  return -rc;
}

int fp_lock_new(fp_manager *m, fp_lock **out) {
  void *o;
  int rc;

  if (out != NULL)
    *out = NULL;
  if ((rc = fp__shm_check_new(m, out)) != 0)
    return rc;
  rc = fp__shm_obj_new(m, FP__SHM_LOCK, sizeof(fp_lock), init_lock, NULL, &o);
  if (rc == 0)
    *out = o;
  return rc;
}

int fp_lock_destroy(fp_lock *l) {
  return fp__shm_obj_destroy(l, FP__SHM_LOCK);
}

int fp_lock_acquire(fp_lock *l, double timeout) {
  int rc = fp__shm_obj_check(l, FP__SHM_LOCK);
  if (rc != 0)
    return rc;
  if (isnan(timeout))
    return fp__shm_refuse(FP_EINVAL, "the timeout is not a number (NaN)");
  if (timeout < 0) {
    rc = pthread_mutex_lock(&l->mu);
  } else if (timeout == 0) {
    rc = pthread_mutex_trylock(&l->mu);
    if (rc == EBUSY)
      rc = ETIMEDOUT;
  } else {
    /* A monotonic deadline, immune to wall-clock jumps. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (timeout > 1e9)
      timeout = 1e9;
    double whole = floor(timeout);
    ts.tv_sec += (time_t)whole;
    ts.tv_nsec += (long)((timeout - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
#if FP__TSAN
    rc = tsan_timedlock(&l->mu, &ts);
#else
    rc = pthread_mutex_clocklock(&l->mu, CLOCK_MONOTONIC, &ts);
#endif
  }
  if (rc == 0 || rc == EOWNERDEAD)
    atomic_store_explicit(&l->holder, fp__shm_my_tid(), memory_order_relaxed);
  if (rc == EOWNERDEAD) {
    pthread_mutex_consistent(&l->mu);
    return FP_EOWNERDEAD;
  }
  if (rc == EDEADLK)
    return fp__shm_refuse(-rc, "this thread already holds the lock");
  return -rc;
}

int fp_lock_release(fp_lock *l) {
  int rc = fp__shm_obj_check(l, FP__SHM_LOCK);
  if (rc != 0)
    return rc;
  if (atomic_load_explicit(&l->holder, memory_order_relaxed) !=
      fp__shm_my_tid())
    return fp__shm_refuse(FP_EPERM, "release of a lock this thread does "
                                    "not hold");
  atomic_store_explicit(&l->holder, 0, memory_order_relaxed);
  rc = pthread_mutex_unlock(&l->mu);
  return rc == EPERM ? FP_EPERM : -rc;
}

uint64_t fp_lock_ref(const fp_lock *l) {
  if (fp__shm_obj_check(l, FP__SHM_LOCK) != 0)
    return 0;
  return fp__shm_obj_ref(&l->hdr);
}

int fp_lock_from_ref(fp_manager *m, uint64_t ref, fp_lock **out) {
  int err;
  if (out == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL out pointer");
  *out = fp__shm_obj_from_ref(m, ref, FP__SHM_LOCK, &err);
  return err;
}
