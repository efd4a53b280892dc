/* SPDX-License-Identifier: MIT */
/* result.c - result objects (CPython's AsyncResult): wait, get, cancel.
 *
 * A result is reference counted (the caller's reference and the job's)
 * and has its own mutex, so it stays valid after the pool is freed. Its
 * outcome is set by job.c; here are the calls a user makes on it.
 */
#include "pool/pool_int.h"
#include "pool/spin.h"
#include "ipc/wire/error.h"

#include <stdlib.h>
#include <string.h>

static void cond_init_mono(pthread_cond_t *c) {
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(c, &ca);
  pthread_condattr_destroy(&ca);
}

fp_result *fp__result_new(fp_pool *pool, const fp_call_opts *o) {
  fp_result *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return NULL;
  pthread_mutex_init(&r->mu, NULL);
  cond_init_mono(&r->cond);
  r->refs = 2;
  r->err_index = -1;
  r->pool = pool;
  r->fork_gen = pool->fork_gen; /* copies submit nothing: the same */
  if (o) {
    r->cb = o->callback;
    r->ecb = o->error_callback;
    r->arg = o->arg;
  }
  return r;
}

void fp__result_discard(fp_result *r) {
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cond);
  free(r);
}

/* Ready for the caller (res->mu held): really ready, or its own callback
 * is running. */
static int usable(fp_result *res) {
  return atomic_load_explicit(&res->ready, memory_order_acquire) ||
         fp__result_in_callback() == res;
}

/* Whether this process is a forked copy of the one res was made in. */
static int in_copy(const fp_result *res) {
  return fp__made_elsewhere(res->fork_gen);
}

/* Takes res->mu, except in a forked copy of the master: there the result
 * is frozen (no pool thread of the copy changes it, and `ready` was
 * stored last) and its mutex may have been held at the fork by a thread
 * the copy does not have. Returns whether it took the mutex. */
static int res_lock(fp_result *res) {
  if (in_copy(res))
    return 0;
  pthread_mutex_lock(&res->mu);
  return 1;
}

static void res_unlock(fp_result *res, int locked) {
  if (locked)
    pthread_mutex_unlock(&res->mu);
}

/* How long a waiter spins before it sleeps on the condition variable. A
 * short task's result typically lands within this; catching it spinning
 * saves the futex wake-up of the waiting thread (on this kind of VM a
 * cross-CPU wake-up costs tens of microseconds). Only blocking waits spin,
 * and never inside a callback. */
#define SPIN_NS 50000

static void spin_until_ready(fp_result *res) {
  int64_t now = fp__now_ns(), until = now + SPIN_NS;
  fp__spinner sp;
  fp__spinner_start(&sp, now);
  for (;;) {
    for (int i = 0; i < 64; i++) {
      if (atomic_load_explicit(&res->ready, memory_order_acquire))
        return;
      fp__cpu_relax();
    }
    if ((now = fp__now_ns()) >= until)
      return;
    fp__spinner_tick(&sp, now);
  }
}

/* The pool a waiter may poll for res: res's pool, pinned (counted in
 * pool->spinners, so join keeps the pool and its link alive until
 * unpinned), when the job still runs there and the result has no
 * callbacks (those run on the pool thread before waiters wake). NULL
 * otherwise. res->pool is read under res->mu: while it is set, the job is
 * unfinished, so the pool cannot have been joined. */
static fp_pool *pin_pool(fp_result *res) {
  pthread_mutex_lock(&res->mu);
  fp_pool *pool = res->pool;
  if (pool != NULL &&
      (res->cb != NULL || res->ecb != NULL || fp__pool_foreign(pool) ||
       fp__on_pool_thread(pool) || pool->link->ops->poll == NULL))
    pool = NULL;
  if (pool != NULL)
    atomic_fetch_add(&pool->spinners, 1);
  pthread_mutex_unlock(&res->mu);
  return pool;
}

static int result_is_ready(void *arg) {
  return atomic_load_explicit(&((fp_result *)arg)->ready,
                              memory_order_acquire);
}

/* Spins for res with the pool's poll (sched.c). Returns 0 when res
 * cannot be polled (the caller may spin plainly), else 1, also when the
 * budget had no room for a spin (then the caller sleeps at once). */
static int poll_until_ready(fp_result *res) {
  fp_pool *pool = pin_pool(res);
  if (pool == NULL)
    return 0;
  fp__sched_poll_spin(pool, result_is_ready, res);
  atomic_fetch_sub(&pool->spinners, 1);
  return 1;
}

/* A sleeping waiter pokes the pool thread this often. The thread wakes
 * for a result when a worker kicks it, and a worker kicks only when the
 * shared word that says "the master sleeps" says so: a task can scribble
 * over that word, and the result would then wait for the next unrelated
 * event. Ten pokes a second cost nothing next to a wait that long. */
#define NUDGE_NS 100000000LL

int fp__wait_slice(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t end) {
  int64_t until = fp__now_ns() + NUDGE_NS;
  struct timespec ts;
  fp__deadline_ts(end < until ? end : until, &ts);
  return pthread_cond_timedwait(cond, mu, &ts) != 0 && end > until;
}

void fp__pool_nudge(fp_pool *pool, pthread_mutex_t *held) {
  if (pool == NULL || fp__pool_foreign(pool) || fp__on_pool_thread(pool))
    return;
  atomic_fetch_add(&pool->spinners, 1); /* pinned, as by pin_pool */
  pthread_mutex_unlock(held);
  fp__pool_lock(pool);
  fp__pool_wake(pool);
  fp__pool_unlock(pool);
  atomic_fetch_sub(&pool->spinners, 1);
  pthread_mutex_lock(held);
}

/* A wait in a forked copy of the master: nothing here will ever make the
 * result ready (its pool thread, and its job, stayed in the parent), even
 * when the job had finished and only its callback was left to run at the
 * fork. Decided before res->mu is taken, which a thread that does not
 * exist here may have held at the fork. Returns 1 and sets *rc when the
 * wait is decided. */
static int wait_in_copy(fp_result *res, double timeout, int *rc) {
  if (!in_copy(res))
    return 0;
  if (atomic_load_explicit(&res->ready, memory_order_acquire)) {
    *rc = 0;
    return 1;
  }
  if (timeout == 0) {
    *rc = FP_ETIMEDOUT;
    return 1;
  }
  fp__set_last_error(FP_EINVAL, "waiting for a result in a forked copy of "
                                "the process: the pool delivers it to the "
                                "parent, never here");
  *rc = FP_EINVAL;
  return 1;
}

int fp_result_wait(fp_result *res, double timeout) {
  int rc = 0;
  if (res == NULL)
    return fp__refuse("NULL result");
  if (!fp__timeout_ok(timeout))
    return fp__refuse("the timeout is not a number (NaN)");
  if (wait_in_copy(res, timeout, &rc))
    return rc;
  int in_cb = fp__result_in_callback() != NULL;
  if (timeout != 0 && !in_cb &&
      !atomic_load_explicit(&res->ready, memory_order_acquire) &&
      !poll_until_ready(res))
    spin_until_ready(res);
  pthread_mutex_lock(&res->mu);
  if (!usable(res) && timeout != 0 && in_cb) {
    /* Waiting for another result inside a callback would block the very
     * thread that has to deliver it. */
    pthread_mutex_unlock(&res->mu);
    return fp__refuse("waiting for another result from a callback (the "
                      "pool thread, which delivers it): it would wait for "
                      "itself");
  }
  int64_t end = timeout > 0 ? fp__deadline_ns(timeout) : FP__NS_FOREVER;
  while (!usable(res) && rc == 0) {
    if (timeout == 0 || fp__now_ns() >= end) {
      rc = FP_ETIMEDOUT;
      break;
    }
    if (fp__wait_slice(&res->cond, &res->mu, end) && !usable(res))
      fp__pool_nudge(res->pool, &res->mu); /* a slice passed */
  }
  pthread_mutex_unlock(&res->mu);
  return rc;
}

/* The outcome of a ready result is the call's outcome, so it sets the
 * thread's last error as a blocking call does: the job's message on
 * failure, cleared on success. */
int fp_result_get(fp_result *res, double timeout) {
  int rc = fp_result_wait(res, timeout);
  if (rc != 0)
    return rc;
  if (res->code != 0)
    fp__set_last_error(res->code, res->msg);
  else
    fp__clear_last_error();
  return res->code;
}

int fp_result_ready(fp_result *res) {
  if (res == NULL)
    return fp__refuse("NULL result");
  int locked = res_lock(res);
  int r = usable(res);
  res_unlock(res, locked);
  return r;
}

int fp_result_successful(fp_result *res) {
  if (res == NULL)
    return fp__refuse("NULL result");
  int locked = res_lock(res);
  int r = usable(res) ? res->code == 0 : FP_EINVAL;
  res_unlock(res, locked);
  if (r == FP_EINVAL)
    fp__refuse("fp_result_successful: the result is not ready");
  return r;
}

int fp_result_value(fp_result *res, fp_reader *rd) {
  if (res == NULL || rd == NULL)
    return fp__refuse(res == NULL ? "NULL result" : "NULL reader");
  int locked = res_lock(res);
  int ready = usable(res), rc = ready ? res->code : FP_EINVAL;
  res_unlock(res, locked);
  if (!ready)
    return fp__refuse("fp_result_value: the result is not ready");
  if (rc != 0) {
    fp__set_last_error(rc, res->msg);
    return rc;
  }
  fp_reader_init(rd, res->value, res->value_len);
  return 0;
}

const char *fp_result_error(fp_result *res) {
  if (res == NULL)
    return NULL;
  int locked = res_lock(res);
  const char *m = usable(res) && res->code != 0
                      ? (res->msg ? res->msg : fp_strerror(res->code))
                      : NULL;
  res_unlock(res, locked);
  return m;
}

int64_t fp_result_error_index(fp_result *res) {
  if (res == NULL)
    return -1;
  int locked = res_lock(res);
  int64_t i = usable(res) ? res->err_index : -1;
  res_unlock(res, locked);
  return i;
}

/* Fails res's job if it still runs. kill_running: as fp_result_cancel
 * (its running task's worker is killed); otherwise only the queued chunks
 * are dropped. Returns 0, or FP_EINVAL when the job already finished or
 * belongs to the parent of this forked copy (*why says which; the caller
 * decides whether that is the user's error). */
static int stop_job(fp_result *res, int code, const char *msg, int kill_running,
                    const char **why) {
  if (in_copy(res)) { /* res->mu may be held by a thread not here */
    *why = "cancel in a forked copy of the master: the job belongs to the "
           "parent's pool";
    return FP_EINVAL;
  }
  /* Pinned under res->mu, as pin_pool() does: another thread may be
   * freeing the pool right now, and join waits for the pin to go. */
  pthread_mutex_lock(&res->mu);
  fp_pool *pool = res->pool; /* NULL once the job finished */
  if (pool != NULL)
    atomic_fetch_add(&pool->spinners, 1);
  pthread_mutex_unlock(&res->mu);
  *why = "cancel of a job that already finished (its result is ready, or "
         "will be once its callbacks ran)";
  if (pool == NULL)
    return FP_EINVAL;
  fp__pool_lock(pool);
  int rc = FP_EINVAL;
  if (res->job != NULL) { /* res->job is guarded by pool->mu */
    fp__sched_cancel_job_locked(pool, res->job, code, -1, msg, kill_running);
    rc = 0;
  }
  if (rc == 0 && !fp__on_pool_thread(pool))
    fp__pool_wake(pool); /* its callbacks run on the pool thread */
  fp__pool_unlock(pool);
  atomic_fetch_sub(&pool->spinners, 1);
  return rc;
}

int fp_result_cancel(fp_result *res) {
  if (res == NULL)
    return fp__refuse("NULL result");
  const char *why;
  int rc = stop_job(res, FP_ECANCELED, "canceled by fp_result_cancel", 1, &why);
  /* No wait for the result to become ready (its callbacks run on the pool
   * thread first): a caller holding a lock that a callback takes, or an
   * imap producer whose iterator a callback reads, would deadlock. */
  return rc != 0 ? fp__refuse(why) : 0;
}

void fp_result_free(fp_result *res) {
  if (res == NULL)
    return;
  int locked = res_lock(res);
  res->user_freed = 1;
  int borrows = locked && res->pool != NULL && res->borrows; /* not a copy */
  res_unlock(res, locked);
  /* A fixed-size map reads the caller's `in` and writes `out` (and a map
   * with item_status writes that array) until it is done: once the result
   * is freed, none may be touched again, so the job's unsent chunks are
   * dropped and it fails with FP_ECANCELED. Chunks already sent run on;
   * their outputs are dropped. */
  const char *why;
  if (borrows)
    stop_job(res, FP_ECANCELED, "the result was freed before it was ready", 0,
             &why);
  fp__result_unref(res, locked);
}
