/* SPDX-License-Identifier: MIT */
/* iter.c - iterators (CPython's IMapIterator): next, free, the producer.
 *
 * An iterator owns the chunks job.c hands it. An ordered iterator keeps
 * completed chunks in a ring indexed by chunk number; an unordered one in
 * completion order. fp_iter_next() hands out one item at a time from the
 * current chunk. A producer-fed iterator never has more than `readahead`
 * items produced and not yet consumed, so its memory is bounded however
 * long the input is: the producer runs on the consumer's thread, inside
 * fp_iter_next(), without any lock held.
 */
#include "pool/pool_int.h"
#include "ipc/wire/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether this process is a forked copy of the one that made it: no
 * thread of the parent exists here to release a lock it held at the fork
 * (it->mu, it->pmu, the pool's), so a copy takes none of them. */
static int iter_in_copy(const fp_iter *it) {
  return fp__made_elsewhere(it->fork_gen);
}

fp_iter *fp__iter_new(fp_pool *pool, int ordered) {
  fp_iter *it = calloc(1, sizeof(*it));
  if (it == NULL)
    return NULL;
  pthread_mutex_init(&it->mu, NULL);
  pthread_mutex_init(&it->pmu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&it->cond, &ca);
  pthread_condattr_destroy(&ca);
  it->refs = 2;
  it->ordered = ordered;
  it->pool = pool;
  it->owner = pool;
  it->fork_gen = pool->fork_gen; /* copies submit nothing: the same */
  fp_writer_init(&it->pitem);
  it->last_index = -1;
  return it;
}

/* ---- the producer ------------------------------------------------------- */

/* The producers running on this thread, innermost first: a producer may
 * read another iterator, whose producer then runs nested. Each frame
 * lives on call_producer's stack. */
typedef struct producer_frame {
  const fp_iter *it;
  const fp_pool *owner;
  struct producer_frame *outer;
} producer_frame;

static __thread producer_frame *tl_producers;

int fp__producer_running(const fp_pool *pool, const fp_iter *it) {
  for (const producer_frame *f = tl_producers; f != NULL; f = f->outer)
    if ((it != NULL && f->it == it) || (pool != NULL && f->owner == pool))
      return 1;
  return 0;
}

/* Calls its producer, noting on this thread that it runs. */
static int call_producer(fp_iter *it, fp_writer *w) {
  producer_frame f = {it, it->owner, tl_producers};
  tl_producers = &f;
  int rc = it->producer(it->parg, w);
  tl_producers = f.outer;
  return rc;
}

/* Reads up to `limit` items from the producer into w. Returns 0 (*count
 * items; the producer may have ended) or a negative error. The producer
 * writes each item into a writer of the iterator's, empty at each call,
 * which is then appended to w: whatever it does to that writer, it cannot
 * change the chunk's earlier items (with w itself, a reset followed by a
 * longer write, or bytes overwritten in place, went unnoticed). */
static int produce_chunk(fp_iter *it, fp_writer *w, size_t room, size_t limit,
                         uint32_t *count) {
  fp_writer *item = &it->pitem;
  *count = 0;
  while (*count < limit) {
    fp_writer_reset(item);
    int rc = call_producer(it, item);
    if (rc < 0)
      return rc;
    /* Writing and then saying "end", or returning neither 0 nor 1, breaks
     * the protocol, as does writing anything but one value. */
    if (rc > 1 || (rc == 0 && item->len != 0))
      return FP_EPROTO;
    if (rc == 0) {
      it->producer_done = 1;
      return 0;
    }
    if (item->err || item->depth)
      return FP_EPROTO;
    if (item->len > room)
      return FP_EMSGSIZE;
    /* fp_write_raw takes exactly one well-formed value, and checks it. */
    if ((rc = fp_write_raw(w, item->data, item->len)) != 0)
      return rc == FP_ENOMEM ? rc : FP_EPROTO;
    (*count)++;
    if (w->len > room / 2)
      return 0;
  }
  return 0;
}

/* What a producer error of produce_chunk means. */
static const char *producer_failure(int rc) {
  if (rc == FP_EPROTO)
    return "the imap producer broke the protocol: it must write exactly one "
           "well-formed value and return 1, or write nothing and return 0 (or "
           "return a negative code), and leave what the writer held before "
           "untouched";
  if (rc == FP_EMSGSIZE)
    return "the imap producer wrote an item larger than max_frame allows";
  return "the imap producer failed (returned a negative code)";
}

/* Queues a produced chunk (pool->mu held). Takes w's buffer. */
static void queue_chunk_locked(fp_pool *pool, fp_iter *it, fp__job *job,
                               fp__chunk *ch, fp_writer *w, uint32_t count) {
  ch->job = job;
  ch->number = job->nchunks++;
  ch->start = it->produced;
  ch->count = count;
  ch->owned_items = w->data;
  ch->owned_cap = w->cap;
  ch->items = w->data;
  ch->items_len = w->len;
  ch->seq = ++pool->next_seq;
  job->n_items += count;
  fp__sched_enqueue_locked(pool, ch);
  atomic_fetch_add(&it->produced, (int64_t)count);
}

/* Produces one chunk of at most `limit` items and queues it. Returns 1 to
 * go on, 0 when done, or a negative error that ends the iteration. */
static int fill_one(fp_iter *it, size_t room_bytes, size_t limit) {
  fp__chunk *ch = calloc(1, sizeof(*ch));
  if (ch == NULL)
    return FP_ENOMEM;
  ch->heap = 1;
  fp_writer w;
  fp_writer_init(&w);
  uint32_t count;
  int rc = produce_chunk(it, &w, room_bytes, limit, &count);
  /* The producer ran unlocked: the pool may have ended (and been freed)
   * meanwhile. Pinned under it->mu, as poll_for_next does. */
  pthread_mutex_lock(&it->mu);
  fp_pool *pool = it->pool;
  if (pool != NULL)
    atomic_fetch_add(&pool->spinners, 1);
  pthread_mutex_unlock(&it->mu);
  if (pool == NULL) {
    it->producer_done = 1;
    fp_writer_free(&w);
    free(ch);
    return rc < 0 ? rc : 0;
  }
  fp__pool_lock(pool);
  fp__job *job = it->job;
  if (rc < 0 || job == NULL || job->finished || count == 0) {
    if (rc < 0) {
      it->producer_done = 1;
      if (job)
        fp__sched_cancel_job_locked(pool, job, rc, -1, producer_failure(rc),
                                    1);
    }
    fp_writer_free(&w);
    free(ch);
  } else {
    queue_chunk_locked(pool, it, job, ch, &w, count);
  }
  if (rc >= 0 && job && !job->finished && it->producer_done) {
    job->input_done = 1;
    fp__progress_set_total(job->pg, job->n_items);
    fp__job_maybe_finish_locked(&pool->jobs, job);
  }
  fp__sched_dispatch_locked(pool);
  /* producer_done first: a job that just failed or finished above may
   * have been freed with its last chunk, so job is only looked at while
   * the producer goes on. */
  int more = !it->producer_done && job != NULL && !job->finished;
  fp__pool_unlock_waking(pool);
  atomic_fetch_sub(&pool->spinners, 1);
  return rc < 0 ? rc : more;
}

/* fp__iter_fill with it->pmu held; bounded: 0 for no bound. */
static int fill_locked(fp_iter *it, int bounded) {
  for (;;) {
    pthread_mutex_lock(&it->mu);
    fp_pool *pool = it->pool;
    int64_t consumed = it->consumed;
    int foreign = pool != NULL && fp__pool_foreign(pool);
    size_t room_bytes = pool ? pool->max_frame - FP__FRAME_OVERHEAD : 0;
    pthread_mutex_unlock(&it->mu);
    if (foreign)
      return FP_EINVAL; /* a forked copy: see calls.c job_alloc */
    int64_t room = (int64_t)it->readahead - (it->produced - consumed);
    if (!bounded)
      room = (int64_t)it->chunksize;
    if (it->producer_done || pool == NULL || room <= 0)
      return 0;
    /* A chunk never takes the items produced and not consumed past
     * readahead: a short chunk when a full one would. */
    int rc = fill_one(it, room_bytes,
                      room < (int64_t)it->chunksize ? (size_t)room
                                                    : it->chunksize);
    if (rc <= 0)
      return rc;
  }
}

int fp__iter_fill(fp_iter *it) {
  pthread_mutex_lock(&it->pmu);
  int rc = fill_locked(it, 1);
  pthread_mutex_unlock(&it->pmu);
  return rc;
}

int fp__iter_finish_input(fp_iter *it) {
  /* From inside a producer, the lock is only tried: another thread's
   * producer may hold it while it waits for a lock of this one (each
   * joining the other's pool). */
  if (tl_producers != NULL) {
    if (pthread_mutex_trylock(&it->pmu) != 0)
      return -EBUSY;
  } else {
    pthread_mutex_lock(&it->pmu);
  }
  fill_locked(it, 0); /* an error ends the iteration with it, as always */
  pthread_mutex_unlock(&it->pmu);
  fp__iter_drop_ref(it);
  return 0;
}

void fp__iter_drop_ref(fp_iter *it) {
  pthread_mutex_lock(&it->mu);
  int left = --it->refs;
  pthread_mutex_unlock(&it->mu);
  if (left == 0)
    fp__iter_destroy(it);
}

/* ---- consuming ---------------------------------------------------------- */

/* Takes the next deliverable chunk (it->mu held), or NULL. */
static fp__chunk *next_chunk(fp_iter *it) {
  fp__chunk *ch = NULL;
  if (!it->ordered && it->dhead) {
    ch = it->dhead;
    it->dhead = ch->dnext;
    if (!it->dhead)
      it->dtail = NULL;
    return ch;
  }
  /* Ordered: chunk next_num, which is in the ring -- or in the list, where
   * a chunk goes when the ring could not grow (job.c, iter_take_chunk). */
  for (fp__chunk *prev = NULL, *c = it->dhead; c != NULL;
       prev = c, c = c->dnext) {
    if (c->number != it->next_num)
      continue;
    if (prev != NULL)
      prev->dnext = c->dnext;
    else
      it->dhead = c->dnext;
    if (it->dtail == c)
      it->dtail = prev;
    it->next_num++;
    return c;
  }
  if (it->ordered && it->done_cap) {
    size_t pos = it->next_num & (it->done_cap - 1);
    ch = it->done_by_num[pos];
    if (ch && ch->number == it->next_num) {
      it->done_by_num[pos] = NULL;
      it->next_num++;
      return ch;
    }
  }
  return NULL;
}

/* Hands out the next item of the current chunk (it->mu held): its value in
 * *item and 0, or its failure code. */
static int take_item(fp_iter *it, fp_reader *item) {
  fp__chunk *cur = it->cur;
  int64_t idx = cur->start + it->cur_pos;
  const void *p = NULL;
  size_t len = 0;
  it->cur_pos++;
  it->consumed++;
  it->last_index = idx;
  if (fp_read_span(&it->cur_rd, &p, &len) != 0) {
    p = NULL;
    len = 0;
  }
  while (it->cur_err < cur->nerr && cur->errs[it->cur_err].index < idx)
    it->cur_err++;
  if (it->cur_err < cur->nerr && cur->errs[it->cur_err].index == idx) {
    fp__item_err *e = &cur->errs[it->cur_err];
    if (e->msg != NULL && e->msg[0] != 0)
      snprintf(it->msg, sizeof(it->msg), "%s", e->msg);
    else /* dropped to fit the chunk's results (worker.c) */
      snprintf(it->msg, sizeof(it->msg),
               "item %lld: %s (its message did not fit its chunk's "
               "results)",
               (long long)idx, fp_strerror(e->code));
    fp_reader_init(item, NULL, 0);
    return e->code;
  }
  it->msg[0] = 0; /* the message belongs to the last item returned */
  fp_reader_init(item, p, len);
  return 0;
}

/* Moves to the next completed chunk (it->mu held). Returns 1 when there
 * is one, 0 when none is ready. */
static int advance_chunk(fp_iter *it) {
  if (it->cur != NULL) {
    fp__chunk_free(it->cur);
    it->cur = NULL;
  }
  fp__chunk *ch = next_chunk(it);
  if (ch == NULL)
    return 0;
  it->cur = ch;
  it->cur_pos = 0;
  it->cur_err = 0;
  fp_reader_init(&it->cur_rd, ch->res, ch->res_len);
  return 1;
}

/* The end of the iteration (it->mu held): FP_EOF, or a job-level failure
 * (terminate, producer error), reported once. */
static int finish_code(fp_iter *it) {
  int rc = FP_EOF;
  if (it->final_code) {
    rc = it->final_code;
    snprintf(it->msg, sizeof(it->msg), "%s",
             it->final_msg ? it->final_msg : fp_strerror(rc));
    it->last_index = it->final_index; /* not the last item returned */
    it->final_code = 0;
  }
  return rc;
}

/* A result or the end is waiting (it->mu held). */
/* Whether next_chunk would hand a chunk out (it->mu held): for an ordered
 * iterator only chunk next_num will do, wherever it was filed. */
static int chunk_ready(const fp_iter *it) {
  if (!it->ordered)
    return it->dhead != NULL;
  for (const fp__chunk *c = it->dhead; c != NULL; c = c->dnext)
    if (c->number == it->next_num)
      return 1;
  if (it->done_cap == 0)
    return 0;
  const fp__chunk *ch = it->done_by_num[it->next_num & (it->done_cap - 1)];
  return ch != NULL && ch->number == it->next_num;
}

static int something_ready(fp_iter *it) {
  return it->finished || chunk_ready(it);
}

static int iter_has_next(void *arg) {
  fp_iter *it = arg;
  pthread_mutex_lock(&it->mu);
  int r = something_ready(it);
  pthread_mutex_unlock(&it->mu);
  return r;
}

/* Before sleeping for the next item (it->mu held, and held again on
 * return): spins with the pool's poll, as a result's waiter does
 * (result.c), with the pool pinned so that it outlives the spin. */
static void poll_for_next(fp_iter *it) {
  fp_pool *pool = it->pool; /* set while the job runs (under it->mu) */
  if (pool == NULL || fp__pool_foreign(pool) || fp__on_pool_thread(pool) ||
      pool->link->ops->poll == NULL)
    return;
  atomic_fetch_add(&pool->spinners, 1);
  pthread_mutex_unlock(&it->mu);
  fp__sched_poll_spin(pool, iter_has_next, it);
  atomic_fetch_sub(&pool->spinners, 1);
  pthread_mutex_lock(&it->mu);
}

/* Whether the caller is the thread that delivers results (it->mu held):
 * waiting there for an item would wait for itself, as a result's waiter
 * inside a callback would (result.c). */
static int on_delivering_thread(fp_iter *it) {
  return fp__result_in_callback() != NULL ||
         (it->pool != NULL && fp__on_pool_thread(it->pool));
}

/* Ends fp_iter_next with an item or the end (it->mu held, and released
 * here): an item's outcome sets the thread's last error as a blocking
 * call's does, its message on failure, cleared on success. */
static int delivered(fp_iter *it, int rc) {
  if (rc != 0 && rc != FP_EOF)
    fp__set_last_error(rc, it->msg);
  else if (rc == 0)
    fp__clear_last_error();
  pthread_mutex_unlock(&it->mu);
  return rc;
}

int fp_iter_next(fp_iter *it, fp_reader *item, double timeout) {
  int spun = 0;
  if (it == NULL || item == NULL)
    return fp__refuse(it == NULL ? "NULL iterator" : "NULL item reader");
  if (!fp__timeout_ok(timeout))
    return fp__refuse("the timeout is not a number (NaN)");
  if (iter_in_copy(it))
    return fp__refuse("fp_iter_next in a forked copy of the master: the "
                      "iterator and its results are the parent's");
  if (fp__producer_running(NULL, it))
    return fp__refuse("fp_iter_next from the iterator's own producer: it "
                      "would wait for the item being produced");
  /* A producer error cancels the job; the iteration then hands out what
   * had completed and reports the error once, at its end. */
  if (it->producer && !it->producer_done)
    fp__iter_fill(it);
  int64_t end = timeout > 0 ? fp__deadline_ns(timeout) : FP__NS_FOREVER;
  pthread_mutex_lock(&it->mu);
  for (;;) {
    if (it->cur != NULL && it->cur_pos < it->cur->count) {
      int rc = take_item(it, item);
      return delivered(it, rc);
    }
    if (advance_chunk(it))
      continue;
    if (it->finished) {
      int rc = finish_code(it);
      fp_reader_init(item, NULL, 0);
      return delivered(it, rc);
    }
    if (it->producer && !it->producer_done &&
        it->produced - it->consumed < (int64_t)it->readahead) {
      pthread_mutex_unlock(&it->mu);
      fp__iter_fill(it);
      pthread_mutex_lock(&it->mu);
      continue;
    }
    int expired = timeout == 0;
    if (!expired && on_delivering_thread(it)) {
      pthread_mutex_unlock(&it->mu);
      fp__set_last_error(FP_EINVAL, "blocking fp_iter_next from a callback "
                                    "(pool thread): it would wait for itself");
      return FP_EINVAL;
    }
    if (!expired && !spun) {
      spun = 1;
      poll_for_next(it);
      continue;
    }
    if (!expired && fp__now_ns() >= end)
      expired = !something_ready(it);
    else if (!expired && fp__wait_slice(&it->cond, &it->mu, end) &&
             !something_ready(it))
      fp__pool_nudge(it->pool, &it->mu); /* a slice passed */
    if (expired) {
      pthread_mutex_unlock(&it->mu);
      return FP_EAGAIN; /* not FP_ETIMEDOUT: that is an item's time limit */
    }
  }
}

int64_t fp_iter_index(const fp_iter *it) {
  return it ? it->last_index : -1;
}

const char *fp_iter_error(const fp_iter *it) {
  return it ? it->msg : "";
}

/* Drops every chunk the iterator holds (it->mu held). */
static void drop_chunks(fp_iter *it) {
  fp__chunk_free(it->cur);
  it->cur = NULL;
  for (fp__chunk *ch = it->dhead, *n; ch; ch = n) {
    n = ch->dnext;
    fp__chunk_free(ch);
  }
  it->dhead = it->dtail = NULL;
  for (size_t i = 0; i < it->done_cap; i++) {
    fp__chunk_free(it->done_by_num[i]);
    it->done_by_num[i] = NULL;
  }
}

void fp_iter_free(fp_iter *it) {
  if (it == NULL || iter_in_copy(it))
    return; /* a copy's iterator is the parent's: this copy leaves it */
  if (fp__producer_running(NULL, it)) {
    fp__refuse("fp_iter_free from the iterator's own producer: nothing "
               "freed (end the input by returning 0, then free it)");
    return;
  }
  /* The pool is pinned under it->mu (see result.c stop_job): another
   * thread may be freeing it right now. */
  pthread_mutex_lock(&it->mu);
  fp_pool *pool = it->pool; /* NULL once the job finished */
  if (pool != NULL && fp__pool_foreign(pool))
    pool = NULL;
  if (pool != NULL)
    atomic_fetch_add(&pool->spinners, 1);
  pthread_mutex_unlock(&it->mu);
  if (pool != NULL) {
    fp__pool_lock(pool);
    if (it->job != NULL)
      fp__sched_cancel_job_locked(pool, it->job, FP_ECANCELED, -1,
                                  "the iterator was freed", 1);
    fp__pool_unlock(pool);
    atomic_fetch_sub(&pool->spinners, 1);
  }
  /* No producer call after this returns: the caller may free its state.
   * (A joining thread may be reading the input right now.) */
  pthread_mutex_lock(&it->pmu);
  it->producer_done = 1;
  pthread_mutex_unlock(&it->pmu);
  pthread_mutex_lock(&it->mu);
  drop_chunks(it);
  int left = --it->refs;
  pthread_mutex_unlock(&it->mu);
  if (left == 0)
    fp__iter_destroy(it);
}
