/* SPDX-License-Identifier: MIT */
/* sched.c - the scheduler: the pending queue, dispatch, results coming in.
 *
 * Work flows as chunks: a job (one API call) is cut into chunks that wait
 * in the pending queue until fp__sched_dispatch_locked() sends them to
 * workers through the link. A worker holds one chunk when chunks are long
 * (20 ms or more), so long tasks balance dynamically across workers as
 * with CPython's shared task queue, and about 1 ms of work (2 to 16
 * chunks, FP__LINK_MAX_BATCH) when they are short, so a worker never idles
 * waiting for the master.
 *
 * Dispatch may run on a user thread (submission) or on the pool thread
 * (after a result); both hold pool->mu. A result frame arrives from the
 * link (fp__sched_on_result), is checked, taken off its worker, and handed
 * to job.c, which does everything else; nothing here calls back up.
 */
#include "pool/pool_int.h"
#include "pool/spin.h"
#include "ipc/wire/alloc.h"

#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EWMA_PREFETCH_NS 20000000 /* queue ahead below 20 ms per chunk */

#define QUEUE_AHEAD_NS 1000000    /* ... about this much work per worker */

/* ---- pending queue ---------------------------------------------------------- */

void fp__sched_enqueue_locked(fp_pool *pool, fp__chunk *ch) {
  fp__assert_locked(pool);
  ch->state = FP__CH_PENDING;
  ch->qnext = NULL;
  ch->qprev = pool->qtail;
  if (pool->qtail)
    pool->qtail->qnext = ch;
  else
    pool->qhead = ch;
  pool->qtail = ch;
  pool->npending++;
}

void fp__sched_requeue_front_locked(fp_pool *pool, fp__chunk *ch) {
  ch->state = FP__CH_PENDING;
  ch->qprev = NULL;
  ch->qnext = pool->qhead;
  if (pool->qhead)
    pool->qhead->qprev = ch;
  else
    pool->qtail = ch;
  pool->qhead = ch;
  pool->npending++;
}

static void dequeue_locked(fp_pool *pool, fp__chunk *ch) {
  if (ch->qprev)
    ch->qprev->qnext = ch->qnext;
  else
    pool->qhead = ch->qnext;
  if (ch->qnext)
    ch->qnext->qprev = ch->qprev;
  else
    pool->qtail = ch->qprev;
  ch->qprev = ch->qnext = NULL;
  pool->npending--;
}

/* ---- killing ----------------------------------------------------------------- */

void fp__sched_kill_locked(fp_pool *pool, fp__wslot *ws, int reason,
                           uint64_t seq, int sig) {
  fp__assert_locked(pool);
  if (!ws->alive)
    return;
  if (ws->kill_reason == 0) {
    ws->kill_reason = reason;
    ws->kill_seq = seq;
  }
  if (sig == SIGTERM && ws->kill_at_ns == 0) {
    ws->kill_at_ns = fp__deadline_ns(pool->opts.kill_grace); /* may be
                                                  FP__NS_FOREVER: no SIGKILL */
    if (!fp__on_pool_thread(pool))
      fp__pool_wake(pool); /* the tick escalates to SIGKILL */
  }
  /* A SIGTERM for one chunk (a time limit, a cancel) is aimed at it: the
   * worker may have finished it and started another job's chunk before
   * the signal arrives (link.h, kill). */
  int aimed = sig == SIGTERM && seq != 0 && seq == ws->kill_seq &&
              (reason == FP_ETIMEDOUT || reason == FP_ECANCELED) &&
              pool->link->ops->kill_aims;
  ws->kill_aimed = aimed;
  pool->link->ops->kill(pool->link, ws->index, sig, aimed ? seq : 0);
}

/* ---- sending ------------------------------------------------------------ */

/* The link could not send the chunks ws holds from `first` on (their
 * items cannot be read, say: -EFAULT) and killed the worker, whose stream
 * is no longer usable. Those chunks fail with the error - sending them
 * again would fail again - and the worker's other chunks go back to the
 * queue when its death is reported (kill reason FP_EPIPE: innocent). */
/* Fails chunk ch, which never reached its worker (taken off it already):
 * every item gets err and msg; a finished job's chunk is just dropped. */
static void fail_never_sent_locked(fp_pool *pool, fp__chunk *ch, int err,
                                   const char *msg) {
  ch->job->travelling--;
  if (ch->job->finished)
    fp__chunk_orphan_locked(ch);
  else
    fp__chunk_crashed_locked(&pool->jobs, ch, err, -1, msg);
}

static void fail_unsent_locked(fp_pool *pool, fp__wslot *ws, int first,
                               int err) {
  char msg[FP__MSG_LEN];
  ws->kill_reason = FP_EPIPE;
  ws->kill_seq = 0;
  ws->kill_aimed = 0;
  while (ws->ninflight > first) {
    fp__chunk *ch = ws->inflight[--ws->ninflight];
    snprintf(msg, sizeof(msg),
             "item %lld: its task could not be sent to worker %d: %s (%s); "
             "is its input memory still readable?",
             (long long)ch->start, ws->index, fp_err_name(err),
             fp_strerror(err));
    fail_never_sent_locked(pool, ch, err, msg);
  }
}

/* The link could not read the items of ws's chunk `bad` (the caller
 * unmapped or protected them) and sent neither it nor those after it; the
 * worker is untouched. That chunk fails with the error; the ones after it
 * go back to the front of the queue, in order. */
static void unreadable_locked(fp_pool *pool, fp__wslot *ws, int bad, int err) {
  char msg[FP__MSG_LEN];
  while (ws->ninflight > bad + 1) {
    fp__chunk *ch = ws->inflight[--ws->ninflight];
    ch->job->travelling--;
    ws->sent--;
    fp__sched_requeue_front_locked(pool, ch);
  }
  fp__chunk *ch = ws->inflight[--ws->ninflight];
  ws->sent--;
  snprintf(msg, sizeof(msg),
           "item %lld: its input could not be read: %s (%s); is its memory "
           "still mapped and readable?",
           (long long)ch->start, fp_err_name(err), fp_strerror(err));
  fail_never_sent_locked(pool, ch, err, msg);
}

/* Writes the chunks assigned to ws since `first` with one link send.
 * Returns 1 when some were left unsent (unreadable_locked): the worker may
 * then have nothing to do, and no result of its would come back to
 * dispatch the queue, so the caller dispatches again. */
static int send_new_locked(fp_pool *pool, fp__wslot *ws, int first) {
  fp__task_out t[FP__LINK_MAX_BATCH];
  int n = ws->ninflight - first;
  for (int i = 0; i < n; i++) {
    fp__chunk *ch = ws->inflight[first + i];
    fp__job *job = ch->job;
    fp__task_hdr *h = &t[i].hdr;
    memset(h, 0, sizeof(*h));
    h->type = FP__MSG_TASK;
    h->wire = job->wire;
    h->flags = (job->timeout > 0 ? FP__TASK_TIMED : 0) |
               (job->kind == FP__JOB_APPLY ? FP__TASK_WHOLE : 0);
    h->count = ch->count;
    h->seq = ch->seq;
    h->start = ch->start;
    h->in_size = (uint32_t)job->in_size;
    h->out_size = (uint32_t)job->out_size;
    h->fn = job->fn;
    h->items_len = ch->items_len;
    t[i].items = ch->items;
    t[i].items_len = ch->items_len;
    t[i].borrowed = job->wire == FP__WIRE_FIXED;
  }
  int sent = -1;
  int rc = pool->link->ops->send(pool->link, ws->index, t, n, &sent);
  if (rc != 0 && sent >= 0 && sent < n) {
    unreadable_locked(pool, ws, first + sent, rc);
    return 1;
  }
  if (rc != 0 && rc != FP_EPIPE)
    fail_unsent_locked(pool, ws, first, rc);
  /* FP_EPIPE: the worker is dying; its exited() requeues these chunks. */
  return 0;
}

int fp__sched_can_take(fp_pool *pool, fp__wslot *ws, int depth) {
  if (!ws->alive || !ws->ready || ws->retiring || ws->kill_reason ||
      ws->ninflight > depth)
    return 0;
  if (pool->opts.maxtasksperchild &&
      ws->sent >= pool->opts.maxtasksperchild)
    return 0;
  return pool->link->ops->can_send(pool->link, ws->index);
}

/* How deep each worker's queue may be. Long chunks (or none measured
 * yet): one, so the next chunk goes to whichever worker frees up first, as
 * with CPython's shared queue. Shorter chunks: enough queued work to cover
 * QUEUE_AHEAD_NS, the time a result takes to reach the pool thread and the
 * next chunk to come back (a cross-CPU wake-up each way costs tens of
 * microseconds on small VMs); between 2 and FP__LINK_MAX_BATCH, or exactly
 * `inflight` when the user set it. Every thread that dispatches fills the
 * queues that deep, a submitting one too: a chunk written to the task ring
 * of a worker that is awake costs no system call, and a worker whose queue
 * never runs dry never sleeps, so it needs no wake-up either. */
static int queue_depth(fp_pool *pool) {
  if (pool->ewma_ns <= 0 || pool->ewma_ns >= EWMA_PREFETCH_NS)
    return 1;
  if (pool->inflight > 0)
    return pool->inflight;
  int64_t d = 1 + (QUEUE_AHEAD_NS + pool->ewma_ns - 1) / pool->ewma_ns;
  return d < 2 ? 2 : d > FP__LINK_MAX_BATCH ? FP__LINK_MAX_BATCH : (int)d;
}

/* Where dispatch starts looking: the idle worker that was busy last, which
 * is the likeliest to be still awake (a link may let it spin for a while
 * before it sleeps), so a trickle of calls keeps one worker warm instead of
 * waking each in turn; with no idle worker, round robin. */
static int first_worker(const fp_pool *pool) {
  int best = pool->rr;
  int64_t at = -1;
  for (int k = 0; k < pool->nworkers; k++) {
    const fp__wslot *ws = &pool->ws[k];
    if (ws->alive && ws->ready && ws->ninflight == 0 &&
        ws->last_done_ns > at) {
      at = ws->last_done_ns;
      best = k;
    }
  }
  return best;
}

/* The shallowest level at which a worker could take a chunk: no worker
 * takes one at a level below its queue's length, so the levels below the
 * shortest queue assign nothing. With every queue full (a stream of
 * calls), starting there skips the whole assignment loop. */
static int first_depth(const fp_pool *pool) {
  int depth = INT_MAX;
  for (int k = 0; k < pool->nworkers; k++) {
    const fp__wslot *ws = &pool->ws[k];
    if (ws->alive && ws->ready && ws->ninflight < depth)
      depth = ws->ninflight;
  }
  return depth;
}

static int dispatch_once_locked(fp_pool *pool);
static int steal_locked(fp_pool *pool);

/* Dispatches until no send left chunks unsent (send_new_locked): each
 * round that does fails at least one chunk, so this ends. */
void fp__sched_dispatch_locked(fp_pool *pool) {
  fp__assert_locked(pool);
  do {
    while (dispatch_once_locked(pool)) {
    }
  } while (pool->qhead == NULL && steal_locked(pool));
  fp__pool_need_poke_locked(pool);
}

/* One round of assignments and sends; 1 when a send left chunks unsent. */
static int dispatch_once_locked(fp_pool *pool) {
  if (pool->qhead == NULL || pool->state == FP__TERMINATE)
    return 0;
  int maxdepth = queue_depth(pool), first[pool->nworkers];
  int sent_timed = 0, start = first_worker(pool);
  for (int k = 0; k < pool->nworkers; k++)
    first[k] = pool->ws[k].ninflight;
  /* Assign level by level, idle workers first; then write each worker's
   * new chunks with one send. */
  for (int depth = first_depth(pool); depth < maxdepth && pool->qhead;
       depth++) {
    for (int k = 0, i = start; k < pool->nworkers && pool->qhead;
         k++, i = i + 1 == pool->nworkers ? 0 : i + 1) {
      fp__wslot *ws = &pool->ws[i];
      if (!fp__sched_can_take(pool, ws, depth))
        continue;
      fp__chunk *ch = pool->qhead;
      dequeue_locked(pool, ch);
      ch->state = FP__CH_SENT;
      ch->job->travelling++;
      ws->inflight[ws->ninflight++] = ch;
      ch->nth = ++ws->sent;
      sent_timed |= ch->job->timeout > 0;
      if (ws->ninflight == 1)
        ws->last_done_ns = fp__now_ns();
    }
  }
  int unsent = 0;
  for (int k = 0; k < pool->nworkers; k++)
    if (pool->ws[k].ninflight > first[k])
      unsent |= send_new_locked(pool, &pool->ws[k], first[k]);
  pool->rr = (pool->rr + 1) % pool->nworkers;
  if (sent_timed && !pool->tick_on && !fp__on_pool_thread(pool))
    fp__pool_wake(pool); /* let the loop arm the tick for time limits */
  return unsent;
}

/* ---- taking chunks back (steal.c) --------------------------------------- */

static int any_idle(fp_pool *pool) {
  for (int i = 0; i < pool->nworkers; i++)
    if (pool->ws[i].ninflight == 0 && fp__sched_can_take(pool, &pool->ws[i], 0))
      return 1;
  return 0;
}

int fp__sched_steal_pending_locked(fp_pool *pool) {
  /* Cheapest first: usually no worker holds two chunks. */
  return pool->qhead == NULL && pool->state != FP__TERMINATE &&
         fp__steal_victim_locked(pool, 0) != NULL && any_idle(pool);
}

/* With nothing pending and a worker idle, takes back the chunks queued
 * behind a stuck head chunk and queues them at the front, in order, for
 * the next dispatch round. Returns 1 when it queued any. */
static int steal_locked(fp_pool *pool) {
  fp__chunk *got[FP__LINK_MAX_BATCH];
  if (!fp__sched_steal_pending_locked(pool))
    return 0;
  fp__wslot *ws = fp__steal_victim_locked(pool, 1);
  int n = ws != NULL ? fp__steal_recall_locked(pool, ws, got) : 0;
  for (int k = 0; k < n; k++) /* tail first: the front keeps the order */
    fp__sched_requeue_front_locked(pool, got[k]);
  return n > 0;
}

/* ---- the end ------------------------------------------------------------- */

void fp__sched_drop_all_locked(fp_pool *pool) {
  fp__assert_locked(pool);
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    while (ws->ninflight > 0) {
      fp__chunk *ch = ws->inflight[--ws->ninflight];
      /* Its job is finished (a no-op then); failed while the chunk still
       * counts as travelling, so the job outlives this line. */
      fp__job_fail_locked(&pool->jobs, ch->job, FP_ECANCELED, -1,
                          "the pool ended");
      ch->job->travelling--;
      fp__chunk_orphan_locked(ch);
    }
  }
}

/* ---- canceling ------------------------------------------------------------- */

/* The chunks of a canceled job that worker ws holds: those it has not
 * started are answered without running (link op skip), a running one has
 * its worker killed and replaced when kill_running. Killing a worker for a
 * chunk it merely holds behind another job's would fail that innocent job,
 * so without the skip op such chunks run and their results are dropped. */
static void stop_sent_locked(fp_pool *pool, fp__wslot *ws, fp__job *job,
                             int kill_running) {
  const fp__link_ops *ops = pool->link->ops;
  for (int k = 0; k < ws->ninflight; k++) {
    fp__chunk *ch = ws->inflight[k];
    if (ch->job != job)
      continue;
    int running = ops->skip != NULL ? ops->skip(pool->link, ws->index, ch->seq)
                                    : k == 0;
    if (running && kill_running && !ws->kill_reason &&
        pool->state != FP__TERMINATE)
      fp__sched_kill_locked(pool, ws, FP_ECANCELED, ch->seq, SIGTERM);
  }
}

void fp__sched_cancel_job_locked(fp_pool *pool, fp__job *job, int code,
                                 int64_t index, const char *msg,
                                 int kill_running) {
  fp__assert_locked(pool);
  if (job->finished)
    return;
  /* Queued chunks of the job never run. */
  for (fp__chunk *ch = pool->qhead, *next; ch != NULL; ch = next) {
    next = ch->qnext;
    if (ch->job == job) {
      dequeue_locked(pool, ch);
      ch->state = FP__CH_DONE;
      if (ch->heap)
        fp__chunk_free(ch); /* iterator chunks are not in a job array */
    }
  }
  for (int i = 0; i < pool->nworkers; i++)
    stop_sent_locked(pool, &pool->ws[i], job, kill_running);
  fp__job_fail_locked(&pool->jobs, job, code, index, msg);
}

/* ---- a caller's poll ---------------------------------------------------- */

int fp__sched_poll_leave(fp_pool *pool) {
  fp__assert_locked(pool);
  int got = 0, rest = 0;
  /* Once the loop is closing, the link's handles are going (a joined
   * pool's link is freed): the pool thread delivers what is left. */
  if (!pool->stopping && pool->link->ops->poll != NULL &&
      (got = pool->link->ops->poll(pool->link)) > 0)
    fp__sched_dispatch_locked(pool); /* the freed workers' next chunks */
  fp_result *plain = fp__jobset_take_plain_locked(&pool->jobs, &rest);
  /* Callbacks, and progress callbacks that came due here, run on the pool
   * thread. And a closed pool ends from the pool thread's loop (pool.c,
   * maybe_shutdown_locked): when the last results came in here, the
   * worker sent no kick, so wake it to see. */
  if (rest || (got > 0 && pool->state != FP__RUN))
    fp__pool_wake(pool);
  fp__pool_unlock_waking(pool);
  fp__results_deliver(plain); /* no callbacks: any thread, no lock */
  return got;
}

/* Longest a caller polls after the last progress before it sleeps. */
#define POLL_SPIN_NS 50000

void fp__sched_poll_spin(fp_pool *pool, int (*done)(void *), void *arg) {
  fp__link *l = pool->link;
  if (!l->ops->spin_begin(l))
    return;
  int64_t now = fp__now_ns(), until = now + POLL_SPIN_NS;
  fp__spinner sp;
  fp__spinner_start(&sp, now);
  while (!done(arg)) {
    int st = l->ops->spin_check(l);
    if (st < 0)
      break;
    if (st > 0 && fp__pool_trylock(pool) == 0) {
      if (fp__sched_poll_leave(pool) > 0)
        until = fp__now_ns() + POLL_SPIN_NS; /* progress: keep going */
      continue;
    }
    for (int i = 0; i < 16; i++)
      fp__cpu_relax();
    if ((now = fp__now_ns()) >= until)
      break;
    fp__spinner_tick(&sp, now);
  }
  if (l->ops->spin_end(l)) {
    /* Results a worker did not kick for while we polled. */
    fp__pool_lock(pool);
    fp__pool_wake(pool);
    fp__pool_unlock(pool);
  }
}

/* ---- events from the link ------------------------------------------------- */

void fp__sched_on_ready(void *ctx, int slot) {
  fp_pool *pool = ctx;
  fp__wslot *ws = &pool->ws[slot];
  if (ws->alive && !ws->ready) {
    ws->ready = 1;
    pool->nready++;
    pthread_cond_broadcast(&pool->cond);
  }
}

void fp__sched_on_retired(void *ctx, int slot) {
  fp_pool *pool = ctx;
  fp__wslot *ws = &pool->ws[slot];
  /* Only a worker that reached maxtasksperchild and holds nothing may
   * retire; anything else is a forged frame (a task writing on its
   * worker's socket), which would leave the worker idle forever. */
  if (pool->opts.maxtasksperchild == 0 ||
      ws->sent < pool->opts.maxtasksperchild || ws->ninflight != 0) {
    fp__sched_on_violation(ctx, slot, "RETIRE before maxtasksperchild");
    return;
  }
  ws->retiring = 1;
}

void fp__sched_on_violation(void *ctx, int slot, const char *what) {
  fp_pool *pool = ctx;
  fp__wslot *ws = &pool->ws[slot];
  if (ws->alive && ws->kill_reason == 0) /* the reason the kill will give */
    snprintf(ws->violation, sizeof(ws->violation), "%s", what);
  fp__sched_kill_locked(pool, ws, FP_EPROTO, 0, SIGKILL);
}

void fp__sched_on_no_memory(void *ctx, int slot) {
  fp_pool *pool = ctx;
  /* Apart from the kill's reason, which may already be a time limit's
   * or a cancel's: chunks whose results are lost must not be requeued
   * as innocent ones are (deaths.c). */
  pool->ws[slot].lost_results = 1;
  fp__sched_kill_locked(pool, &pool->ws[slot], FP_ENOMEM, 0, SIGKILL);
}

/* Finds ws's in-flight chunk with id seq, or -1. Results come in order
 * per path, but a large one (socket) may be overtaken by a later small
 * one (ring): search by id. */
static int find_inflight(const fp__wslot *ws, uint64_t seq) {
  for (int k = 0; k < ws->ninflight; k++)
    if (ws->inflight[k]->seq == seq)
      return k;
  return -1;
}

/* Takes chunk k off ws and updates the service-time estimate. */
static fp__chunk *take_inflight(fp_pool *pool, fp__wslot *ws, int k) {
  fp__chunk *ch = ws->inflight[k];
  memmove(ws->inflight + k, ws->inflight + k + 1,
          sizeof(ws->inflight[0]) * (size_t)(ws->ninflight - k - 1));
  ws->ninflight--;
  ch->job->travelling--;
  int64_t now = fp__now_ns();
  int64_t took = now - ws->last_done_ns;
  ws->last_done_ns = now;
  if (ch->job == &pool->recalled)
    return ch; /* a placeholder (steal.c): nothing ran */
  pool->ewma_ns = pool->ewma_ns ? (pool->ewma_ns * 7 + took) / 8 : took;
  ws->tasks++;
  return ch;
}

/* The chunk a SIGTERM was aimed at (a time limit, a cancel) came back
 * finished: the worker ignores the signal if it comes now (link.h, kill),
 * so there is nothing to escalate to SIGKILL, and the worker lives on. */
static void disarm_locked(fp__wslot *ws, const fp__chunk *ch) {
  if (ws->kill_seq == ch->seq && ws->kill_aimed) {
    ws->kill_reason = 0;
    ws->kill_seq = 0;
    ws->kill_at_ns = 0;
    ws->kill_aimed = 0;
  }
}

/* A result's parts as the scheduler checks and takes them: in the
 * master's own memory (see own_result). */
typedef struct result_parts {
  const unsigned char *errs, *data;
  size_t errs_len, len;
  unsigned char *errs_copy; /* malloc'd, or NULL */
  fp__rbuf data_copy;       /* fp__alloc'd values, or {NULL, 0} */
  unsigned char small[FP__INLINE_BYTES];
} result_parts;

/* Points rp at the error records and values of a RESULT payload, copying
 * them first when they may lie in shared memory (no `keep`: a result
 * ring), where a thread of the worker could change them after the
 * checks. Fixed-size values are not copied: any bytes are valid values
 * there, and they go straight to the caller's array. Returns 0 or
 * FP_ENOMEM. */
static int own_result(const fp__chunk *ch, const unsigned char *body,
                      size_t errs_len, size_t len, int shared,
                      result_parts *rp) {
  memset(rp, 0, offsetof(result_parts, small));
  rp->errs = body;
  rp->errs_len = errs_len;
  rp->data = body + errs_len;
  rp->len = len;
  if (!shared)
    return 0;
  if (errs_len > 0) {
    if ((rp->errs_copy = malloc(errs_len)) == NULL)
      return FP_ENOMEM;
    rp->errs = memcpy(rp->errs_copy, body, errs_len);
  }
  if (ch->job->wire == FP__WIRE_FIXED || len == 0)
    return 0;
  unsigned char *d = rp->small;
  if (len > sizeof(rp->small)) {
    if ((d = fp__alloc(len)) == NULL)
      return FP_ENOMEM;
    rp->data_copy = (fp__rbuf){d, len}; /* take_values keeps it */
  }
  rp->data = memcpy(d, body + errs_len, len);
  return 0;
}

static void release_result(result_parts *rp) {
  free(rp->errs_copy);
  fp__free(rp->data_copy.base, rp->data_copy.cap); /* NULL when kept */
}

void fp__sched_on_result(void *ctx, int slot, const unsigned char *payload,
                         size_t len, fp__rbuf *keep) {
  fp_pool *pool = ctx;
  fp__wslot *ws = &pool->ws[slot];
  fp__res_hdr rh;
  result_parts rp;
  int k;
  if (len < sizeof(rh))
    goto bad;
  memcpy(&rh, payload, sizeof(rh));
  if ((k = find_inflight(ws, rh.seq)) < 0)
    goto bad;
  fp__chunk *ch = ws->inflight[k];
  size_t rest = len - sizeof(rh);
  disarm_locked(ws, ch);
  if (ch->job->finished) {
    /* Canceled while this chunk travelled: drop it. */
    fp__chunk_orphan_locked(take_inflight(pool, ws, k));
    return;
  }
  if (rh.count != ch->count || rh.errs_len > rest)
    goto bad;
  if (own_result(ch, payload + sizeof(rh), rh.errs_len, rest - rh.errs_len,
                 keep == NULL, &rp) != 0) {
    release_result(&rp);
    take_inflight(pool, ws, k);
    char msg[FP__MSG_LEN];
    snprintf(msg, sizeof(msg),
             "item %lld: out of memory in the master to receive its chunk's "
             "results; the chunk ran",
             (long long)ch->start);
    fp__chunk_crashed_locked(&pool->jobs, ch, FP_ENOMEM, -1, msg);
    return;
  }
  if (fp__chunk_check_results(ch, rp.data, rp.len, rp.errs, rp.errs_len,
                              rh.nerr) != 0) {
    release_result(&rp);
    goto bad;
  }
  take_inflight(pool, ws, k);
  fp__chunk_results_locked(&pool->jobs, ch, rp.data, rp.len, rp.errs, rh.nerr,
                           rp.data_copy.base != NULL ? &rp.data_copy : keep);
  release_result(&rp);
  return;
bad:
  /* A worker that speaks nonsense is killed; its death fails its chunks. */
  fp__sched_on_violation(pool, slot, "malformed RESULT");
}
