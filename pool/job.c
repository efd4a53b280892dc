/* SPDX-License-Identifier: MIT */
/* job.c - every change of job, chunk, result and iterator state.
 *
 * The scheduler reports each chunk that comes back (or whose worker died)
 * here, and job.c does the rest in one pass: it records the chunk's
 * results and errors, counts it done (the only place that counts), streams
 * a blocking call's results to the caller's writer, hands an iterator its
 * chunk, and, with the job's last chunk, delivers the outcome. Nothing here
 * calls back into the scheduler.
 *
 * A result becomes ready in two steps, as in CPython: the outcome is set
 * under the pool's lock and the result goes on the jobset's done list;
 * then the pool thread, outside the lock, runs its callback and only then
 * marks it ready and wakes waiters - so a thread that returns from
 * fp_result_get() knows the callback has run. A result without callbacks
 * may instead be marked ready by a caller that polls the link
 * (fp__jobset_take_plain_locked): whoever takes it off the done list
 * delivers it, once.
 *
 * A job whose outcome is delivered may still have chunks travelling (a
 * cancel does not wait for them): it is freed with the last of them.
 */
#include "pool/job.h"
#include "ipc/wire/alloc.h"
#include "ipc/wire/forkgen.h"
#include "pool/usermem.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static __thread fp_result *tl_in_callback;
/* The process tl_in_callback was set in: a child forked inside a
 * callback runs none (and may block on pools of its own). */
static __thread uint64_t tl_callback_gen;

fp_result *fp__result_in_callback(void) {
  if (tl_in_callback != NULL && tl_callback_gen != fp__fork_gen())
    tl_in_callback = NULL;
  return tl_in_callback;
}

/* Marks this thread as running callback r (NULL: none); returns the mark
 * it replaces, to put back after. */
static fp_result *enter_callback(fp_result *r) {
  fp_result *saved = fp__result_in_callback();
  tl_in_callback = r;
  tl_callback_gen = fp__fork_gen();
  return saved;
}

/* ---- chunks and jobs ------------------------------------------------------ */

/* Frees a chunk's result buffer (which may be a whole read buffer the
 * chunk took over, see fp__rbuf in link.h). */
static void chunk_drop_res(fp__chunk *ch) {
  if (ch->res_base != NULL)
    fp__free(ch->res_base, ch->res_cap);
  else if (ch->res != ch->res_small)
    fp__free(ch->res, ch->res_len);
  ch->res = ch->res_base = NULL;
  ch->res_len = ch->res_cap = 0;
}

void fp__chunk_free(fp__chunk *ch) {
  if (ch == NULL)
    return;
  chunk_drop_res(ch);
  for (uint32_t i = 0; i < ch->nerr; i++)
    free(ch->errs[i].msg);
  free(ch->errs);
  ch->errs = NULL;
  ch->nerr = 0;
  fp__free(ch->owned_items, ch->owned_cap);
  ch->owned_items = NULL;
  ch->owned_cap = 0;
  if (ch->heap)
    free(ch);
}

int fp__job_new(const void *fn, fp__job **out) {
  fp__job *job = calloc(1, sizeof(*job));
  if (job == NULL)
    return FP_ENOMEM;
  int rc = fp__fnref_make(fn, &job->fn);
  if (rc != 0) {
    free(job);
    return rc;
  }
  job->err_index = -1;
  *out = job;
  return 0;
}

void fp__job_free(fp__job *job) {
  if (job->carr) {
    for (size_t i = 0; i < job->nchunks; i++)
      fp__chunk_free(&job->carr[i]);
    if (job->carr != &job->one)
      free(job->carr);
  }
  if (!job->borrowed && job->input != job->in_small)
    fp__free(job->input, job->input_len);
  free(job->err_msg);
  /* A finished job gave its reporter up (job_finish_locked): one still
   * here belongs to a call that was refused before its job started. */
  fp__progress_discard(job->pg);
  free(job);
}

void fp__job_add_locked(fp__jobset *js, fp__job *job) {
  fp__progress_defer(job->pg, &js->pq);
  job->jprev = NULL;
  job->jnext = js->head;
  if (js->head)
    js->head->jprev = job;
  js->head = job;
}

static void job_unlink_locked(fp__jobset *js, fp__job *job) {
  if (job->jprev)
    job->jprev->jnext = job->jnext;
  else if (js->head == job)
    js->head = job->jnext;
  if (job->jnext)
    job->jnext->jprev = job->jprev;
  job->jprev = job->jnext = NULL;
}

/* Remembers an item failure for the job's outcome: the lowest index wins,
 * so the reported error does not depend on which worker was faster. */
static void job_note_error(fp__job *job, int64_t index, int code,
                           const char *msg, size_t msg_len) {
  if (job->err_code != 0 && job->err_index <= index)
    return;
  free(job->err_msg);
  job->err_msg = strndup(msg, msg_len);
  job->err_code = code;
  job->err_index = index;
}

/* ---- delivering outcomes -------------------------------------------------- */

/* Concatenates the chunks' encoded results in input order. */
static int assemble_values(fp__job *job, fp_result *res) {
  unsigned char **out = &res->value;
  size_t total = 0, *len = &res->value_len;
  *out = NULL;
  *len = 0;
  fp__chunk *one = job->nchunks == 1 ? &job->carr[0] : NULL;
  if (one != NULL && one->res == one->res_small) {
    /* apply: a small value moves into the result itself */
    memcpy(res->value_small, one->res_small, one->res_len);
    *out = res->value_small;
    *len = one->res_len;
    chunk_drop_res(one);
    return 0;
  }
  if (one != NULL && one->res_base == NULL) {
    /* apply and small maps: take the buffer */
    *out = one->res;
    *len = one->res_len;
    one->res = NULL;
    one->res_len = 0;
    return 0;
  }
  for (size_t i = 0; i < job->nchunks; i++)
    total += job->carr[i].res_len;
  if (total == 0)
    return 0;
  unsigned char *buf = fp__alloc(total);
  if (buf == NULL)
    return FP_ENOMEM;
  size_t off = 0;
  for (size_t i = 0; i < job->nchunks; i++) {
    memcpy(buf + off, job->carr[i].res, job->carr[i].res_len);
    off += job->carr[i].res_len;
    chunk_drop_res(&job->carr[i]);
  }
  *out = buf;
  *len = total;
  return 0;
}

/* A blocking call's results go to the caller's writer as soon as they are
 * in input order, freeing each chunk's buffer right away (so receive
 * buffers are recycled instead of 200 MiB of results piling up). */
static void stream_locked(fp__job *job) {
  if (job->sync_out == NULL || job->carr == NULL || job->err_code != 0)
    return; /* a failing blocking call keeps its writer untouched */
  while (job->streamed < job->nchunks &&
         job->carr[job->streamed].state == FP__CH_DONE) {
    fp__chunk *ch = &job->carr[job->streamed++];
    if (!job->stream_err && ch->res_len > 0) {
      int rc = fp_writer_append(job->sync_out, ch->res, ch->res_len);
      if (rc != 0)
        job->stream_err = rc;
    }
    chunk_drop_res(ch);
  }
}

/* Sets a result job's outcome on its result object. */
static void result_set_outcome(fp__job *job, fp_result *res) {
  pthread_mutex_lock(&res->mu);
  res->code = job->err_code;
  res->err_index = job->err_code ? job->err_index : -1;
  res->msg = job->err_msg;
  job->err_msg = NULL;
  if (job->wire != FP__WIRE_FIXED && job->sync_out) {
    /* Results were streamed into the caller's writer as they came; a
     * failed call leaves the writer as it was. */
    if (res->code == 0 && job->stream_err) {
      res->code = job->stream_err;
      res->msg = strdup("out of memory copying the results");
    }
    if (res->code != 0) {
      job->sync_out->len = job->sync_len0;
      job->sync_out->err = 0;
    }
  } else if (res->code == 0 && job->wire != FP__WIRE_FIXED) {
    int rc = assemble_values(job, res);
    if (rc != 0) {
      res->code = rc;
      res->msg = strdup("out of memory assembling the results");
    }
  }
  res->job = NULL;
  res->pool = NULL;
  pthread_mutex_unlock(&res->mu);
}

/* Tells an iterator that its job ended; drops the job's reference. */
static void iter_set_finished(fp__job *job, fp_iter *it) {
  pthread_mutex_lock(&it->mu);
  it->finished = 1;
  it->job = NULL;
  it->pool = NULL;
  if (job->canceled && job->err_code != 0) {
    /* Job-level failure: terminate, cancel, abort policy, storm. */
    it->final_code = job->err_code;
    it->final_msg = job->err_msg;
    it->final_index = job->err_index; /* the crashing item (abort), or -1 */
    job->err_msg = NULL;
  }
  int left = --it->refs;
  pthread_cond_broadcast(&it->cond);
  pthread_mutex_unlock(&it->mu);
  job->it = NULL;
  if (left == 0)
    fp__iter_destroy(it); /* the user already freed the iterator */
}

/* Delivers the outcome of a job whose chunks are all accounted for (or
 * that failed as a whole) and unlinks it. */
static void job_finish_locked(fp__jobset *js, fp__job *job) {
  job->finished = 1;
  job_unlink_locked(js, job);
  if (job->it == NULL)
    job->res->after_progress = fp__progress_deferred(job->pg);
  fp__progress_finish(job->pg);
  job->pg = NULL;
  if (job->it != NULL) {
    iter_set_finished(job, job->it);
  } else {
    fp_result *res = job->res;
    result_set_outcome(job, res);
    res->done_next = NULL;
    if (js->done_tail)
      js->done_tail->done_next = res;
    else
      js->done_head = res;
    js->done_tail = res;
  }
  if (job->travelling == 0)
    fp__job_free(job);
}

void fp__job_maybe_finish_locked(fp__jobset *js, fp__job *job) {
  if (!job->finished && job->input_done && job->chunks_done == job->nchunks)
    job_finish_locked(js, job);
}

void fp__job_fail_locked(fp__jobset *js, fp__job *job, int code,
                         int64_t index, const char *msg) {
  if (job->finished)
    return;
  job->canceled = 1;
  job->err_code = 0;
  job_note_error(job, index, code, msg, strlen(msg));
  job->input_done = 1;
  job_finish_locked(js, job);
}

fp_result *fp__jobset_take_done_locked(fp__jobset *js) {
  fp_result *list = js->done_head;
  js->done_head = js->done_tail = NULL;
  return list;
}

fp_result *fp__jobset_take_plain_locked(fp__jobset *js, int *rest) {
  fp_result *plain = NULL, **ptail = &plain, *kept = NULL, *last = NULL;
  for (fp_result *r = js->done_head, *next; r != NULL; r = next) {
    next = r->done_next;
    r->done_next = NULL;
    if (r->cb == NULL && r->ecb == NULL && !r->after_progress) {
      *ptail = r;
      ptail = &r->done_next;
    } else {
      if (last)
        last->done_next = r;
      else
        kept = r;
      last = r;
    }
  }
  js->done_head = kept;
  js->done_tail = last;
  *rest = kept != NULL;
  return plain;
}

int fp__jobset_take_progress_locked(fp__jobset *js, fp__progress_call *c) {
  return fp__progress_take(&js->pq, c);
}

void fp__progress_call_deliver(const fp__progress_call *c) {
  /* The calls refused in a result's callback are refused in this one
   * (blocking ones): a marker no result can be. */
  static fp_result progress_marker;
  fp_result *saved = enter_callback(&progress_marker);
  fp__progress_call_run(c);
  tl_in_callback = saved;
}

void fp__results_deliver(fp_result *list) {
  while (list != NULL) {
    fp_result *res = list;
    list = res->done_next;
    fp_callback cb = res->code == 0 ? res->cb : res->ecb;
    if (cb != NULL) {
      fp_result *saved = enter_callback(res);
      cb(res, res->arg);
      tl_in_callback = saved;
    }
    pthread_mutex_lock(&res->mu);
    atomic_store_explicit(&res->ready, 1, memory_order_release);
    pthread_cond_broadcast(&res->cond);
    pthread_mutex_unlock(&res->mu);
    fp__result_unref(res, 1); /* the job's reference */
  }
}

void fp__result_unref(fp_result *r, int use_mu) {
  if (use_mu)
    pthread_mutex_lock(&r->mu);
  int left = --r->refs;
  if (use_mu)
    pthread_mutex_unlock(&r->mu);
  if (left > 0)
    return;
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cond);
  free(r->msg);
  if (r->value != r->value_small)
    fp__free(r->value, r->value_len);
  free(r);
}

void fp__iter_destroy(fp_iter *it) {
  fp_writer_free(&it->pitem);
  free(it->final_msg);
  free(it->done_by_num);
  pthread_mutex_destroy(&it->mu);
  pthread_mutex_destroy(&it->pmu);
  pthread_cond_destroy(&it->cond);
  free(it);
}

/* ---- chunks coming back -------------------------------------------------- */

/* Puts a completed chunk where an ordered iterator will look for it. The
 * ring holds chunk numbers [next_num, next_num + cap); it doubles when a
 * chunk lands beyond that. */
static int iter_ring_put(fp_iter *it, fp__chunk *ch) {
  while (it->done_cap == 0 || ch->number - it->next_num >= it->done_cap) {
    size_t ncap = it->done_cap ? it->done_cap * 2 : 64;
    fp__chunk **nr = calloc(ncap, sizeof(*nr));
    if (nr == NULL)
      return FP_ENOMEM;
    for (size_t i = 0; i < it->done_cap; i++)
      if (it->done_by_num[i])
        nr[it->done_by_num[i]->number & (ncap - 1)] = it->done_by_num[i];
    free(it->done_by_num);
    it->done_by_num = nr;
    it->done_cap = ncap;
  }
  it->done_by_num[ch->number & (it->done_cap - 1)] = ch;
  return 0;
}

/* Hands a completed chunk to its iterator (which now owns it): an ordered
 * one files it by number in its ring, or, when the ring cannot grow, in
 * the completion list, where next_chunk (iter.c) finds it by number too. */
static void iter_take_chunk(fp_iter *it, fp__chunk *ch) {
  pthread_mutex_lock(&it->mu);
  int rc = it->ordered ? iter_ring_put(it, ch) : 0;
  if (!it->ordered || rc != 0) {
    ch->dnext = NULL;
    if (it->dtail)
      it->dtail->dnext = ch;
    else
      it->dhead = ch;
    it->dtail = ch;
  }
  pthread_cond_broadcast(&it->cond);
  pthread_mutex_unlock(&it->mu);
}

/* The one place a chunk is counted done. */
static void chunk_done_locked(fp__jobset *js, fp__chunk *ch) {
  fp__job *job = ch->job;
  ch->state = FP__CH_DONE;
  job->chunks_done++;
  job->items_done += ch->count;
  fp__progress_update(job->pg, job->items_done);
  if (job->it != NULL)
    iter_take_chunk(job->it, ch);
  else
    stream_locked(job);
  fp__job_maybe_finish_locked(js, job);
}

void fp__chunk_orphan_locked(fp__chunk *ch) {
  fp__job *job = ch->job;
  if (ch->heap)
    fp__chunk_free(ch); /* array chunks go with their job */
  if (job->travelling == 0 && job->finished)
    fp__job_free(job);
}

int fp__chunk_check_results(const fp__chunk *ch, const unsigned char *data,
                            size_t len, const unsigned char *errs,
                            size_t errs_len, uint32_t nerr) {
  const fp__job *job = ch->job;
  size_t nvalues;
  if (nerr > ch->count)
    return FP_EPROTO;
  if (job->wire == FP__WIRE_FIXED && len < (size_t)ch->count * job->out_size)
    return FP_EPROTO;
  /* Values wires: one well-formed value per item (nil for a failed one).
   * Anything else would shift every later item's result, or hand the
   * caller bytes its reader cannot read, and be reported as success. */
  if (job->wire != FP__WIRE_FIXED &&
      (fp_values_count(data, len, &nvalues) != 0 || nvalues != ch->count))
    return FP_EPROTO;
  size_t off = 0;
  for (uint32_t i = 0; i < nerr; i++) {
    fp__err_rec rec;
    if (errs_len - off < sizeof(rec))
      return FP_EPROTO;
    memcpy(&rec, errs + off, sizeof(rec));
    off += sizeof(rec);
    if (rec.msg_len > errs_len - off || rec.index < ch->start ||
        rec.index >= ch->start + (int64_t)ch->count || rec.code >= 0)
      return FP_EPROTO;
    off += rec.msg_len;
  }
  return 0;
}

/* Reads the (checked) error records of a chunk: an iterator's into
 * ch->errs (each item's message is read with the item), any other job's
 * into its first error or item_status. Only an iterator keeps them all:
 * a map whose every item fails would otherwise hold a copy of each
 * message until it ends (~95 bytes an item for short ones, gigabytes for
 * 10^7 items) to report one. */
static void take_errors(fp__chunk *ch, const unsigned char *errs,
                        uint32_t nerr) {
  fp__job *job = ch->job;
  if (nerr > 0 && job->it != NULL)
    ch->errs = calloc(nerr, sizeof(*ch->errs)); /* NULL: job error only */
  size_t off = 0;
  for (uint32_t i = 0; i < nerr; i++) {
    fp__err_rec rec;
    memcpy(&rec, errs + off, sizeof(rec));
    const char *msg = (const char *)errs + off + sizeof(rec);
    off += sizeof(rec) + rec.msg_len;
    if (job->item_status != NULL)
      job->item_status[rec.index] = rec.code;
    else if (job->it == NULL)
      job_note_error(job, rec.index, rec.code, msg, rec.msg_len);
    if (ch->errs != NULL) {
      ch->errs[ch->nerr].index = rec.index;
      ch->errs[ch->nerr].code = rec.code;
      ch->errs[ch->nerr].msg = strndup(msg, rec.msg_len);
      ch->nerr++;
    }
  }
}

/* 1 when a fixed-size chunk's results have arrived but its range of the
 * caller's `out` cannot take them (read-only, unmapped): the chunk fails
 * with -EFAULT instead of the master crashing on the copy. The job keeps
 * the span of pages already found writable, which chunks mostly extend in
 * order: a map of one-item chunks checks each page once, not each item
 * (a system call each). */
static int out_unwritable(fp__chunk *ch, size_t len) {
  fp__job *job = ch->job;
  size_t want = (size_t)ch->count * job->out_size;
  if (job->wire != FP__WIRE_FIXED || want == 0 || len < want)
    return 0;
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t a = (uintptr_t)(job->fixed_out + (size_t)ch->start * job->out_size);
  uintptr_t lo = a & ~(page - 1), hi = (a + want + page - 1) & ~(page - 1);
  if (lo >= job->out_ok_lo && hi <= job->out_ok_hi)
    return 0;
  /* Pages the caller's prefault found writable (calls.c): pre_hi only
   * grows once pre_lo is set, so a set pre_lo bounds a valid span. */
  uintptr_t pre_lo = job->res == NULL ? 0
                     : atomic_load_explicit(&job->res->out_pre_lo,
                                            memory_order_acquire);
  if (pre_lo != 0 && lo >= pre_lo &&
      hi <= atomic_load_explicit(&job->res->out_pre_hi, memory_order_acquire))
    return 0;
  if (fp__mem_writable((void *)a, want) != 0)
    return 1;
  if (hi >= job->out_ok_lo && lo <= job->out_ok_hi && job->out_ok_hi != 0) {
    job->out_ok_lo = lo < job->out_ok_lo ? lo : job->out_ok_lo;
    job->out_ok_hi = hi > job->out_ok_hi ? hi : job->out_ok_hi;
  } else {
    job->out_ok_lo = lo;
    job->out_ok_hi = hi;
  }
  return 0;
}

/* Stores a chunk's result values (see fp__chunk_results_locked). */
static void take_values(fp__chunk *ch, const unsigned char *data, size_t len,
                        fp__rbuf *kb) {
  fp__job *job = ch->job;
  if (job->wire == FP__WIRE_FIXED) {
    size_t want = (size_t)ch->count * job->out_size;
    if (len >= want && want > 0)
      memcpy(job->fixed_out + (size_t)ch->start * job->out_size, data, want);
    return;
  }
  if (kb != NULL && kb->base != NULL) {
    /* Large results: keep them where the link received them. */
    ch->res_base = kb->base;
    ch->res_cap = kb->cap;
    ch->res = (unsigned char *)data;
    ch->res_len = len;
    kb->base = NULL;
    kb->cap = 0;
  } else if (len > 0) {
    ch->res = len <= sizeof(ch->res_small) ? ch->res_small : fp__alloc(len);
    if (ch->res != NULL) {
      memcpy(ch->res, data, len);
      ch->res_len = len;
    }
  }
}

void fp__chunk_results_locked(fp__jobset *js, fp__chunk *ch,
                              const unsigned char *data, size_t len,
                              const unsigned char *errs, uint32_t nerr,
                              fp__rbuf *keep) {
  if (out_unwritable(ch, len)) {
    char msg[FP__MSG_LEN];
    snprintf(msg, sizeof(msg),
             "item %lld: the output array is not writable memory there "
             "(read-only or unmapped): its chunk's results were not stored",
             (long long)ch->start);
    fp__chunk_crashed_locked(js, ch, -EFAULT, -1, msg);
    return;
  }
  take_errors(ch, errs, nerr);
  take_values(ch, data, len, keep);
  chunk_done_locked(js, ch);
}

/* msg without a leading "item N: " (a chunk-wide message names its first
 * item; each item's record names its own). */
static const char *without_item_prefix(const char *msg) {
  const char *p = msg;
  if (strncmp(p, "item ", 5) != 0)
    return msg;
  p += 5;
  if (*p == '-')
    p++;
  if (*p < '0' || *p > '9')
    return msg;
  while (*p >= '0' && *p <= '9')
    p++;
  return strncmp(p, ": ", 2) == 0 ? p + 2 : msg;
}

/* Gives an iterator's chunk one error record per item: `item` fails with
 * code and msg, the others as lost with their worker. */
static void lost_items(fp__chunk *ch, int code, int64_t item, int all,
                       const char *msg) {
  ch->errs = calloc(ch->count, sizeof(*ch->errs));
  if (ch->errs == NULL)
    return;
  for (uint32_t i = 0; i < ch->count; i++) {
    int64_t idx = ch->start + i;
    char lost[FP__MSG_LEN + 32];
    ch->errs[i].index = idx;
    ch->errs[i].code = all || idx == item ? code : FP_EWORKER;
    if (all)
      snprintf(lost, sizeof(lost), "item %lld: %s", (long long)idx,
               without_item_prefix(msg));
    else if (idx != item)
      snprintf(lost, sizeof(lost),
               "item %lld: result lost: its chunk's worker died at item "
               "%lld",
               (long long)idx, (long long)item);
    ch->errs[i].msg = strdup(idx == item && !all ? msg : lost);
  }
  ch->nerr = ch->count;
}

void fp__chunk_crashed_locked(fp__jobset *js, fp__chunk *ch, int code,
                              int64_t item, const char *msg) {
  fp__job *job = ch->job;
  int all = item < 0; /* the chunk never ran: each item fails alike */
  if (item < ch->start || item >= ch->start + (int64_t)ch->count)
    item = ch->start;
  if (job->item_status != NULL) /* the others' results died with it */
    for (uint32_t i = 0; i < ch->count; i++)
      job->item_status[ch->start + i] =
          all || ch->start + i == item ? code : FP_EWORKER;
  else
    job_note_error(job, item, code, msg, strlen(msg));
  if (job->it != NULL)
    lost_items(ch, code, item, all, msg);
  if (job->wire != FP__WIRE_FIXED) {
    ch->res = fp__alloc(ch->count);
    if (ch->res != NULL) {
      memset(ch->res, FP_NIL, ch->count);
      ch->res_len = ch->count;
    }
  }
  chunk_done_locked(js, ch);
}
