/* SPDX-License-Identifier: MIT */
/* pool_int.h - what only the master has: the pool and its scheduler.
 *
 * Processes and threads:
 *
 *   user threads --API--> pool thread (libuv loop) --link--> workers
 *
 * The link (link.h) is how the scheduler reaches workers; what crosses
 * fork() is in proto.h, never this header.
 *
 * Locking: one mutex per pool (pool->mu) guards the pool's state, the
 * jobs, the pending queue, the worker table and the link's state. A
 * function named *_locked is called with pool->mu held; builds with
 * FP_CHECK_LOCKS (the sanitizer builds) assert it. Result objects and
 * iterators have their own mutex so they can outlive the pool; the lock
 * order is always pool->mu before res->mu / it->mu, never the reverse.
 * Only the pool thread touches libuv handles; user threads that need the
 * loop to react (new timers, shutdown) call fp__pool_wake().
 */
#ifndef FP_POOL_INT_H
#define FP_POOL_INT_H

#include "forkpool.h"
#include "pool/clock.h"
#include "pool/job.h"
#include "pool/link.h"

#include <assert.h>
#include <pthread.h>
#include <uv.h>

/* The scheduler's view of one worker slot. */
typedef struct fp__wslot {
  int index;
  int spawning;          /* spawn() asked, no started/start_failed yet */
  int alive;             /* started, no exited yet */
  int ready;             /* said READY */
  pid_t pid;
  fp__chunk *inflight[FP__LINK_MAX_BATCH]; /* sent, in order */
  int ninflight;
  uint64_t sent;         /* chunks sent to the current process */
  int retiring;          /* said RETIRE (maxtasksperchild) */
  int finish_told;       /* the link's finish() went to this process */
  int kill_reason;       /* FP_ETIMEDOUT / FP_ECANCELED / FP_EPROTO /
                            FP_ENOMEM (sched.c) */
  uint64_t kill_seq;     /* the chunk we killed it for */
  char violation[96];    /* kill_reason FP_EPROTO: what it sent */
  int kill_aimed;        /* the SIGTERM was aimed at kill_seq (link.h) */
  int lost_results;      /* the master stopped reading it (no memory):
                            whatever the kill's reason, its chunks fail */
  int64_t kill_at_ns;    /* SIGKILL follows SIGTERM then; 0: not killing */
  int64_t respawn_at_ns; /* try starting a worker again then; 0: no */
  int cpu;               /* pinned CPU or -1 */
  uint64_t tasks, restarts;
  int64_t last_done_ns;
} fp__wslot;

enum { FP__RUN = 0, FP__CLOSE, FP__TERMINATE };

struct fp_pool {
  pthread_mutex_t mu;
#ifdef FP_CHECK_LOCKS
  pthread_t mu_owner;    /* who holds mu, for fp__assert_locked */
  int mu_held;
#endif
  pthread_cond_t cond;   /* ready workers, shutdown progress */
  int state;
  int broken;            /* a storm or a lost link: the code to fail with */
  int start_err;         /* first start_failed error (fp_pool_new) */
  char broken_msg[FP__MSG_LEN]; /* why the pool broke (broken != 0) */
  char start_msg[FP__MSG_LEN]; /* why starting failed last: fp_pool_new's
                                  message ("" when nothing failed) */
  int starting;          /* fp_pool_new waits for the first READYs */
  int nworkers;
  fp_pool_opts opts;     /* resolved */
  int *pin_cpus;         /* copy of opts.pin_cpus */
  int *cpu_of_worker;
  size_t max_frame;
  int inflight;          /* opts.inflight: 0 adaptive */
  uint64_t fork_gen;     /* fp__fork_gen when the pool was made */
  fp__wconf wconf;       /* what crosses fork() */
  fp__link *link;
  fp__wslot *ws;
  int nready;            /* workers that reported READY */
  int nalive;            /* worker processes alive or being spawned */
  int64_t *start_fail_ns; /* ring of recent start failures */
  int start_fail_pos;
  fp__jobset jobs;
  fp__chunk *qhead, *qtail; /* pending chunks */
  size_t npending;
  uint64_t next_seq;
  int64_t ewma_ns;       /* smoothed chunk service time; 0 unknown */
  int rr;                /* round-robin start */
  /* The job of every placeholder a worker holds for a chunk taken back
   * from it (steal.c): finished from the start, so its placeholders are
   * dropped wherever they come back, and never freed (travelling >= 1). */
  fp__job recalled;
  /* loop */
  uv_loop_t loop;
  uv_async_t wake;
  uv_timer_t tick;
  int tick_on;
  uv_timer_t poke; /* a look at the link while chunks travel */
  int poke_ms;     /* its period, 0: off (fp__poke_ms_locked) */
  int poke_asked;  /* another thread woke the loop to arm it */
  pthread_t thread;
  int thread_started;
  int thread_done;
  int stopping;          /* loop asked to shut down */
  int joined;            /* a join took the pool thread (and frees the link) */
  int join_done;         /* ... and finished: every worker is reaped */
  int link_lost;         /* no worker can be started any more */
  _Atomic int spinners;  /* callers that pinned the pool (polling the link,
                            canceling a result or freeing an iterator): join
                            frees the link only once none is left */
};

/* ---- the pool's mutex ----------------------------------------------------- */

static inline void fp__pool_lock(fp_pool *pool) {
  pthread_mutex_lock(&pool->mu);
#ifdef FP_CHECK_LOCKS
  pool->mu_owner = pthread_self();
  pool->mu_held = 1;
#endif
}

static inline void fp__pool_unlock(fp_pool *pool) {
#ifdef FP_CHECK_LOCKS
  pool->mu_held = 0;
#endif
  pthread_mutex_unlock(&pool->mu);
}

/* Takes pool->mu if it is free: 0, or EBUSY (nothing held). */
static inline int fp__pool_trylock(fp_pool *pool) {
  int rc = pthread_mutex_trylock(&pool->mu);
#ifdef FP_CHECK_LOCKS
  if (rc == 0) {
    pool->mu_owner = pthread_self();
    pool->mu_held = 1;
  }
#endif
  return rc;
}

/* pthread_cond_wait on pool->cond (timed when ts is not NULL). */
static inline int fp__pool_wait(fp_pool *pool, const struct timespec *ts) {
#ifdef FP_CHECK_LOCKS
  pool->mu_held = 0;
#endif
  int rc = ts ? pthread_cond_timedwait(&pool->cond, &pool->mu, ts)
              : pthread_cond_wait(&pool->cond, &pool->mu);
#ifdef FP_CHECK_LOCKS
  pool->mu_owner = pthread_self();
  pool->mu_held = 1;
#endif
  return rc;
}

#ifdef FP_CHECK_LOCKS
#define fp__assert_locked(pool)                                               \
  assert((pool)->mu_held && pthread_equal((pool)->mu_owner, pthread_self()))
#else
#define fp__assert_locked(pool) ((void)(pool))
#endif

/* ---- the pool thread (inline: every file of the scheduler needs them) --- */

/* The pool whose loop the calling thread runs, NULL on other threads
 * (forked.c): a thread id would not do, as a thread made after the pool
 * thread was joined may get its id. */
extern __thread const fp_pool *fp__tl_loop_pool;

static inline int fp__on_pool_thread(const fp_pool *pool) {
  return fp__tl_loop_pool == pool;
}

/* result.c: waits on cond (mu held) until signalled, end, or a slice of
 * 100 ms; returns 1 when the slice ran out before end: the caller pokes
 * the pool thread then (a result may wait in a ring unannounced). */
int fp__wait_slice(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t end);
/* result.c: wakes pool's thread, whose loop drains the result rings. The
 * caller holds `held` (a result's or an iterator's lock) and read pool
 * under it while its job ran, so the pool lives: it is pinned (spinners)
 * before `held` is released for the pool's lock, and `held` is taken
 * again before returning. NULL, a forked copy's pool or the pool thread
 * itself: nothing. */
void fp__pool_nudge(fp_pool *pool, pthread_mutex_t *held);

/* Pokes the pool thread (arms the tick, runs callbacks, shutdown). */
static inline void fp__pool_wake(fp_pool *pool) {
  if (pool->thread_started && !pool->thread_done)
    uv_async_send(&pool->wake);
}

/* While workers hold chunks, the pool thread looks at the link at least
 * every FP__POKE_MS, whatever the workers say. Results normally come with
 * a worker's kick, or to a caller that polls; but whether a worker kicks
 * depends on words in shared memory (master_idle, pollers) that any
 * worker's task can overwrite, and a result with callbacks and no waiter
 * would then never be taken in. Ten looks a second while busy; none when
 * idle. */
#define FP__POKE_MS 100
/* ... and every FP__LOOK_MS while a worker holds the link's lazy_depth
 * chunks: its results may be waiting for that look (link.h), which bounds
 * their wait when the chunk after them runs long. A worker holds that many
 * only while chunks are short (sched.c, queue_depth), when the results
 * keep the pool thread that busy anyway. */
#define FP__LOOK_MS 2

/* The poke timer's period now: FP__LOOK_MS, FP__POKE_MS, or 0 when no
 * worker holds a chunk. */
static inline int fp__poke_ms_locked(const fp_pool *pool) {
  int lazy = pool->link->ops->lazy_depth, ms = 0;
  for (int i = 0; i < pool->nworkers; i++) {
    int n = pool->ws[i].ninflight;
    if (lazy > 0 && n >= lazy)
      return FP__LOOK_MS;
    if (n > 0)
      ms = FP__POKE_MS;
  }
  return ms;
}

/* The pool thread arms the poke timer (loop_leave); a thread that sent
 * chunks while it is off, or slower than they need, wakes the pool thread
 * to arm it: once per busy spell, not per send. */
static inline void fp__pool_need_poke_locked(fp_pool *pool) {
  if (pool->poke_ms == FP__LOOK_MS || pool->poke_asked || pool->stopping ||
      fp__on_pool_thread(pool))
    return; /* the fastest already, or to be armed */
  int ms = fp__poke_ms_locked(pool);
  if (ms == 0 || (pool->poke_ms != 0 && pool->poke_ms <= ms))
    return;
  pool->poke_asked = 1;
  fp__pool_wake(pool);
}

/* Unlocks pool->mu, first waking the pool thread when progress calls
 * came due under it on another thread: they run on the pool thread, and
 * nothing else would wake it for a job that ended off it (an empty imap
 * finished at submission, a producer's end, a producer's error). */
static inline void fp__pool_unlock_waking(fp_pool *pool) {
  if (!fp__on_pool_thread(pool) &&
      atomic_load_explicit(&pool->jobs.pq.pending, memory_order_relaxed))
    fp__pool_wake(pool);
  fp__pool_unlock(pool);
}

/* ---- forked.c, pool.c -------------------------------------------------- */

/* The fork generation of this process (registers the atfork handler on
 * first use); a pool remembers the one it was made in. */
uint64_t fp__fork_gen_now(void);
/* Whether gen (an object's fp__fork_gen_now() at its making) is not this
 * process's: the object belongs to the process this one was forked from. */
int fp__made_elsewhere(uint64_t gen);
/* 1 when this process is a fork of the one that made the pool. */
int fp__pool_foreign(const fp_pool *pool);
/* A call refused in a forked copy of the master (the pool, its workers
 * and results are the parent's): sets the message, naming call, and
 * returns FP_EINVAL. */
int fp__pool_refuse_in_copy(const char *call);
/* 0 when the pool accepts work, else the code to fail a submission with. */
int fp__pool_check_submit_locked(fp_pool *pool);

/* ---- stdfd.c ---------------------------------------------------------- */

/* Fills whichever of fds 0-2 are closed with /dev/null (held[i] = 1), so
 * descriptors made meanwhile land above them; release closes those again. */
void fp__stdfd_hold(int held[3]);
void fp__stdfd_release(const int held[3]);

/* ---- result.c, iter.c ---------------------------------------------------- */

/* A new result for a job of pool with the call's callbacks (NULL when out
 * of memory); the caller and the job each hold a reference. */
fp_result *fp__result_new(fp_pool *pool, const fp_call_opts *o);
/* Frees a result that was never handed to a job or the caller. */
void fp__result_discard(fp_result *r);
/* A new iterator (NULL when out of memory), references as results. */
fp_iter *fp__iter_new(fp_pool *pool, int ordered);
/* Pulls the producer's items into chunks up to the read-ahead bound
 * (caller's thread, no lock held). Returns 0 or the error that ends the
 * iteration. */
int fp__iter_fill(fp_iter *it);
/* Reads what is left of a producer-fed iterator's input, with no
 * read-ahead bound (fp_pool_join after close: the pool must finish, and
 * the consumer may never read on), then drops the reference the caller
 * took on `it` (it->refs, under it->mu). Producer calls stay one at a time
 * (it->pmu), whichever thread makes them. Returns 0, or -EBUSY (nothing
 * read, the reference kept) when called from inside a producer while
 * another thread runs this iterator's producer. */
int fp__iter_finish_input(fp_iter *it);
/* Drops a reference taken on it (it->refs), freeing it with the last. */
void fp__iter_drop_ref(fp_iter *it);

/* ---- sched.c: queue, dispatch, results --------------------------------- */

void fp__sched_enqueue_locked(fp_pool *pool, fp__chunk *ch);
void fp__sched_requeue_front_locked(fp_pool *pool, fp__chunk *ch);
/* Sends queued chunks to workers that can take them. */
void fp__sched_dispatch_locked(fp_pool *pool);
/* Fails a whole job now: its queued chunks are dropped and, with
 * kill_running, workers running its chunks are killed; its travelling
 * chunks come back as orphans. */
void fp__sched_cancel_job_locked(fp_pool *pool, fp__job *job, int code,
                                 int64_t index, const char *msg,
                                 int kill_running);
/* At the end of the pool (its loop has ended): chunks still recorded on
 * workers (which the link ended without their results, e.g. after a
 * result was freed) are released with their finished jobs. */
void fp__sched_drop_all_locked(fp_pool *pool);
/* Kills slot's worker because of `reason` (sig now; SIGTERM escalates to
 * SIGKILL after kill_grace, see deaths.c). */
void fp__sched_kill_locked(fp_pool *pool, fp__wslot *ws, int reason,
                           uint64_t seq, int sig);
/* 1 when a worker could take a chunk now (at queue depth `depth`). */
int fp__sched_can_take(fp_pool *pool, fp__wslot *ws, int depth);
/* 1 while a worker idles and another holds chunks it may not have begun
 * (steal.c): the tick (deaths.c) looks again until they move or run. */
int fp__sched_steal_pending_locked(fp_pool *pool);

/* ---- steal.c: chunks queued behind a long one ------------------------ */

/* The worker whose queued chunks could be taken back and have waited
 * longest; with stuck_only, only one whose head chunk has been held past
 * the threshold. NULL if none (or the link cannot take chunks back). */
fp__wslot *fp__steal_victim_locked(fp_pool *pool, int stuck_only);
/* Takes back what ws holds behind its head and has provably not begun,
 * leaving placeholders; fills out[] (room for FP__LINK_MAX_BATCH) from
 * the tail towards the head, each with a new seq, no longer travelling
 * and not yet queued. Returns how many. */
int fp__steal_recall_locked(fp_pool *pool, fp__wslot *ws, fp__chunk **out);

/* A caller's poll (pool->mu held; released on return): delivers what the
 * link's workers published (link.h, poll), dispatches, and marks ready the
 * finished results that have no callbacks - on this thread, exactly once;
 * results with callbacks stay for the pool thread, which is woken.
 * Returns how many results the link delivered. */
int fp__sched_poll_leave(fp_pool *pool);
/* A waiting caller's spin (no lock held; pool pinned in pool->spinners):
 * while the link's CPU budget allows, until done(arg) or POLL_SPIN_NS
 * after the last progress, it polls the link whenever workers published
 * results (fp__sched_poll_leave). Returns at once when the budget has no
 * room; afterwards the caller sleeps as usual. */
void fp__sched_poll_spin(fp_pool *pool, int (*done)(void *), void *arg);
/* Link events (see link.h). */
void fp__sched_on_ready(void *ctx, int slot);
void fp__sched_on_result(void *ctx, int slot, const unsigned char *payload,
                         size_t len, fp__rbuf *keep);
void fp__sched_on_retired(void *ctx, int slot);
void fp__sched_on_violation(void *ctx, int slot, const char *what);
void fp__sched_on_no_memory(void *ctx, int slot);

/* ---- deaths.c: exits, crash policy, respawn, time limits ----------------- */

void fp__deaths_spawn_locked(fp_pool *pool, fp__wslot *ws);
/* Fails every job with code (a storm, a lost link). */
void fp__deaths_break_locked(fp_pool *pool, int code, const char *msg);
/* Enforces time limits and SIGTERM -> SIGKILL escalation; returns 1 while
 * the tick is still needed. */
int fp__deaths_tick_locked(fp_pool *pool);
int fp__deaths_need_tick_locked(fp_pool *pool);
void fp__deaths_on_started(void *ctx, int slot, pid_t pid);
void fp__deaths_on_exited(void *ctx, int slot, pid_t pid, int status);
void fp__deaths_on_start_failed(void *ctx, int slot, int err);
void fp__deaths_on_lost(void *ctx, const char *why);

#endif
