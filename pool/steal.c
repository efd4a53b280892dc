/* SPDX-License-Identifier: MIT */
/* steal.c - taking back chunks queued behind a long one.
 *
 * Short chunks are queued ahead on each worker (sched.c, queue_depth), so
 * a worker never waits for the master. The price is head-of-line waiting:
 * a chunk queued behind one that turns out long waits for it, while
 * another worker may sit idle. CPython's Pool has no such wait (its
 * workers take tasks from one shared queue as they free up), and neither
 * should we: when a worker idles with nothing pending, the chunks that a
 * worker holds behind a head chunk running for longer than usual are
 * taken back and dispatched again, the way a work-stealing scheduler
 * moves work from a busy thread's deque to an idle one.
 *
 * Taking back must never let a chunk run twice. The link's recall op
 * says "it will not run there" only when the worker has provably not
 * begun it (link.h). The worker still holds the frame, and will answer it
 * with an empty RESULT when it gets there, so its place in the worker's
 * in-flight list goes to a placeholder: a chunk of pool->recalled, a job
 * finished from the start, which every path drops as it drops a canceled
 * job's chunk (its result, its worker's death, the pool's end). The real
 * chunk gets a new seq and goes back to the front of the queue.
 */
#include "pool/pool_int.h"

#include <stdlib.h>

/* A head chunk held this long, and twice the usual service time, is
 * "longer than usual": below that, taking chunks back would only trade
 * one short wait for the placeholders' round trips. */
#define STEAL_MIN_NS 1000000

/* A chunk the worker holds that could be taken back: neither its head
 * (which it may be running) nor a placeholder nor a chunk of a job that
 * has ended (a cancel's skip mark may be on it). */
static int recallable(const fp_pool *pool, const fp__chunk *ch) {
  return ch->job != &pool->recalled && !ch->job->finished;
}

/* A worker with chunks to take back: alive, not being killed (its death
 * gives its chunks back anyway), holding recallable chunks behind its
 * head. */
static int holds_queued(const fp_pool *pool, const fp__wslot *ws) {
  if (!ws->alive || ws->kill_reason)
    return 0;
  for (int k = ws->ninflight - 1; k >= 1; k--) /* the tail, usually */
    if (recallable(pool, ws->inflight[k]))
      return 1;
  return 0;
}

fp__wslot *fp__steal_victim_locked(fp_pool *pool, int stuck_only) {
  int64_t now = 0; /* read only when needed: this runs at every dispatch */
  int64_t after =
      2 * pool->ewma_ns > STEAL_MIN_NS ? 2 * pool->ewma_ns : STEAL_MIN_NS;
  fp__wslot *best = NULL;
  if (pool->link->ops->recall == NULL)
    return NULL;
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    if (!holds_queued(pool, ws))
      continue;
    if (stuck_only && now == 0)
      now = fp__now_ns();
    if (stuck_only && now - ws->last_done_ns < after)
      continue;
    if (best == NULL || ws->last_done_ns < best->last_done_ns)
      best = ws; /* its queue has waited longest */
  }
  return best;
}

/* Takes chunk k back from ws, leaving a placeholder in its place.
 * Returns 1 when it is back in the caller's hands (not yet queued). */
static int recall_one(fp_pool *pool, fp__wslot *ws, int k) {
  fp__chunk *ch = ws->inflight[k];
  fp__chunk *ph = calloc(1, sizeof(*ph));
  if (ph == NULL)
    return 0; /* it stays where it is, and runs there */
  if (pool->link->ops->recall(pool->link, ws->index, ch->seq, ch->nth) != 0) {
    free(ph);
    return 0; /* begun (or finished): everything before it too */
  }
  ph->job = &pool->recalled;
  ph->seq = ch->seq;
  ph->nth = ch->nth;
  ph->state = FP__CH_SENT;
  ph->heap = 1;
  pool->recalled.travelling++;
  ws->inflight[k] = ph;
  ch->job->travelling--;
  ch->seq = ++pool->next_seq; /* the old one is the placeholder's */
  return 1;
}

int fp__steal_recall_locked(fp_pool *pool, fp__wslot *ws, fp__chunk **out) {
  /* From the tail: the worker begins its chunks in order, so once one is
   * found begun, so are all before it. */
  int n = 0;
  for (int k = ws->ninflight - 1; k >= 1; k--) {
    fp__chunk *ch = ws->inflight[k];
    if (!recallable(pool, ch))
      continue;
    if (!recall_one(pool, ws, k))
      break;
    out[n++] = ch;
  }
  return n;
}
