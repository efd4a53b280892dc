/* SPDX-License-Identifier: MIT */
/* pool.c - the pool's life: creation, the pool thread's loop, shutdown.
 *
 * fp_pool_new() resolves the options into the worker configuration that
 * crosses fork() (fp__wconf), opens the link (the local link forks its
 * fork server there, before any thread of ours exists), asks the link for
 * one worker per slot, and starts the pool thread, which runs a libuv loop
 * over the link's handles, an async handle that user threads poke, and a
 * tick timer (time limits, SIGTERM -> SIGKILL escalation, delayed
 * respawns; deaths.c), and a poke timer while workers hold chunks (see
 * FP__POKE_MS in pool_int.h).
 *
 * The link reports events between enter() and leave(): enter takes
 * pool->mu; leave dispatches queued work, releases the mutex, runs the
 * callbacks of finished results and checks timers and shutdown. So the
 * data path runs one way: link -> sched.c -> job.c -> (leave) callbacks.
 */
#include "pool/pool_int.h"
#include "pool/transport.h"
#include "affinity/affinity.h"
#include "ipc/wire/error.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TICK_MS 2
/* Longest accepted SIGTERM -> SIGKILL delay: fp_pool_terminate() must
 * return, so "never escalate" is refused rather than honoured. */
#define MAX_KILL_GRACE_S 3600.0
_Static_assert(FP__LINK_MAX_BATCH == 16, "bad_option() names the bound");

int fp__pool_check_submit_locked(fp_pool *pool) {
  char msg[FP__MSG_LEN + 32];
  /* A forked copy never gets here: job_alloc refuses it before any lock
   * of the pool is taken. */
  if (pool->broken) {
    snprintf(msg, sizeof(msg), "the pool is broken: %s", pool->broken_msg);
    fp__set_last_error(pool->broken, msg);
    return pool->broken;
  }
  if (pool->state != FP__RUN) {
    fp__set_last_error(FP_ECLOSED, pool->state == FP__CLOSE
                                       ? "the pool is closed: no new work"
                                       : "the pool was terminated: no new "
                                         "work");
    return FP_ECLOSED;
  }
  return 0;
}

/* ---- the loop -------------------------------------------------------------- */

static void closed_noop(uv_handle_t *h) {
  (void)h;
}

static void on_tick(uv_timer_t *t);
static void on_poke(uv_timer_t *t);

/* Fails the work and kills the workers (state TERMINATE). */
static void terminate_locked(fp_pool *pool) {
  while (pool->jobs.head)
    fp__sched_cancel_job_locked(pool, pool->jobs.head, FP_ECANCELED, -1,
                                "the pool was terminated", 0);
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    ws->respawn_at_ns = 0;
    if (ws->alive && !ws->kill_at_ns)
      fp__sched_kill_locked(pool, ws, FP_ECANCELED, 0, SIGTERM);
  }
}

/* Moves the pool towards its end once closed or terminated: workers are
 * told to leave when no work remains, and once none is alive the link and
 * the loop's handles close, which ends uv_run() and the pool thread. */
static void maybe_shutdown_locked(fp_pool *pool) {
  if (pool->state == FP__RUN || pool->stopping)
    return;
  /* Terminating: the work fails and the workers die, whichever event of
   * the loop gets here first (a worker's death may come before the wake
   * that fp_pool_terminate() sent). Harmless when already done. */
  if (pool->state == FP__TERMINATE)
    terminate_locked(pool);
  if (pool->state == FP__CLOSE && (pool->jobs.head || pool->qhead) &&
      !pool->broken)
    return;
  /* Once per process: this runs at every loop iteration until the end,
   * and a link may send a message per call (MPI: 1024 workers per rank
   * queued 744,000 FINISH messages, and free took minutes). */
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    if (ws->alive && ws->ninflight == 0 && !ws->finish_told) {
      ws->finish_told = 1;
      pool->link->ops->finish(pool->link, i);
    }
  }
  /* Terminating: wait until every worker is reported dead (terminate
   * returns only then). Closing: the workers have no work and are leaving;
   * the link reaps them when it is freed (join). */
  if (pool->state == FP__TERMINATE && pool->nalive > 0 && !pool->link_lost)
    return;
  pool->stopping = 1;
  pool->link->ops->close(pool->link);
  uv_close((uv_handle_t *)&pool->wake, closed_noop);
  uv_timer_stop(&pool->tick);
  uv_close((uv_handle_t *)&pool->tick, closed_noop);
  uv_timer_stop(&pool->poke);
  uv_close((uv_handle_t *)&pool->poke, closed_noop);
  pool->poke_ms = 0;
}

/* Link events arrive between these two (see link.h). */
static void loop_enter(void *ctx) {
  fp__pool_lock((fp_pool *)ctx);
}

/* Progress callbacks that came due (job.c queues them, under the lock,
 * on whichever thread took the results in) run here: on the pool thread,
 * as documented, without the lock, since they may call the pool; and
 * before the results that came in with them are delivered, so a job's
 * last progress call comes before its result is ready. */
static void run_progress(fp_pool *pool) {
  fp__progress_call c;
  if (atomic_load_explicit(&pool->jobs.pq.pending, memory_order_relaxed) == 0)
    return;
  fp__pool_lock(pool);
  while (fp__jobset_take_progress_locked(&pool->jobs, &c)) {
    fp__pool_unlock(pool);
    fp__progress_call_deliver(&c);
    fp__pool_lock(pool);
  }
  fp__pool_unlock(pool);
}

static void loop_leave(void *ctx) {
  fp_pool *pool = ctx;
  for (;;) {
    fp__sched_dispatch_locked(pool);
    fp_result *done = fp__jobset_take_done_locked(&pool->jobs);
    if (done == NULL && !pool->stopping) {
      if (!pool->tick_on && fp__deaths_need_tick_locked(pool)) {
        uv_timer_start(&pool->tick, on_tick, TICK_MS, TICK_MS);
        pool->tick_on = 1;
      }
      /* Faster only: a restart puts the next look off. */
      int ms = fp__poke_ms_locked(pool);
      if (ms != 0 && (pool->poke_ms == 0 || ms < pool->poke_ms)) {
        uv_timer_start(&pool->poke, on_poke, (uint64_t)ms, (uint64_t)ms);
        pool->poke_ms = ms;
      }
      pool->poke_asked = 0;
      maybe_shutdown_locked(pool);
    }
    fp__pool_unlock(pool);
    run_progress(pool);
    if (done == NULL)
      return;
    fp__results_deliver(done); /* callbacks run outside the lock */
    fp__pool_lock(pool);
  }
}

static void on_tick(uv_timer_t *t) {
  fp_pool *pool = t->data;
  loop_enter(pool);
  if (!fp__deaths_tick_locked(pool)) {
    uv_timer_stop(&pool->tick);
    pool->tick_on = 0;
  }
  loop_leave(pool);
}

/* The loop iteration this timer causes is the look: the link takes in
 * what the workers published (local link: its check handle drains the
 * result rings after every poll). */
static void on_poke(uv_timer_t *t) {
  fp_pool *pool = t->data;
  loop_enter(pool);
  int ms = fp__poke_ms_locked(pool);
  if (ms == 0)
    uv_timer_stop(&pool->poke);
  else if (ms != pool->poke_ms)
    uv_timer_start(&pool->poke, on_poke, (uint64_t)ms, (uint64_t)ms);
  pool->poke_ms = ms;
  loop_leave(pool);
}

static void on_wake(uv_async_t *a) {
  fp_pool *pool = a->data;
  loop_enter(pool);
  if (pool->state == FP__TERMINATE && !pool->stopping)
    terminate_locked(pool);
  loop_leave(pool);
}

static void *pool_thread(void *arg) {
  fp_pool *pool = arg;
  fp__tl_loop_pool = pool;
  uv_run(&pool->loop, UV_RUN_DEFAULT);
  fp__pool_lock(pool);
  fp_result *done = fp__jobset_take_done_locked(&pool->jobs);
  fp__pool_unlock(pool);
  run_progress(pool);
  fp__results_deliver(done);
  fp__pool_lock(pool);
  pool->thread_done = 1;
  pthread_cond_broadcast(&pool->cond);
  fp__pool_unlock(pool);
  return NULL;
}

/* ---- creation ---------------------------------------------------------- */

/* Seconds that must be a number, 0 or more and at most max. */
static int seconds_ok(double v, double max) {
  return fp__timeout_ok(v) && v >= 0 && v <= max;
}

/* Names the first option out of range (what fp_last_error() then says),
 * or NULL when all are in range. */
static const char *bad_option(const fp_pool_opts *o) {
  if (o->processes < 0 || o->processes > 4096)
    return "invalid pool option processes (0 to 4096)";
  if (!fp__timeout_ok(o->task_timeout)) /* negative: none, as per call */
    return "invalid pool option task_timeout (seconds; 0 or negative: no "
           "limit; NaN is refused)";
  if (!seconds_ok(o->kill_grace, MAX_KILL_GRACE_S))
    return "invalid pool option kill_grace (0 to 3600 seconds)";
  if (o->retries < 0)
    return "invalid pool option retries (0 or more)";
  if (o->max_restarts < 0 || o->max_restarts > 1000000)
    return "invalid pool option max_restarts (0 to 1000000)";
  if (!seconds_ok(o->restart_window, INFINITY))
    return "invalid pool option restart_window (seconds, 0 or more)";
  if (o->inflight < 0 || o->inflight > FP__LINK_MAX_BATCH)
    return "invalid pool option inflight (0 to 16)";
  if (o->on_crash < FP_CRASH_DEFAULT || o->on_crash > FP_CRASH_ABORT)
    return "invalid pool option on_crash";
  if (o->progress < FP_PROGRESS_DEFAULT || o->progress > FP_PROGRESS_CALLBACK)
    return "invalid pool option progress";
  if (o->progress == FP_PROGRESS_CALLBACK && o->progress_cb == NULL)
    return "invalid pool options: progress is FP_PROGRESS_CALLBACK but "
           "progress_cb is NULL";
  if ((o->max_frame != 0 && o->max_frame < 4096) || o->max_frame > UINT32_MAX)
    return "invalid pool option max_frame (0, or 4096 to UINT32_MAX)";
  if (o->pin_ncpus > SIZE_MAX / sizeof(int))
    return "invalid pool option pin_ncpus (larger than any array)";
  /* Here, not only when the CPUs are planned: an MPI worker rank serves
   * inside fp_pool_new and never plans rank 0's CPUs, so it would never
   * refuse the option. */
  if (o->pin < FP_PIN_NONE || o->pin > FP_PIN_LIST)
    return "invalid pool option pin (unknown pin policy)";
  return NULL;
}

static int resolve_opts(fp_pool *pool, const fp_pool_opts *in) {
  fp_pool_opts o;
  const char *bad;
  if (in)
    o = *in;
  else
    memset(&o, 0, sizeof(o));
  if ((bad = bad_option(&o)) != NULL) {
    fp__set_last_error(FP_EINVAL, bad);
    return FP_EINVAL;
  }
  if (o.processes == 0)
    o.processes = fp_cpu_count();
  if (o.processes < 1)
    o.processes = 1;
  if (o.kill_grace == 0)
    o.kill_grace = 0.2;
  if (o.on_crash == FP_CRASH_DEFAULT)
    o.on_crash = FP_CRASH_FAIL;
  if (o.retries == 0)
    o.retries = 1;
  if (o.max_restarts == 0)
    o.max_restarts = 5;
  if (o.restart_window == 0)
    o.restart_window = 1.0;
  if (o.progress == FP_PROGRESS_DEFAULT)
    o.progress = FP_PROGRESS_OFF;
  pool->inflight = o.inflight; /* 0: adaptive */
  pool->max_frame = o.max_frame ? o.max_frame : FP_FRAME_MAX_DEFAULT;
  pool->nworkers = o.processes;
  pool->opts = o;
  return 0;
}

static void pool_release(fp_pool *pool) {
  fp__progress_call c;
  while (fp__jobset_take_progress_locked(&pool->jobs, &c))
    free(c.done_with); /* none is left once joined; a forked copy's */
  free(pool->ws);
  free(pool->cpu_of_worker);
  free(pool->pin_cpus);
  free(pool->start_fail_ns);
  pthread_mutex_destroy(&pool->mu);
  pthread_cond_destroy(&pool->cond);
  free(pool);
}

static fp_pool *pool_alloc(void) {
  fp_pool *pool = calloc(1, sizeof(*pool));
  if (pool == NULL)
    return NULL;
  pthread_mutex_init(&pool->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&pool->cond, &ca);
  pthread_condattr_destroy(&ca);
  pool->fork_gen = fp__fork_gen_now();
  pool->recalled.finished = 1;
  pool->recalled.travelling = 1; /* never reaches 0: never freed */
  return pool;
}

/* Allocates the worker table and plans CPUs. Returns 0 or an error (the
 * last error says why). */
static int plan_workers(fp_pool *pool) {
  int n = pool->nworkers;
  pool->ws = calloc((size_t)n, sizeof(*pool->ws));
  pool->cpu_of_worker = malloc(sizeof(int) * (size_t)n);
  pool->start_fail_ns =
      calloc((size_t)pool->opts.max_restarts + 1, sizeof(int64_t));
  if (pool->opts.pin_ncpus > 0 && pool->opts.pin_cpus != NULL) {
    pool->pin_cpus = malloc(sizeof(int) * pool->opts.pin_ncpus);
    if (pool->pin_cpus == NULL)
      return FP_ENOMEM;
    memcpy(pool->pin_cpus, pool->opts.pin_cpus,
           sizeof(int) * pool->opts.pin_ncpus);
    pool->opts.pin_cpus = pool->pin_cpus;
  }
  if (!pool->ws || !pool->cpu_of_worker || !pool->start_fail_ns)
    return FP_ENOMEM;
  char err[256] = "";
  int rc = fp__affinity_plan(pool->opts.pin, pool->opts.pin_cpus,
                             pool->opts.pin_ncpus, n, pool->cpu_of_worker,
                             err, sizeof(err));
  if (rc != 0) {
    fp__set_last_error(rc, err);
    return rc;
  }
  /* Over MPI each worker rank plans its own node's CPUs: this plan (of
   * rank 0's node) is not theirs, and rank 0 is not told theirs. */
  int remote = pool->opts.transport == FP_TRANSPORT_MPI;
  for (int i = 0; i < n; i++) {
    pool->ws[i].index = i;
    pool->ws[i].cpu = remote ? -1 : pool->cpu_of_worker[i];
  }
  pool->wconf = (fp__wconf){
      .nworkers = n,
      .max_frame = pool->max_frame,
      .maxtasksperchild = pool->opts.maxtasksperchild,
      .memory_limit = pool->opts.memory_limit,
      .initializer = pool->opts.initializer,
      .initarg = pool->opts.initarg,
      .cpu_of_worker = pool->cpu_of_worker,
  };
  return 0;
}

static fp__link_events link_events(fp_pool *pool) {
  return (fp__link_events){
      .ctx = pool,
      .enter = loop_enter,
      .leave = loop_leave,
      .started = fp__deaths_on_started,
      .ready = fp__sched_on_ready,
      .result = fp__sched_on_result,
      .retired = fp__sched_on_retired,
      .violation = fp__sched_on_violation,
      .no_memory = fp__sched_on_no_memory,
      .exited = fp__deaths_on_exited,
      .start_failed = fp__deaths_on_start_failed,
      .lost = fp__deaths_on_lost,
  };
}

/* Chooses the link by opts.transport, plans the workers and opens it. The
 * MPI link (found at run time, transport.c) first says how many slots its
 * worker ranks offer; on those ranks it serves and never returns. Returns
 * 0 or an error (the last error says why). */
static int open_link(fp_pool *pool, const fp__link_events *ev) {
  const fp__link_ops *ops = &fp__link_local;
  int rc = 0;
  if (pool->opts.transport == FP_TRANSPORT_MPI)
    rc = fp__transport_mpi(&pool->opts, &ops, &pool->nworkers);
  else if (pool->opts.transport != FP_TRANSPORT_LOCAL)
    fp__set_last_error(rc = FP_EINVAL, "unknown fp_pool_opts.transport");
  if (ops->max_frame != 0 && pool->max_frame > ops->max_frame)
    pool->max_frame = ops->max_frame;
  if (rc == 0)
    rc = plan_workers(pool);
  if (rc == 0) {
    /* The local link forks its fork server here: with 0-2 held, that
     * process (and every worker it forks) starts with them filled, so
     * nothing it opens (libuv's fork handler re-creates its signal pipe
     * in every child) lands on a standard slot that libuv later refuses
     * to close (stdfd.c). */
    int held[3];
    fp__stdfd_hold(held);
    rc = ops->open(&pool->link, &pool->wconf, ev);
    fp__stdfd_release(held);
    if (rc != 0)
      fp__set_last_error(rc, ops == &fp__link_local
                                 ? "cannot start the fork server"
                                 : "cannot open the worker link");
  }
  /* The worker ranks serve since prepare(); without a link nothing else
   * would tell them to end. */
  if (rc != 0 && ops != &fp__link_local)
    fp__transport_mpi_abandon();
  return rc;
}

/* The first uv_loop_init of a process sets up libuv's process-wide
 * signal pipe after the loop's epoll descriptor, and abort()s when that
 * pipe cannot be made (libuv 1.44): until one loop was made, check that
 * three descriptors are free first and fail with -EMFILE if not. */
static _Atomic int uv_global_ready;

static int uv_global_room(void) {
  int p[2], third;
  if (atomic_load(&uv_global_ready))
    return 0;
  if (pipe2(p, O_CLOEXEC) != 0)
    return -errno;
  third = fcntl(p[0], F_DUPFD_CLOEXEC, 0);
  int rc = third < 0 ? -errno : 0;
  if (third >= 0)
    close(third);
  close(p[0]);
  close(p[1]);
  return rc;
}

/* uv_loop_init, and the pool's own handles on the loop. libuv 1.44 leaves
 * the loop's epoll descriptor open when a later step of its init fails
 * (fixed in later releases, which set it to -1): closed here. */
static int loop_init(fp_pool *pool) {
  int rc = uv_global_room();
  if (rc != 0)
    return rc;
  if ((rc = uv_loop_init(&pool->loop)) != 0) {
    /* A failure after epoll_create leaves its descriptor open. One before
     * leaves the zeroed loop's 0, which is the caller's stdin: the loop's
     * own descriptors are never 0-2 (start_loop holds those). */
    if (pool->loop.backend_fd > STDERR_FILENO)
      close(pool->loop.backend_fd);
    return rc;
  }
  atomic_store(&uv_global_ready, 1);
  if ((rc = uv_async_init(&pool->loop, &pool->wake, on_wake)) != 0) {
    uv_loop_close(&pool->loop);
    return rc;
  }
  pool->wake.data = pool;
  uv_timer_init(&pool->loop, &pool->tick); /* cannot fail */
  pool->tick.data = pool;
  uv_timer_init(&pool->loop, &pool->poke);
  pool->poke.data = pool;
  return 0;
}

/* Sets up the loop and its handles, asks for the workers and starts the
 * pool thread. Returns 0 or an error; on error the loop is closed again. */
static int start_loop(fp_pool *pool) {
  int held[3];
  fp__stdfd_hold(held); /* the loop's descriptors must not land on 0-2 */
  int rc = loop_init(pool);
  if (rc != 0) {
    fp__stdfd_release(held);
    return rc;
  }
  rc = pool->link->ops->start(pool->link, &pool->loop);
  fp__stdfd_release(held);
  fp__pool_lock(pool);
  pool->starting = 1;
  for (int i = 0; rc == 0 && i < pool->nworkers; i++)
    fp__deaths_spawn_locked(pool, &pool->ws[i]);
  fp__pool_unlock(pool);
  /* The pool thread takes no signals: the user's handlers run on the
   * user's threads, as they would without the library. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  if (rc == 0)
    rc = -pthread_create(&pool->thread, NULL, pool_thread, pool);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc == 0) {
    pool->thread_started = 1;
    return 0;
  }
  pool->link->ops->close(pool->link);
  uv_close((uv_handle_t *)&pool->wake, NULL);
  uv_close((uv_handle_t *)&pool->tick, NULL);
  uv_close((uv_handle_t *)&pool->poke, NULL);
  uv_run(&pool->loop, UV_RUN_DEFAULT);
  uv_loop_close(&pool->loop);
  return rc;
}

/* Slots whose first worker is still on its way to READY. */
static int starting_pending(const fp_pool *pool) {
  int n = 0;
  for (int i = 0; i < pool->nworkers; i++)
    n += pool->ws[i].spawning || (pool->ws[i].alive && !pool->ws[i].ready);
  return n;
}

/* Waits until every worker is ready or starting failed. Returns 0 or the
 * error to fail fp_pool_new with, and copies why into `why` under the
 * lock: the pool thread may still be rewriting start_msg as more workers
 * die. */
static int await_workers(fp_pool *pool, char *why, size_t whylen) {
  fp__pool_lock(pool);
  while (pool->nready < pool->nworkers && !pool->broken &&
         !pool->link_lost && starting_pending(pool) > 0)
    fp__pool_wait(pool, NULL);
  int rc = 0;
  if (pool->broken)
    rc = pool->broken;
  else if (pool->link_lost)
    rc = FP_EWORKER;
  else if (pool->nready < pool->nworkers)
    rc = pool->start_err ? pool->start_err : FP_EWORKER;
  snprintf(why, whylen, "%s",
           pool->start_msg[0] ? pool->start_msg : "no worker became ready");
  pool->starting = 0;
  fp__pool_unlock(pool);
  return rc;
}

int fp_pool_new(fp_pool **out, const fp_pool_opts *opts) {
  if (out == NULL)
    return fp__refuse("NULL pool pointer");
  *out = NULL;
  fp_pool *pool = pool_alloc();
  if (pool == NULL)
    return FP_ENOMEM;
  fp__link_events ev = link_events(pool);
  int rc = resolve_opts(pool, opts); /* sets the message itself */
  if (rc == 0)
    rc = open_link(pool, &ev);
  if (rc == 0 && (rc = start_loop(pool)) != 0) {
    fp__set_last_error(rc, "cannot start the pool thread");
    pool->link->ops->free(pool->link);
  }
  if (rc != 0) {
    pool_release(pool);
    return rc;
  }
  char why[FP__MSG_LEN];
  if ((rc = await_workers(pool, why, sizeof(why))) != 0) {
    char msg[FP__MSG_LEN + 32];
    snprintf(msg, sizeof(msg), "workers could not start: %s", why);
    fp__set_last_error(rc, msg);
    fp_pool_free(pool);
    return rc;
  }
  fp__clear_last_error();
  *out = pool;
  return 0;
}

/* ---- public lifecycle ------------------------------------------------------- */

int fp_pool_size(const fp_pool *pool) {
  return pool ? pool->nworkers : fp__refuse("NULL pool");
}

int fp__pool_refuse_in_copy(const char *call) {
  char msg[128];
  snprintf(msg, sizeof(msg),
           "%s in a forked copy of the master: the pool belongs to its "
           "parent, whose workers are left alone",
           call);
  return fp__refuse(msg);
}

int fp_pool_worker_info(fp_pool *pool, int i, fp_worker_info *info) {
  if (pool == NULL || info == NULL || i < 0 || i >= pool->nworkers ||
      fp__pool_foreign(pool))
    return fp__refuse("fp_pool_worker_info: NULL pool or info, index out "
                      "of range, or a forked copy of the pool");
  fp__pool_lock(pool);
  fp__wslot *ws = &pool->ws[i];
  fp__running run;
  info->pid = ws->alive && !pool->joined ? ws->pid : 0; /* joined: reaped */
  info->cpu = ws->cpu;
  info->last_cpu = -1;
  /* A joined pool's link is gone (or going): no worker runs anything. */
  if (ws->tasks && !pool->joined &&
      pool->link->ops->running(pool->link, i, &run) == 0)
    info->last_cpu = run.cpu;
  info->tasks = ws->tasks;
  info->restarts = ws->restarts;
  fp__pool_unlock(pool);
  return 0;
}

int fp_pool_close(fp_pool *pool) {
  if (pool == NULL)
    return fp__refuse("NULL pool");
  if (fp__pool_foreign(pool))
    return fp__pool_refuse_in_copy("fp_pool_close");
  fp__pool_lock(pool);
  if (pool->state == FP__RUN)
    pool->state = FP__CLOSE;
  fp__pool_wake(pool);
  fp__pool_unlock(pool);
  return 0;
}

int fp_pool_terminate(fp_pool *pool) {
  if (pool == NULL || fp__on_pool_thread(pool))
    return fp__refuse(pool == NULL ? "NULL pool"
                               : "fp_pool_terminate from a callback (pool "
                                 "thread)");
  if (fp__pool_foreign(pool))
    return fp__pool_refuse_in_copy("fp_pool_terminate");
  fp__pool_lock(pool);
  pool->state = FP__TERMINATE;
  fp__pool_wake(pool);
  /* Return once every worker is dead: the pool thread kills, the link
   * reports, and nalive drops to zero. */
  while (pool->nalive > 0 && !pool->link_lost && !pool->thread_done)
    fp__pool_wait(pool, NULL);
  fp__pool_unlock(pool);
  return 0;
}

/* A closed pool still runs the queued work, and a producer-fed imap's
 * input is read only when its iterator is read: a join that waited for it
 * would wait forever if the joining thread is the reader. As CPython's
 * task handler exhausts imap's generator, join reads what is left of each
 * such input itself (pool->mu held, released around the reading). */
static int finish_producer_inputs_locked(fp_pool *pool) {
  for (fp__job *job = pool->jobs.head; pool->state == FP__CLOSE && job;) {
    fp_iter *it = job->it;
    if (job->finished || it == NULL || it->producer == NULL ||
        job->input_done || job->input_read_by_join) {
      job = job->jnext;
      continue;
    }
    job->input_read_by_join = 1; /* once: a producer that ended early (or
                                    an iterator being freed) ends it */
    pthread_mutex_lock(&it->mu); /* the job holds a reference: it lives */
    it->refs++;
    pthread_mutex_unlock(&it->mu);
    fp__pool_unlock(pool);
    int busy = fp__iter_finish_input(it) != 0;
    fp__pool_lock(pool);
    if (busy) {
      /* A producer joining this pool while another thread's producer,
       * blocked in a join of its own, feeds this input: each would wait
       * for the other. The join is refused instead. (job is alive while
       * its iterator still names it.) */
      if (it->job == job)
        job->input_read_by_join = 0;
      fp__pool_unlock(pool);
      fp__iter_drop_ref(it);
      fp__pool_lock(pool);
      return -EBUSY;
    }
    job = pool->jobs.head; /* the list may have changed meanwhile */
  }
  return 0;
}

/* fp_pool_join without touching the thread's last error, which
 * fp_pool_free (void) must leave as the caller's last call set it. */
static int join_pool(fp_pool *pool) {
  if (pool == NULL || fp__on_pool_thread(pool))
    return fp__refuse(pool == NULL ? "NULL pool"
                               : "fp_pool_join from a callback (pool thread)");
  if (fp__producer_running(pool, NULL))
    return fp__refuse("fp_pool_join from the producer of one of the pool's "
                      "iterators: it would wait for the input that producer "
                      "is writing");
  if (fp__pool_foreign(pool))
    return fp__pool_refuse_in_copy("fp_pool_join");
  fp__pool_lock(pool);
  if (pool->state == FP__RUN) {
    fp__pool_unlock(pool);
    fp__set_last_error(FP_EINVAL, "join before close or terminate");
    return FP_EINVAL;
  }
  if (finish_producer_inputs_locked(pool) != 0) {
    fp__pool_unlock(pool);
    return fp__refuse("fp_pool_join from an imap producer while another "
                      "thread produces the input of one of the pool's "
                      "iterators: each could wait for the other");
  }
  if (!pool->joined) /* a joined pool's loop is closed: nothing to wake */
    fp__pool_wake(pool);
  while (!pool->thread_done && !pool->joined)
    fp__pool_wait(pool, NULL);
  if (pool->joined) {
    /* Another thread joins: return when it is done, as it will. */
    while (!pool->join_done)
      fp__pool_wait(pool, NULL);
    fp__pool_unlock(pool);
    return 0;
  }
  pool->joined = 1;
  fp__sched_drop_all_locked(pool);
  fp__pool_unlock(pool);
  /* A caller still polling (result.c) sees its result ready and stops
   * within microseconds; the link must outlive it. */
  while (atomic_load(&pool->spinners) > 0)
    sched_yield();
  pthread_join(pool->thread, NULL);
  uv_loop_close(&pool->loop);
  pool->link->ops->free(pool->link);
  fp__pool_lock(pool);
  pool->link = NULL;
  pool->join_done = 1;
  pthread_cond_broadcast(&pool->cond);
  fp__pool_unlock(pool);
  return 0;
}

int fp_pool_join(fp_pool *pool) {
  int rc = join_pool(pool);
  if (rc == 0)
    fp__clear_last_error(); /* a successful blocking call */
  return rc;
}

void fp_pool_free(fp_pool *pool) {
  if (pool == NULL)
    return;
  if (fp__on_pool_thread(pool)) {
    /* The loop that runs this callback would be freed under it. */
    fp__refuse("fp_pool_free from a callback (pool thread): nothing freed");
    return;
  }
  if (fp__producer_running(pool, NULL) && !fp__pool_foreign(pool)) {
    /* Its join would wait for the input being produced, and the caller
     * of the producer (an fp_iter_next, a join) still uses the pool. */
    fp__refuse("fp_pool_free from the producer of one of the pool's "
               "iterators: nothing freed");
    return;
  }
  if (fp__pool_foreign(pool)) {
    /* The user forked: this copy has no pool thread and its workers are
     * the parent's. Free this process's copy of the memory only. */
    if (pool->link != NULL)
      pool->link->ops->free(pool->link);
    pool_release(pool);
    return;
  }
  if (pool->thread_started && !pool->joined) {
    /* As leaving Python's with-block: terminate, even after close. */
    fp_pool_terminate(pool);
    join_pool(pool);
  }
  pool_release(pool);
}
