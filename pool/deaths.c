/* SPDX-License-Identifier: MIT */
/* deaths.c - worker deaths: exit causes, crash policy, respawn, time limits.
 *
 * The link reports every worker process that ends (exited(), after it
 * delivered the results the worker wrote before dying). The scheduler's
 * slot then says which chunks the worker held and the link says which one
 * it was running and at which item: that chunk fails (or is retried, or
 * aborts its job, by the job's crash policy) with a message that names the
 * item, the worker and the cause; the chunks it had not started go back
 * to the front of the queue; and a replacement is asked for - unless
 * workers keep dying before they become ready, which breaks the pool with
 * FP_ESTORM instead of forking forever.
 *
 * Time limits are enforced here too, from the pool thread's tick: a worker
 * whose current item ran too long is sent SIGTERM, then SIGKILL after
 * kill_grace, and its death is reported as FP_ETIMEDOUT.
 */
#include "pool/pool_int.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

void fp__deaths_spawn_locked(fp_pool *pool, fp__wslot *ws) {
  fp__assert_locked(pool);
  if (ws->spawning || ws->alive || pool->broken || pool->link_lost)
    return;
  int rc = pool->link->ops->spawn(pool->link, ws->index);
  if (rc == 0) {
    ws->spawning = 1;
    pool->nalive++;
    return;
  }
  snprintf(pool->start_msg, sizeof(pool->start_msg),
           "cannot ask for a worker: %s (%s)", fp_err_name(rc),
           fp_strerror(rc));
  if (pool->start_err == 0)
    pool->start_err = rc;
}

void fp__deaths_break_locked(fp_pool *pool, int code, const char *msg) {
  fp__assert_locked(pool);
  pool->broken = code;
  snprintf(pool->broken_msg, sizeof(pool->broken_msg), "%s", msg);
  while (pool->jobs.head)
    fp__sched_cancel_job_locked(pool, pool->jobs.head, code, -1, msg, 1);
  pthread_cond_broadcast(&pool->cond);
}

/* Records a start failure; returns 1 when they come too fast (a storm):
 * more than max_restarts within restart_window. */
static int storm_locked(fp_pool *pool) {
  int64_t now = fp__now_ns();
  int n = pool->opts.max_restarts;
  pool->start_fail_ns[pool->start_fail_pos] = now;
  pool->start_fail_pos = (pool->start_fail_pos + 1) % (n + 1);
  /* The ring holds the last n+1 start failures: the storm is on when the
   * oldest of them is inside the window too. */
  int64_t oldest = pool->start_fail_ns[pool->start_fail_pos];
  return oldest != 0 &&
         now - oldest <= fp__seconds_to_ns(pool->opts.restart_window);
}

static int work_remains(fp_pool *pool) {
  return pool->jobs.head != NULL || pool->qhead != NULL;
}

static int want_workers(fp_pool *pool) {
  return !pool->broken && (pool->state == FP__RUN ||
                           (pool->state == FP__CLOSE && work_remains(pool)));
}

/* Says how a worker ended. Under a memory_limit a SIGKILL is also how a
 * worker ends that cannot allocate even the report of a failure (as the
 * kernel's OOM killer would end it): the message names the limit. */
static void describe_status(const fp_pool *pool, int status, char *buf,
                            size_t len) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char *abbrev = sigabbrev_np(sig);
    int n =
        snprintf(buf, len, "killed by signal SIG%s (%s)", abbrev ? abbrev : "?",
                 sigdescr_np(sig) ? sigdescr_np(sig) : "unknown");
    if (sig == SIGKILL && pool->opts.memory_limit > 0 && n >= 0 &&
        (size_t)n < len)
      snprintf(buf + n, len - (size_t)n,
               "; it may have run out of memory under memory_limit %zu "
               "bytes",
               pool->opts.memory_limit);
  } else if (WIFEXITED(status)) {
    switch (WEXITSTATUS(status)) {
    case FP__WEXIT_INIT:
      snprintf(buf, len, "initializer failed");
      break;
    case FP__WEXIT_PIN:
      snprintf(buf, len, "could not pin itself to its CPU");
      break;
    case FP__WEXIT_PROTO:
      snprintf(buf, len, "received a malformed task frame");
      break;
    case FP__WEXIT_SEND:
      snprintf(buf, len,
               "could not send its result and exited (a task that closed "
               "or replaced the worker's descriptors?)");
      break;
    default:
      snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    }
  } else {
    snprintf(buf, len, "ended with wait status %d", status);
  }
}

/* Why a worker died, as seen from the chunks it held. */
typedef struct death {
  int slot;
  pid_t pid;
  int clean;         /* retired and exited 0 */
  int reason;        /* FP_EWORKER, or why we killed it */
  uint64_t kill_seq; /* the chunk we killed it for */
  int proto;         /* it exited rejecting a task frame as malformed */
  int lost_results;  /* the master stopped reading its results */
  fp__running run;   /* what it was running */
  char how[160];
  char violation[96]; /* reason FP_EPROTO: what it sent */
} death;

/* "worker 3 (pid 42)", with where the link says it runs when remote
 * ("worker 3 (pid 42, rank 2 on node7)"). */
static void name_worker(fp_pool *pool, const death *d, char *buf,
                        size_t len) {
  const fp__link_ops *ops = pool->link->ops;
  const char *w = ops->where ? ops->where(pool->link, d->slot) : NULL;
  snprintf(buf, len, "worker %d (pid %d%s%s)", d->slot, (int)d->pid,
           w && *w ? ", " : "", w && *w ? w : "");
}

/* Fails, retries or aborts the chunk the worker was running. */
static void chunk_died_locked(fp_pool *pool, fp__chunk *ch, const death *d) {
  fp__job *job = ch->job;
  char msg[FP__MSG_LEN], who[160];
  int64_t at = d->run.item;
  if (at < ch->start || at >= ch->start + (int64_t)ch->count)
    at = ch->start;
  name_worker(pool, d, who, sizeof(who));
  if (d->reason == FP_ETIMEDOUT)
    snprintf(msg, sizeof(msg),
             "item %lld: exceeded its time limit of %gs; %s was killed",
             (long long)at, job->timeout, who);
  else if (d->reason == FP_ECANCELED)
    snprintf(msg, sizeof(msg), "item %lld: canceled; %s %s", (long long)at,
             who, d->how);
  else if (d->reason == FP_EPROTO)
    snprintf(msg, sizeof(msg),
             "item %lld: %s broke the protocol while running it (it sent "
             "%s: a task writing to the pool's descriptors?) and was killed",
             (long long)at, who, d->violation[0] ? d->violation : "junk");
  else
    snprintf(msg, sizeof(msg), "item %lld: %s %s while running it",
             (long long)at, who, d->how);
  if (d->reason == FP_EWORKER && job->on_crash == FP_CRASH_RETRY &&
      ch->attempts < job->retries) {
    ch->attempts++;
    fp__sched_requeue_front_locked(pool, ch);
  } else if (d->reason == FP_EWORKER && job->on_crash == FP_CRASH_ABORT) {
    int heap = ch->heap;
    fp__sched_cancel_job_locked(pool, job, FP_EWORKER, at, msg, 1);
    if (heap)
      fp__chunk_free(ch); /* array chunks go with their job */
  } else {
    fp__chunk_crashed_locked(&pool->jobs, ch, d->reason, at, msg);
  }
}

/* 1 when a dead worker named, among the chunks it held, one it ran. */
static int named_running(fp__chunk *const *held, int n, const death *d) {
  for (int k = 0; k < n; k++)
    if (held[k]->seq == d->run.seq)
      return 1;
  return 0;
}

/* A worker that rejected a task frame as malformed ran none of its
 * chunks: it was reading the oldest one it held (its results up to there
 * were delivered before its death). Requeued, that chunk would kill every
 * next worker the same way, so it fails instead. Returns its seq, or 0. */
static uint64_t rejected_chunk(fp__chunk *const *held, int n, const death *d) {
  if (!d->proto || n == 0 || named_running(held, n, d))
    return 0; /* it was running one: that one is to blame */
  return held[0]->seq;
}

static void reject_chunk_locked(fp_pool *pool, fp__chunk *ch, const death *d) {
  char msg[FP__MSG_LEN], who[160];
  name_worker(pool, d, who, sizeof(who));
  snprintf(msg, sizeof(msg),
           "item %lld: %s %s: the chunk was not run, and fails rather than "
           "kill the next worker",
           (long long)ch->start, who, d->how);
  fp__chunk_crashed_locked(&pool->jobs, ch, FP_EPROTO, -1, msg);
}

/* A chunk that was running when its worker was killed for another chunk
 * (a cancel or time limit that raced with the worker moving on, where the
 * link cannot aim its kill): it started, so it may have had effects, and
 * is never run again behind the user's back. Its worker died under it:
 * FP_EWORKER, and the job's crash policy decides. */
static void innocent_died_locked(fp_pool *pool, fp__chunk *ch,
                                 const death *d) {
  death as_crash = *d;
  as_crash.reason = FP_EWORKER;
  snprintf(as_crash.how, sizeof(as_crash.how),
           "was stopped for another job's chunk (%s) just as it started this "
           "one",
           d->reason == FP_ETIMEDOUT   ? "a time limit"
           : d->reason == FP_ECANCELED ? "a cancel"
                                       : "a broken connection");
  chunk_died_locked(pool, ch, &as_crash);
}

/* Fails a chunk of a worker the master stopped reading for want of
 * memory: it may have run, and its results are lost. */
static void unreadable_results_locked(fp_pool *pool, fp__chunk *ch,
                                      const death *d) {
  char msg[FP__MSG_LEN], who[160];
  name_worker(pool, d, who, sizeof(who));
  snprintf(msg, sizeof(msg),
           "item %lld: out of memory in the master to receive the results "
           "of %s, which was killed; its chunk may have run",
           (long long)ch->start, who);
  fp__chunk_crashed_locked(&pool->jobs, ch, FP_ENOMEM, -1, msg);
}

/* How many times a chunk may be requeued as "not started" after its
 * worker died uncleanly while holding it without naming any chunk as
 * running. A worker publishes the chunk it runs before it starts it, so a
 * crash names one; a death between chunks (a kill from outside, the OOM
 * killer) names none, and its chunks are innocent and requeued. But the
 * name lives in shared memory, which a task can overwrite: a task that
 * erases it and then crashes its worker would otherwise be run again, and
 * kill again, forever. */
#define UNBLAMED_MAX 3

static void unblamed_too_often_locked(fp_pool *pool, fp__chunk *ch,
                                      const death *d) {
  char msg[FP__MSG_LEN], who[160];
  name_worker(pool, d, who, sizeof(who));
  snprintf(msg, sizeof(msg),
           "item %lld: %s %s; %d workers died while holding this chunk, "
           "none saying which chunk it ran (a task overwriting the pool's "
           "shared memory?): the chunk may have run, and fails rather than "
           "run again",
           (long long)ch->start, who, d->how, ch->unblamed);
  fp__chunk_crashed_locked(&pool->jobs, ch, FP_EWORKER, -1, msg);
}

/* Accounts for every chunk a dead worker held. */
static void settle_chunks_locked(fp_pool *pool, fp__wslot *ws,
                                 const death *d) {
  int n = ws->ninflight;
  fp__chunk *held[FP__LINK_MAX_BATCH];
  memcpy(held, ws->inflight, sizeof(held[0]) * (size_t)n);
  ws->ninflight = 0;
  uint64_t rejected = rejected_chunk(held, n, d);
  int unblamed =
      !d->clean && d->reason == FP_EWORKER && !named_running(held, n, d);
  /* Requeue in reverse so the queue keeps the original order. */
  for (int k = n - 1; k >= 0; k--) {
    fp__chunk *ch = held[k];
    ch->job->travelling--;
    if (ch->job->finished) {
      fp__chunk_orphan_locked(ch);
      continue;
    }
    /* We killed this worker for another chunk (a time limit or a cancel
     * that raced with the worker moving on): this one is innocent. */
    int innocent = (d->reason == FP_ETIMEDOUT || d->reason == FP_ECANCELED ||
                    d->reason == FP_EPIPE) &&
                   ch->seq != d->kill_seq;
    if (pool->state == FP__TERMINATE)
      ch->state = FP__CH_DONE; /* its job is being canceled */
    else if (d->lost_results)
      unreadable_results_locked(pool, ch, d);
    else if (ch->seq == rejected)
      reject_chunk_locked(pool, ch, d);
    else if (innocent && ch->seq == d->run.seq)
      innocent_died_locked(pool, ch, d);
    else if (unblamed && ++ch->unblamed > UNBLAMED_MAX)
      unblamed_too_often_locked(pool, ch, d);
    else if (d->clean || innocent || ch->seq != d->run.seq)
      fp__sched_requeue_front_locked(pool, ch);
    else
      chunk_died_locked(pool, ch, d);
  }
}

/* Resets ws for its next process; fills d from what ws knew. */
static void slot_reset(fp_pool *pool, fp__wslot *ws, death *d, int status) {
  d->clean = ws->retiring && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  d->reason = ws->kill_reason ? ws->kill_reason : FP_EWORKER;
  d->kill_seq = ws->kill_seq;
  snprintf(d->violation, sizeof(d->violation), "%s", ws->violation);
  ws->violation[0] = 0;
  d->proto = WIFEXITED(status) && WEXITSTATUS(status) == FP__WEXIT_PROTO &&
             !ws->kill_reason;
  d->lost_results = ws->lost_results;
  ws->lost_results = 0;
  if (ws->ready)
    pool->nready--;
  ws->alive = ws->ready = ws->retiring = ws->finish_told = 0;
  ws->kill_reason = 0;
  ws->kill_seq = 0;
  ws->kill_aimed = 0;
  ws->kill_at_ns = 0;
  ws->sent = 0;
  ws->pid = 0;
  pool->nalive--;
}

void fp__deaths_on_exited(void *ctx, int slot, pid_t pid, int status) {
  fp_pool *pool = ctx;
  fp__wslot *ws = &pool->ws[slot];
  if (!ws->alive || ws->pid != pid)
    return;
  death d = {.slot = slot, .pid = pid};
  memset(&d.run, 0, sizeof(d.run));
  pool->link->ops->running(pool->link, slot, &d.run);
  int was_ready = ws->ready;
  slot_reset(pool, ws, &d, status);
  describe_status(pool, status, d.how, sizeof(d.how));
  settle_chunks_locked(pool, ws, &d);
  /* A worker that died before READY failed to start - unless we killed
   * it (terminate, cancel) or someone else did with SIGKILL: a kill from
   * outside is not a start-up failure of the program. */
  int killed = d.reason != FP_EWORKER || (WIFSIGNALED(status) &&
                                          WTERMSIG(status) == SIGKILL);
  if (!was_ready && !d.clean && !killed && pool->state != FP__TERMINATE &&
      storm_locked(pool)) {
    char msg[FP__MSG_LEN], who[160];
    name_worker(pool, &d, who, sizeof(who));
    snprintf(msg, sizeof(msg),
             "workers keep dying at start (last: %s %s): more than %d in "
             "%gs",
             who, d.how, pool->opts.max_restarts, pool->opts.restart_window);
    snprintf(pool->start_msg, sizeof(pool->start_msg), "%s", msg);
    fp__deaths_break_locked(pool, FP_ESTORM, msg);
  }
  if (want_workers(pool)) {
    fp__deaths_spawn_locked(pool, ws);
    ws->restarts += ws->spawning; /* asked for: the link can make one */
  }
  pthread_cond_broadcast(&pool->cond);
}

void fp__deaths_on_started(void *ctx, int slot, pid_t pid) {
  fp_pool *pool = ctx;
  fp__wslot *ws = &pool->ws[slot];
  ws->spawning = 0;
  ws->alive = 1;
  ws->pid = pid;
  if (pool->state == FP__TERMINATE)
    fp__sched_kill_locked(pool, ws, FP_ECANCELED, 0, SIGKILL);
}

/* A slot whose worker could not be started (descriptors or processes
 * exhausted, say) while other workers run is tried again this much later,
 * from the tick: the pool runs on with fewer workers meanwhile instead of
 * forking in a tight loop. */
#define RESPAWN_DELAY_NS 100000000

void fp__deaths_on_start_failed(void *ctx, int slot, int err) {
  fp_pool *pool = ctx;
  fp__wslot *ws = &pool->ws[slot];
  if (!ws->spawning)
    return;
  ws->spawning = 0;
  pool->nalive--;
  if (pool->start_err == 0)
    pool->start_err = err;
  char msg[FP__MSG_LEN];
  /* The fork server's socketpair() or fork() failed: errno. Running out
   * of descriptors can only be the socket pair's. */
  if (err == -EMFILE || err == -ENFILE)
    snprintf(msg, sizeof(msg),
             "cannot start a worker: no descriptor for its socket: %s (a "
             "descriptor limit: RLIMIT_NOFILE?)",
             strerror(-err));
  else if (err < 0 && err > -4000)
    snprintf(msg, sizeof(msg), "cannot start a worker: fork() failed: %s%s",
             strerror(-err),
             err == -EAGAIN ? " (a process limit: RLIMIT_NPROC?)" : "");
  else
    snprintf(msg, sizeof(msg), "cannot start a worker: %s (%s)",
             fp_err_name(err), fp_strerror(err));
  snprintf(pool->start_msg, sizeof(pool->start_msg), "%s", msg);
  pthread_cond_broadcast(&pool->cond);
  if (pool->starting || !want_workers(pool))
    return; /* fp_pool_new fails with err */
  if (pool->nready > 0)
    ws->respawn_at_ns = fp__now_ns() + RESPAWN_DELAY_NS;
  else if (storm_locked(pool))
    fp__deaths_break_locked(pool, FP_ESTORM, msg);
  else
    fp__deaths_spawn_locked(pool, ws);
}

void fp__deaths_on_lost(void *ctx, const char *why) {
  fp_pool *pool = ctx;
  pool->link_lost = 1;
  snprintf(pool->start_msg, sizeof(pool->start_msg), "%s", why);
  /* Broken even when idle: new work could never run. */
  if (pool->state != FP__TERMINATE)
    fp__deaths_break_locked(pool, FP_EWORKER, why);
  pthread_cond_broadcast(&pool->cond);
}

/* ---- time limits ------------------------------------------------------------ */

int fp__deaths_need_tick_locked(fp_pool *pool) {
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    if (ws->kill_at_ns || ws->respawn_at_ns)
      return 1;
    for (int k = 0; k < ws->ninflight; k++)
      if (ws->inflight[k]->job->timeout > 0)
        return 1;
  }
  return fp__sched_steal_pending_locked(pool); /* its dispatch steals */
}

/* SIGTERM to a worker whose running item is over its time limit. */
static void check_time_limit(fp_pool *pool, fp__wslot *ws, int64_t now) {
  if (ws->ninflight == 0 || ws->kill_reason)
    return;
  fp__chunk *ch = ws->inflight[0];
  int64_t limit = fp__seconds_to_ns(ch->job->timeout);
  fp__running run;
  if (limit <= 0 || limit == FP__NS_FOREVER ||
      pool->link->ops->running(pool->link, ws->index, &run) != 0 ||
      run.seq != ch->seq)
    return;
  if (run.started_ns > 0 && now - run.started_ns > limit)
    fp__sched_kill_locked(pool, ws, FP_ETIMEDOUT, ch->seq, SIGTERM);
}

int fp__deaths_tick_locked(fp_pool *pool) {
  fp__assert_locked(pool);
  int64_t now = fp__now_ns();
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    if (ws->respawn_at_ns && now >= ws->respawn_at_ns) {
      ws->respawn_at_ns = 0;
      if (want_workers(pool))
        fp__deaths_spawn_locked(pool, ws);
    }
    if (!ws->alive)
      continue;
    if (ws->kill_at_ns && now >= ws->kill_at_ns) {
      pool->link->ops->kill(pool->link, ws->index, SIGKILL, 0);
      ws->kill_at_ns = INT64_MAX; /* SIGKILL sent; wait for exited() */
      continue;
    }
    check_time_limit(pool, ws, now);
  }
  return fp__deaths_need_tick_locked(pool);
}
