/* job.c - the calls users make: apply, map, starmap, imap; results and
 * iterators.
 *
 * Every call becomes a job cut into chunks (see pool.c for how chunks
 * travel). A job delivers its outcome either to a result object (apply,
 * map, starmap: CPython's AsyncResult) or to an iterator (imap).
 *
 * Result objects are reference counted (the caller's reference and the
 * job's) and have their own mutex, so they stay valid after the pool is
 * freed. A result becomes ready in two steps, as in CPython: the outcome is
 * computed under the pool's lock, then the pool thread runs the callback
 * and only then marks the result ready and wakes waiters - so a thread that
 * returns from fp_result_get() knows the callback has run.
 *
 * Iterators own the chunks the pool thread hands them. An ordered iterator
 * keeps completed chunks in a ring indexed by chunk number; an unordered
 * one in completion order. A producer-fed iterator never has more than
 * `readahead` items produced and not yet consumed, so its memory is
 * bounded however long the input is.
 */
#include "pool/pool_int.h"
#include "ipc/wire/alloc.h"
#include "ipc/wire/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers -------------------------------------------------------------- */

static void deadline_after(struct timespec *ts, double timeout) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  double whole = (double)(time_t)timeout;
  ts->tv_sec += (time_t)timeout;
  ts->tv_nsec += (long)((timeout - whole) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static void cond_init_mono(pthread_cond_t *c) {
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(c, &ca);
  pthread_condattr_destroy(&ca);
}

/* Releases what a chunk owns; frees the chunk itself when it was allocated
 * alone. Safe to call twice on an array chunk. */
/* Frees a chunk's result buffer (which may be a whole read buffer the
 * chunk took over, see STEAL_MIN in pool.c). */
static void chunk_drop_res(fp__chunk *ch) {
  if (ch->res_base != NULL)
    fp__free(ch->res_base, ch->res_cap);
  else
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

typedef struct fp__jobx {
  fp__job job;
  fp__chunk *carr;     /* result jobs: all chunks in one array */
  int borrowed;        /* input belongs to the caller (blocking calls) */
  fp_writer *sync_out; /* blocking calls: where the results go */
  size_t sync_len0;    /* its length before the call */
  size_t streamed;     /* chunks already appended to sync_out */
  int stream_err;      /* an append failed */
} jobx;

void fp__job_free(fp__job *job) {
  jobx *jx = (jobx *)job;
  if (jx->carr) {
    for (size_t i = 0; i < job->nchunks; i++)
      fp__chunk_free(&jx->carr[i]);
    free(jx->carr);
  }
  free(job->chunks);
  if (!jx->borrowed)
    fp__free(job->input, job->input_len);
  free(job->err_msg);
  fp__progress_finish(job->pg);
  free(jx);
}

void fp__job_stream_locked(fp__job *job) {
  jobx *jx = (jobx *)job;
  if (jx->sync_out == NULL || jx->carr == NULL || job->err_code != 0)
    return; /* a failing blocking call keeps its writer untouched */
  while (jx->streamed < job->nchunks &&
         jx->carr[jx->streamed].state == FP__CH_DONE) {
    fp__chunk *ch = &jx->carr[jx->streamed++];
    if (!jx->stream_err) {
      int rc = fp_writer_append(jx->sync_out, ch->res, ch->res_len);
      if (rc != 0)
        jx->stream_err = rc;
    }
    chunk_drop_res(ch);
  }
}

/* ---- results -------------------------------------------------------------- */

static void iter_destroy(fp_iter *it);

static __thread fp_result *tl_in_callback;

static fp_result *result_new(fp_pool *pool, const fp_call_opts *o) {
  fp_result *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return NULL;
  fp__mutex_init(&r->mu);
  cond_init_mono(&r->cond);
  r->refs = 2;
  r->err_index = -1;
  r->pool = pool;
  if (o) {
    r->cb = o->callback;
    r->ecb = o->error_callback;
    r->arg = o->arg;
  }
  return r;
}

static void result_unref(fp_result *r) {
  pthread_mutex_lock(&r->mu);
  int left = --r->refs;
  pthread_mutex_unlock(&r->mu);
  if (left > 0)
    return;
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cond);
  free(r->msg);
  fp__free(r->value, r->value_len);
  free(r);
}

/* Concatenates the chunks' encoded results in input order. */
static int assemble_values(fp__job *job, unsigned char **out, size_t *len) {
  jobx *jx = (jobx *)job;
  size_t total = 0;
  *out = NULL;
  *len = 0;
  if (job->nchunks == 1 && jx->carr[0].res_base == NULL) {
    /* apply and small maps: take the buffer */
    *out = jx->carr[0].res;
    *len = jx->carr[0].res_len;
    jx->carr[0].res = NULL;
    jx->carr[0].res_len = 0;
    return 0;
  }
  for (size_t i = 0; i < job->nchunks; i++)
    total += jx->carr[i].res_len;
  if (total == 0)
    return 0;
  unsigned char *buf = fp__alloc(total);
  if (buf == NULL)
    return FP_ENOMEM;
  size_t off = 0;
  for (size_t i = 0; i < job->nchunks; i++) {
    memcpy(buf + off, jx->carr[i].res, jx->carr[i].res_len);
    off += jx->carr[i].res_len;
    chunk_drop_res(&jx->carr[i]);
  }
  *out = buf;
  *len = total;
  return 0;
}

fp_result *fp__job_complete_locked(fp_pool *pool, fp__job *job) {
  (void)pool;
  if (job->it != NULL) {
    fp_iter *it = job->it;
    pthread_mutex_lock(&it->mu);
    it->finished = 1;
    it->job = NULL;
    it->pool = NULL;
    if (job->canceled && job->err_code != 0) {
      /* Job-level failure: terminate, cancel, abort policy, storm. */
      it->final_code = job->err_code;
      it->final_msg = job->err_msg;
      job->err_msg = NULL;
    }
    int left = --it->refs;
    pthread_cond_broadcast(&it->cond);
    pthread_mutex_unlock(&it->mu);
    job->it = NULL;
    if (left == 0)
      iter_destroy(it); /* the user already freed the iterator */
    return NULL;
  }
  fp_result *res = job->res;
  pthread_mutex_lock(&res->mu);
  res->code = job->err_code;
  res->err_index = job->err_code ? job->err_index : -1;
  res->msg = job->err_msg;
  job->err_msg = NULL;
  jobx *jx = (jobx *)job;
  if (job->wire != FP__WIRE_FIXED && jx->sync_out) {
    /* Results were streamed into the caller's writer as they came; a
     * failed call leaves the writer as it was. */
    if (res->code == 0 && jx->stream_err) {
      res->code = jx->stream_err;
      res->msg = strdup("out of memory copying the results");
    }
    if (res->code != 0) {
      jx->sync_out->len = jx->sync_len0;
      jx->sync_out->err = 0;
    }
  } else if (res->code == 0 && job->wire != FP__WIRE_FIXED) {
    int rc = assemble_values(job, &res->value, &res->value_len);
    if (rc != 0) {
      res->code = rc;
      res->msg = strdup("out of memory assembling the results");
    }
  }
  res->job = NULL;
  pthread_mutex_unlock(&res->mu);
  return res;
}

void fp__result_run_callbacks(fp_result *res) {
  fp_callback cb = res->code == 0 ? res->cb : res->ecb;
  if (cb != NULL) {
    fp_result *saved = tl_in_callback;
    tl_in_callback = res;
    cb(res, res->arg);
    tl_in_callback = saved;
  }
  pthread_mutex_lock(&res->mu);
  res->ready = 1;
  pthread_cond_broadcast(&res->cond);
  pthread_mutex_unlock(&res->mu);
  result_unref(res); /* the job's reference */
}

/* Ready for the caller: really ready, or its own callback is running. */
static int usable_locked(fp_result *res) {
  return res->ready || tl_in_callback == res;
}

/* How long a waiter spins before it sleeps on the condition variable. A
 * short task's result typically lands within this; catching it spinning
 * saves the futex wake-up of the waiting thread (on this kind of VM a
 * cross-CPU wake-up costs tens of microseconds). Only blocking waits spin,
 * and never inside a callback. */
#define SPIN_NS 50000

static void spin_until_ready(fp_result *res) {
  int64_t until = fp__now_ns() + SPIN_NS;
  do {
    for (int i = 0; i < 64; i++) {
      if (atomic_load_explicit(&res->ready, memory_order_acquire))
        return;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
  } while (fp__now_ns() < until);
}

int fp_result_wait(fp_result *res, double timeout) {
  if (res == NULL)
    return FP_EINVAL;
  struct timespec ts;
  int rc = 0;
  if (timeout != 0 && tl_in_callback == NULL)
    spin_until_ready(res);
  pthread_mutex_lock(&res->mu);
  if (!usable_locked(res) && timeout != 0 && tl_in_callback != NULL) {
    /* Waiting for another result inside a callback would block the very
     * thread that has to deliver it. */
    pthread_mutex_unlock(&res->mu);
    return FP_EINVAL;
  }
  if (timeout > 0)
    deadline_after(&ts, timeout);
  while (!usable_locked(res) && rc == 0) {
    if (timeout == 0)
      rc = FP_ETIMEDOUT;
    else if (timeout < 0)
      pthread_cond_wait(&res->cond, &res->mu);
    else if (pthread_cond_timedwait(&res->cond, &res->mu, &ts) != 0 &&
             !usable_locked(res))
      rc = FP_ETIMEDOUT;
  }
  pthread_mutex_unlock(&res->mu);
  return rc;
}

int fp_result_get(fp_result *res, double timeout) {
  int rc = fp_result_wait(res, timeout);
  if (rc != 0)
    return rc;
  return res->code;
}

int fp_result_ready(fp_result *res) {
  if (res == NULL)
    return FP_EINVAL;
  pthread_mutex_lock(&res->mu);
  int r = usable_locked(res);
  pthread_mutex_unlock(&res->mu);
  return r;
}

int fp_result_successful(fp_result *res) {
  if (res == NULL)
    return FP_EINVAL;
  pthread_mutex_lock(&res->mu);
  int r = usable_locked(res) ? res->code == 0 : FP_EINVAL;
  pthread_mutex_unlock(&res->mu);
  return r;
}

int fp_result_value(fp_result *res, fp_reader *rd) {
  if (res == NULL || rd == NULL)
    return FP_EINVAL;
  pthread_mutex_lock(&res->mu);
  int rc = usable_locked(res) ? res->code : FP_EINVAL;
  pthread_mutex_unlock(&res->mu);
  if (rc != 0)
    return rc;
  fp_reader_init(rd, res->value, res->value_len);
  return 0;
}

const char *fp_result_error(fp_result *res) {
  if (res == NULL)
    return NULL;
  pthread_mutex_lock(&res->mu);
  const char *m = usable_locked(res) && res->code != 0
                      ? (res->msg ? res->msg : fp_strerror(res->code))
                      : NULL;
  pthread_mutex_unlock(&res->mu);
  return m;
}

int64_t fp_result_error_index(fp_result *res) {
  if (res == NULL)
    return -1;
  pthread_mutex_lock(&res->mu);
  int64_t i = usable_locked(res) ? res->err_index : -1;
  pthread_mutex_unlock(&res->mu);
  return i;
}

int fp_result_cancel(fp_result *res) {
  if (res == NULL)
    return FP_EINVAL;
  pthread_mutex_lock(&res->mu);
  fp_pool *pool = res->pool;
  int done = res->ready || res->job == NULL;
  pthread_mutex_unlock(&res->mu);
  if (done || pool == NULL)
    return FP_EINVAL;
  pthread_mutex_lock(&pool->mu);
  int rc = FP_EINVAL;
  if (res->job != NULL) { /* res->job is guarded by pool->mu */
    fp__job_cancel_locked(pool, res->job, FP_ECANCELED, -1,
                          "canceled by fp_result_cancel");
    rc = 0;
  }
  pthread_mutex_unlock(&pool->mu);
  return rc;
}

void fp_result_free(fp_result *res) {
  if (res == NULL)
    return;
  pthread_mutex_lock(&res->mu);
  res->user_freed = 1; /* fixed-size outputs are no longer written */
  pthread_mutex_unlock(&res->mu);
  result_unref(res);
}

/* ---- building jobs ------------------------------------------------------ */

static int resolve_common(fp_pool *pool, fp__job *job, const void *fn,
                          const fp_call_opts *o) {
  int rc = fp__fnref_make(fn, &job->fn);
  if (rc != 0)
    return rc;
  job->pool = pool;
  job->err_index = -1;
  double t = o && o->timeout != 0 ? o->timeout : pool->opts.task_timeout;
  job->timeout = t > 0 ? t : 0;
  job->on_crash = o && o->on_crash ? o->on_crash : pool->opts.on_crash;
  job->retries = o && o->retries > 0 ? o->retries : pool->opts.retries;
  if (o && (o->on_crash < 0 || o->on_crash > FP_CRASH_ABORT || o->retries < 0 ||
            o->progress < 0 || o->progress > FP_PROGRESS_CALLBACK))
    return FP_EINVAL;
  return 0;
}

/* Allocates a job for fn with the call's options resolved against the
 * pool's. Returns 0 and *out, or FP_ENOMEM / FP_EINVAL. */
static int job_alloc(fp_pool *pool, const void *fn, const fp_call_opts *o,
                     jobx **out) {
  jobx *jx = calloc(1, sizeof(*jx));
  if (jx == NULL)
    return FP_ENOMEM;
  int rc = resolve_common(pool, &jx->job, fn, o);
  if (rc != 0) {
    free(jx);
    return rc;
  }
  *out = jx;
  return 0;
}

static size_t default_chunksize(fp_pool *pool, size_t n,
                                const fp_call_opts *o) {
  if (o && o->chunksize > 0)
    return o->chunksize;
  size_t d = (size_t)pool->nworkers * 4;
  size_t cs = n / d + (n % d ? 1 : 0);
  return cs ? cs : 1;
}

static int progress_for(fp_pool *pool, fp__job *job, const fp_call_opts *o,
                        int64_t total) {
  fp_progress_mode m = o && o->progress ? o->progress : pool->opts.progress;
  if (m == FP_PROGRESS_DEFAULT || m == FP_PROGRESS_OFF)
    return 0;
  return fp__progress_new(&job->pg, m, pool->opts.progress_cb,
                          pool->opts.progress_arg, pool->nworkers, total);
}

/* Registers a result job and queues its chunks, or fails it at once when
 * the pool does not accept work. Takes ownership of job. */
static int submit_locked(fp_pool *pool, fp__job *job) {
  int rc = fp__pool_check_submit(pool);
  if (rc != 0)
    return rc;
  jobx *jx = (jobx *)job;
  for (size_t i = 0; i < job->nchunks; i++) {
    fp__chunk *ch = jx->carr ? &jx->carr[i] : job->chunks[i];
    ch->seq = ++pool->next_seq;
    fp__enqueue_locked(pool, ch);
  }
  if (!jx->carr) {
    free(job->chunks); /* iterator chunks are tracked by the queue */
    job->chunks = NULL;
  }
  fp__job_add_locked(pool, job);
  fp__job_maybe_finish_locked(pool, job); /* empty input */
  fp__dispatch_locked(pool);
  return 0;
}

static int blocking_allowed(fp_pool *pool) {
  if (fp__on_pool_thread(pool) || tl_in_callback != NULL) {
    fp__set_last_error(FP_EINVAL,
                       "blocking pool call from a callback (pool thread)");
    return 0;
  }
  return 1;
}

#define FIXED_CHUNK_BYTES (64 * 1024)

/* Creates a result job over fixed-size elements. */
static int make_fixed(fp_pool *pool, fp_elem_fn fn, const void *in, size_t n,
                      size_t in_size, void *out, size_t out_size,
                      const fp_call_opts *o, fp__job **jobp) {
  if (pool == NULL || fn == NULL || (n > 0 && in == NULL && in_size > 0) ||
      (n > 0 && out == NULL && out_size > 0) || in_size > UINT32_MAX ||
      out_size > UINT32_MAX || (int64_t)n < 0)
    return FP_EINVAL;
  size_t room = pool->max_frame - 256;
  if (in_size > room || out_size > room)
    return FP_EMSGSIZE;
  jobx *jx;
  int rc = job_alloc(pool, (const void *)fn, o, &jx);
  if (rc != 0)
    return rc;
  fp__job *job = &jx->job;
  job->kind = FP__JOB_MAP_FIXED;
  job->wire = FP__WIRE_FIXED;
  job->in_size = in_size;
  job->out_size = out_size;
  job->fixed_in = in;
  job->fixed_out = out;
  job->n_items = (int64_t)n;
  size_t cs = default_chunksize(pool, n, o);
  size_t big = in_size > out_size ? in_size : out_size;
  /* CPython's default makes a few huge chunks (2 M int64 on 2 workers:
   * 250,000 items, 2 MB a frame), which serialises copying and computing.
   * The fast path caps the default at FIXED_CHUNK_BYTES per direction so
   * transfers pipeline with work; results are identical either way. An
   * explicit chunksize is used as given. */
  if (!(o && o->chunksize) && big > 0 && cs > FIXED_CHUNK_BYTES / big)
    cs = FIXED_CHUNK_BYTES / big > 0 ? FIXED_CHUNK_BYTES / big : 1;
  if (big > 0 && cs > room / big)
    cs = room / big; /* a chunk must fit in one frame */
  job->chunksize = cs;
  job->nchunks = n ? (n + cs - 1) / cs : 0;
  if (job->nchunks) {
    jx->carr = calloc(job->nchunks, sizeof(fp__chunk));
    if (jx->carr == NULL) {
      free(jx);
      return FP_ENOMEM;
    }
  }
  for (size_t i = 0; i < job->nchunks; i++) {
    fp__chunk *ch = &jx->carr[i];
    size_t start = i * cs;
    size_t count = n - start < cs ? n - start : cs;
    ch->job = job;
    ch->number = i;
    ch->start = (int64_t)start;
    ch->count = (uint32_t)count;
    ch->items = (const unsigned char *)in + start * in_size;
    ch->items_len = count * in_size;
  }
  job->input_done = 1;
  if ((rc = progress_for(pool, job, o, job->n_items)) != 0) {
    fp__job_free(job);
    return rc;
  }
  *jobp = job;
  return 0;
}

typedef struct span {
  size_t off, len;
  uint32_t count;
} span;

/* Cuts a buffer of encoded items into chunk spans of at most cs items and
 * at most `room` bytes. Returns the number of spans via *nspans (caller
 * frees *spans), or FP_EPROTO / FP_ETYPE (starmap item not a list) /
 * FP_EMSGSIZE (one item larger than a frame). */
static int cut_items(const unsigned char *buf, size_t len, size_t cs,
                     size_t room, int need_list, span **spans, size_t *nspans,
                     int64_t *nitems) {
  fp_reader r;
  size_t cap = 16, ns = 0;
  span *sp = malloc(cap * sizeof(*sp));
  int64_t n = 0;
  if (sp == NULL)
    return FP_ENOMEM;
  fp_reader_init(&r, buf, len);
  while (!fp_reader_at_end(&r)) {
    const void *p;
    size_t l;
    if (need_list) {
      int t = fp_read_peek(&r);
      if (t < 0 || t != FP_LIST) {
        free(sp);
        return t < 0 ? t : FP_ETYPE;
      }
    }
    int rc = fp_read_span(&r, &p, &l);
    if (rc != 0) {
      free(sp);
      return rc;
    }
    if (l > room) {
      free(sp);
      return FP_EMSGSIZE;
    }
    size_t off = (size_t)((const unsigned char *)p - buf);
    if (ns == 0 || sp[ns - 1].count >= cs || sp[ns - 1].len + l > room) {
      if (ns == cap) {
        span *nsp = realloc(sp, 2 * cap * sizeof(*sp));
        if (nsp == NULL) {
          free(sp);
          return FP_ENOMEM;
        }
        sp = nsp;
        cap *= 2;
      }
      sp[ns].off = off;
      sp[ns].len = 0;
      sp[ns].count = 0;
      ns++;
    }
    sp[ns - 1].len += l;
    sp[ns - 1].count++;
    n++;
  }
  *spans = sp;
  *nspans = ns;
  *nitems = n;
  return 0;
}

/* Creates a job over codec values (apply, map_values, starmap, imap). For
 * iterators the chunks are allocated one by one (they move to the
 * iterator); result jobs get one array. */
static int make_values(fp_pool *pool, int kind, fp_task_fn fn,
                       const fp_writer *items, int borrow,
                       const fp_call_opts *o, fp__job **jobp) {
  if (pool == NULL || fn == NULL)
    return FP_EINVAL;
  if (items != NULL && (items->err != 0 || items->depth != 0))
    return FP_EINVAL; /* a writer in error or with an open list */
  const unsigned char *buf = items ? items->data : NULL;
  size_t len = items ? items->len : 0;
  jobx *jx;
  int rc = job_alloc(pool, (const void *)fn, o, &jx);
  if (rc != 0)
    return rc;
  fp__job *job = &jx->job;
  job->kind = kind;
  job->wire = kind == FP__JOB_STARMAP ? FP__WIRE_STAR : FP__WIRE_VALUES;
  size_t room = pool->max_frame - 256;
  if (kind == FP__JOB_APPLY) {
    /* apply: the whole argument buffer is the one item. */
    if (len > room) {
      free(jx);
      return FP_EMSGSIZE;
    }
    size_t dummy;
    if (len > 0 && (rc = fp_values_count(buf, len, &dummy)) != 0) {
      free(jx);
      return rc;
    }
  }
  /* Copy the items unless the caller's buffer outlives the job. */
  if (borrow || len == 0) {
    job->input = (unsigned char *)buf;
    jx->borrowed = 1;
  } else {
    job->input = fp__alloc(len);
    if (job->input == NULL) {
      free(jx);
      return FP_ENOMEM;
    }
    memcpy(job->input, buf, len);
    job->input_len = len;
  }
  span one = {0, len, 1};
  span *spans = &one;
  size_t nspans = 1;
  int64_t nitems = 1;
  if (kind != FP__JOB_APPLY) {
    size_t cs;
    if (o && o->chunksize)
      cs = o->chunksize;
    else if (kind == FP__JOB_IMAP || kind == FP__JOB_IMAP_UNORDERED)
      cs = 1;
    else {
      size_t cnt = 0;
      if ((rc = fp_values_count(job->input, len, &cnt)) != 0)
        goto fail;
      cs = default_chunksize(pool, cnt, o);
    }
    rc = cut_items(job->input, len, cs, room, kind == FP__JOB_STARMAP, &spans,
                   &nspans, &nitems);
    if (rc != 0)
      goto fail;
    job->chunksize = cs;
  }
  job->n_items = nitems;
  job->nchunks = nspans;
  int iter = kind == FP__JOB_IMAP || kind == FP__JOB_IMAP_UNORDERED;
  if (iter) {
    job->chunks = calloc(nspans ? nspans : 1, sizeof(fp__chunk *));
    rc = job->chunks ? 0 : FP_ENOMEM;
    for (size_t i = 0; i < nspans && rc == 0; i++) {
      job->chunks[i] = calloc(1, sizeof(fp__chunk));
      if (job->chunks[i] == NULL)
        rc = FP_ENOMEM;
      else
        job->chunks[i]->heap = 1;
    }
  } else if (nspans) {
    jx->carr = calloc(nspans, sizeof(fp__chunk));
    rc = jx->carr ? 0 : FP_ENOMEM;
  }
  int64_t start = 0;
  for (size_t i = 0; i < nspans && rc == 0; i++) {
    fp__chunk *ch = iter ? job->chunks[i] : &jx->carr[i];
    ch->job = job;
    ch->number = i;
    ch->start = start;
    ch->count = spans[i].count;
    ch->items = job->input + spans[i].off;
    ch->items_len = spans[i].len;
    start += spans[i].count;
  }
  if (spans != &one)
    free(spans);
  if (rc != 0)
    goto fail_chunks;
  job->input_done = 1;
  if ((rc = progress_for(pool, job, o, nitems)) != 0)
    goto fail_chunks;
  *jobp = job;
  return 0;
fail_chunks:
  if (job->chunks) {
    for (size_t i = 0; i < nspans; i++)
      fp__chunk_free(job->chunks[i]);
  }
  fp__job_free(job);
  return rc;
fail:
  fp__job_free(job);
  return rc;
}

/* Attaches a fresh result to job and submits it. */
static int start_result_job(fp_pool *pool, fp__job *job, const fp_call_opts *o,
                            fp_result **res) {
  fp_result *r = result_new(pool, o);
  if (r == NULL) {
    fp__job_free(job);
    return FP_ENOMEM;
  }
  job->res = r;
  r->job = job;
  pthread_mutex_lock(&pool->mu);
  int rc = submit_locked(pool, job);
  pthread_mutex_unlock(&pool->mu);
  if (rc != 0) {
    fp__job_free(job);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cond);
    free(r);
    return rc;
  }
  *res = r;
  return 0;
}

/* Waits for a blocking call's result, copies its values, frees it. */
static int finish_blocking(fp_result *res, fp_writer *out) {
  int rc = fp_result_get(res, FP_FOREVER);
  if (rc == 0 && out != NULL && res->value_len > 0) { /* not sync_out */
    if (out->depth == 0) {
      rc = fp_writer_append(out, res->value, res->value_len);
    } else {
      fp_reader rd;
      fp_reader_init(&rd, res->value, res->value_len);
      while (rc == 0 && !fp_reader_at_end(&rd))
        rc = fp_copy_value(out, &rd);
    }
  }
  if (rc != 0)
    fp__set_last_error(rc, res->code ? res->msg : NULL);
  else
    fp__clear_last_error();
  fp_result_free(res);
  return rc;
}

static int fail_call(int rc) {
  fp__set_last_error(rc, NULL);
  return rc;
}

/* ---- the public calls ------------------------------------------------------ */

int fp_pool_apply_async(fp_pool *pool, fp_task_fn fn, const fp_writer *args,
                        const fp_call_opts *opts, fp_result **res) {
  fp__job *job;
  if (res == NULL)
    return FP_EINVAL;
  *res = NULL;
  int rc = make_values(pool, FP__JOB_APPLY, fn, args, 0, opts, &job);
  if (rc != 0)
    return fail_call(rc);
  return start_result_job(pool, job, opts, res);
}

int fp_pool_apply(fp_pool *pool, fp_task_fn fn, const fp_writer *args,
                  fp_writer *out) {
  fp__job *job;
  fp_result *res;
  if (pool == NULL || !blocking_allowed(pool))
    return FP_EINVAL;
  int rc = make_values(pool, FP__JOB_APPLY, fn, args, 1, NULL, &job);
  if (rc == 0) {
    if (out != NULL && out->depth == 0 && out->err == 0) {
      ((jobx *)job)->sync_out = out;
      ((jobx *)job)->sync_len0 = out->len;
    }
    rc = start_result_job(pool, job, NULL, &res);
  }
  if (rc != 0)
    return fail_call(rc);
  return finish_blocking(res, out);
}

int fp_pool_map_async(fp_pool *pool, fp_elem_fn fn, const void *in, size_t n,
                      size_t in_size, void *out, size_t out_size,
                      const fp_call_opts *opts, fp_result **res) {
  fp__job *job;
  if (res == NULL)
    return FP_EINVAL;
  *res = NULL;
  int rc = make_fixed(pool, fn, in, n, in_size, out, out_size, opts, &job);
  if (rc != 0)
    return fail_call(rc);
  return start_result_job(pool, job, opts, res);
}

int fp_pool_map(fp_pool *pool, fp_elem_fn fn, const void *in, size_t n,
                size_t in_size, void *out, size_t out_size,
                const fp_call_opts *opts) {
  fp__job *job;
  fp_result *res;
  if (pool == NULL || !blocking_allowed(pool))
    return FP_EINVAL;
  int rc = make_fixed(pool, fn, in, n, in_size, out, out_size, opts, &job);
  if (rc == 0)
    rc = start_result_job(pool, job, NULL, &res); /* no callbacks */
  if (rc != 0)
    return fail_call(rc);
  return finish_blocking(res, NULL);
}

static int values_async(fp_pool *pool, int kind, fp_task_fn fn,
                        const fp_writer *items, const fp_call_opts *opts,
                        fp_result **res) {
  fp__job *job;
  if (res == NULL)
    return FP_EINVAL;
  *res = NULL;
  int rc = make_values(pool, kind, fn, items, 0, opts, &job);
  if (rc != 0)
    return fail_call(rc);
  return start_result_job(pool, job, opts, res);
}

static int values_blocking(fp_pool *pool, int kind, fp_task_fn fn,
                           const fp_writer *items, fp_writer *out,
                           const fp_call_opts *opts) {
  fp__job *job;
  fp_result *res;
  if (pool == NULL || !blocking_allowed(pool))
    return FP_EINVAL;
  int rc = make_values(pool, kind, fn, items, 1, opts, &job);
  if (rc == 0) {
    if (out != NULL && out->depth == 0 && out->err == 0) {
      ((jobx *)job)->sync_out = out;
      ((jobx *)job)->sync_len0 = out->len;
      /* Results are often about as large as the items (transforms of
       * strings or byte buffers): reserving that much up front spares the
       * writer its doubling copies. Pages never written are never touched,
       * so a smaller result costs address space, not memory. */
      size_t guess =
          items != NULL && items->len < ((size_t)1 << 30) ? items->len : 0;
      if (guess > 0 && fp_writer_reserve(out, guess) != 0)
        out->err = 0; /* only a hint: nothing was written */
    }
    rc = start_result_job(pool, job, NULL, &res); /* no callbacks */
  }
  if (rc != 0)
    return fail_call(rc);
  return finish_blocking(res, out);
}

int fp_pool_map_values(fp_pool *pool, fp_task_fn fn, const fp_writer *items,
                       fp_writer *out, const fp_call_opts *opts) {
  return values_blocking(pool, FP__JOB_MAP_VALUES, fn, items, out, opts);
}

int fp_pool_starmap(fp_pool *pool, fp_task_fn fn, const fp_writer *items,
                    fp_writer *out, const fp_call_opts *opts) {
  return values_blocking(pool, FP__JOB_STARMAP, fn, items, out, opts);
}

int fp_pool_map_values_async(fp_pool *pool, fp_task_fn fn,
                             const fp_writer *items, const fp_call_opts *opts,
                             fp_result **res) {
  return values_async(pool, FP__JOB_MAP_VALUES, fn, items, opts, res);
}

int fp_pool_starmap_async(fp_pool *pool, fp_task_fn fn, const fp_writer *items,
                          const fp_call_opts *opts, fp_result **res) {
  return values_async(pool, FP__JOB_STARMAP, fn, items, opts, res);
}

/* ---- iterators -------------------------------------------------------------- */

static fp_iter *iter_new(fp_pool *pool, int ordered) {
  fp_iter *it = calloc(1, sizeof(*it));
  if (it == NULL)
    return NULL;
  fp__mutex_init(&it->mu);
  cond_init_mono(&it->cond);
  it->refs = 2;
  it->ordered = ordered;
  it->pool = pool;
  it->last_index = -1;
  return it;
}

static void iter_destroy(fp_iter *it) {
  free(it->final_msg);
  free(it->done_by_num);
  pthread_mutex_destroy(&it->mu);
  pthread_cond_destroy(&it->cond);
  free(it);
}

/* Puts a completed chunk where the ordered iterator will look for it. The
 * ring holds chunk numbers [next_num, next_num + cap); it doubles when a
 * chunk lands beyond that. */
static int ring_put(fp_iter *it, fp__chunk *ch) {
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

void fp__iter_chunk_done_locked(fp__job *job, fp__chunk *ch) {
  fp_iter *it = job->it;
  pthread_mutex_lock(&it->mu);
  int rc = it->ordered ? ring_put(it, ch) : 0;
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

static int start_iter(fp_pool *pool, fp__job *job, int ordered,
                      fp_iter **out) {
  fp_iter *it = iter_new(pool, ordered);
  if (it == NULL) {
    for (size_t i = 0; job->chunks && i < job->nchunks; i++)
      fp__chunk_free(job->chunks[i]);
    fp__job_free(job);
    return FP_ENOMEM;
  }
  job->it = it;
  it->job = job;
  pthread_mutex_lock(&pool->mu);
  int rc = submit_locked(pool, job);
  pthread_mutex_unlock(&pool->mu);
  if (rc != 0) {
    for (size_t i = 0; job->chunks && i < job->nchunks; i++)
      fp__chunk_free(job->chunks[i]);
    fp__job_free(job);
    iter_destroy(it);
    return rc;
  }
  *out = it;
  return 0;
}

static int imap_common(fp_pool *pool, fp_task_fn fn, const fp_writer *items,
                       const fp_call_opts *opts, int ordered, fp_iter **it) {
  fp__job *job;
  if (it == NULL)
    return FP_EINVAL;
  *it = NULL;
  int rc = make_values(pool,
                       ordered ? FP__JOB_IMAP : FP__JOB_IMAP_UNORDERED, fn,
                       items, 0, opts, &job);
  if (rc != 0)
    return fail_call(rc);
  return start_iter(pool, job, ordered, it);
}

int fp_pool_imap(fp_pool *pool, fp_task_fn fn, const fp_writer *items,
                 const fp_call_opts *opts, fp_iter **it) {
  return imap_common(pool, fn, items, opts, 1, it);
}

int fp_pool_imap_unordered(fp_pool *pool, fp_task_fn fn,
                           const fp_writer *items, const fp_call_opts *opts,
                           fp_iter **it) {
  return imap_common(pool, fn, items, opts, 0, it);
}

/* Pulls items from the producer into new chunks until the read-ahead bound
 * is reached or the producer ends. Runs on the consumer's thread without
 * holding any lock while the producer runs. Returns 0 or an error that
 * ends the iteration. */
static int iter_fill(fp_iter *it) {
  fp_pool *pool;
  int64_t consumed;
  pthread_mutex_lock(&it->mu);
  pool = it->pool;
  consumed = it->consumed;
  pthread_mutex_unlock(&it->mu);
  while (!it->producer_done && pool != NULL &&
         it->produced - consumed < (int64_t)it->readahead) {
    fp__job *job;
    fp__chunk *ch = calloc(1, sizeof(*ch));
    if (ch == NULL)
      return FP_ENOMEM;
    ch->heap = 1;
    fp_writer w;
    fp_writer_init(&w);
    int rc = 0;
    uint32_t count = 0;
    size_t room = pool->max_frame - 256;
    while (count < it->chunksize) {
      size_t before = w.len;
      rc = it->producer(it->parg, &w);
      if (rc == 0) {
        it->producer_done = 1;
        break;
      }
      if (rc < 0)
        break;
      size_t nv = 0;
      if (w.err || w.depth ||
          fp_values_count(w.data + before, w.len - before, &nv) != 0 ||
          nv != 1) {
        rc = FP_EPROTO;
        break;
      }
      if (w.len - before > room) {
        rc = FP_EMSGSIZE;
        break;
      }
      rc = 0;
      count++;
      if (w.len > room / 2)
        break;
    }
    if (rc < 0) {
      it->producer_done = 1;
      fp_writer_free(&w);
      free(ch);
      pthread_mutex_lock(&pool->mu);
      if (it->job)
        fp__job_cancel_locked(pool, it->job, rc, -1,
                              "the imap producer failed");
      pthread_mutex_unlock(&pool->mu);
      return rc;
    }
    pthread_mutex_lock(&pool->mu);
    job = it->job;
    if (job == NULL || job->finished) {
      pthread_mutex_unlock(&pool->mu);
      fp_writer_free(&w);
      free(ch);
      return 0;
    }
    if (count > 0) {
      ch->job = job;
      ch->number = job->nchunks++;
      ch->start = it->produced;
      ch->count = count;
      ch->owned_items = w.data;
      ch->owned_cap = w.cap;
      ch->items = w.data;
      ch->items_len = w.len;
      ch->seq = ++pool->next_seq;
      job->n_items += count;
      fp__enqueue_locked(pool, ch);
      it->produced += count;
    } else {
      fp_writer_free(&w);
      free(ch);
    }
    if (it->producer_done) {
      job->input_done = 1;
      fp__progress_set_total(job->pg, job->n_items);
      fp__job_maybe_finish_locked(pool, job);
    }
    fp__dispatch_locked(pool);
    pthread_mutex_unlock(&pool->mu);
  }
  return 0;
}

static int imap_producer_common(fp_pool *pool, fp_task_fn fn,
                                fp_producer_fn producer, void *parg,
                                const fp_call_opts *opts, int ordered,
                                fp_iter **out) {
  if (out == NULL)
    return FP_EINVAL;
  *out = NULL;
  if (pool == NULL || fn == NULL || producer == NULL)
    return fail_call(FP_EINVAL);
  jobx *jx;
  int rc = job_alloc(pool, (const void *)fn, opts, &jx);
  if (rc != 0)
    return fail_call(rc);
  fp__job *job = &jx->job;
  jx->borrowed = 1;
  job->kind = ordered ? FP__JOB_IMAP : FP__JOB_IMAP_UNORDERED;
  job->wire = FP__WIRE_VALUES;
  job->chunksize = opts && opts->chunksize ? opts->chunksize : 1;
  if ((rc = progress_for(pool, job, opts, -1)) != 0) {
    fp__job_free(job);
    return fail_call(rc);
  }
  fp_iter *it = iter_new(pool, ordered);
  if (it == NULL) {
    fp__job_free(job);
    return fail_call(FP_ENOMEM);
  }
  it->producer = producer;
  it->parg = parg;
  it->chunksize = job->chunksize;
  it->readahead = opts && opts->readahead
                      ? opts->readahead
                      : 8 * job->chunksize * (size_t)pool->nworkers;
  if (it->readahead < job->chunksize)
    it->readahead = job->chunksize;
  job->it = it;
  it->job = job;
  pthread_mutex_lock(&pool->mu);
  rc = submit_locked(pool, job);
  pthread_mutex_unlock(&pool->mu);
  if (rc != 0) {
    fp__job_free(job);
    iter_destroy(it);
    return fail_call(rc);
  }
  *out = it;
  iter_fill(it); /* a producer error is reported by fp_iter_next */
  return 0;
}

int fp_pool_imap_producer(fp_pool *pool, fp_task_fn fn,
                          fp_producer_fn producer, void *parg,
                          const fp_call_opts *opts, fp_iter **it) {
  return imap_producer_common(pool, fn, producer, parg, opts, 1, it);
}

int fp_pool_imap_unordered_producer(fp_pool *pool, fp_task_fn fn,
                                    fp_producer_fn producer, void *parg,
                                    const fp_call_opts *opts, fp_iter **it) {
  return imap_producer_common(pool, fn, producer, parg, opts, 0, it);
}

/* Takes the next deliverable chunk (it->mu held), or NULL. */
static fp__chunk *next_chunk_locked(fp_iter *it) {
  fp__chunk *ch = NULL;
  if (it->dhead) {
    ch = it->dhead;
    it->dhead = ch->dnext;
    if (!it->dhead)
      it->dtail = NULL;
    return ch;
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

int fp_iter_next(fp_iter *it, fp_reader *item, double timeout) {
  if (it == NULL || item == NULL)
    return FP_EINVAL;
  /* A producer error cancels the job; the iteration then hands out what
   * had completed and reports the error once, at its end. */
  if (it->producer && !it->producer_done)
    iter_fill(it);
  struct timespec ts;
  if (timeout > 0)
    deadline_after(&ts, timeout);
  pthread_mutex_lock(&it->mu);
  for (;;) {
    fp__chunk *cur = it->cur;
    if (cur != NULL && it->cur_pos < cur->count) {
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
        snprintf(it->msg, sizeof(it->msg), "%s", e->msg ? e->msg : "");
        int code = e->code;
        pthread_mutex_unlock(&it->mu);
        fp_reader_init(item, NULL, 0);
        return code;
      }
      pthread_mutex_unlock(&it->mu);
      fp_reader_init(item, p, len);
      return 0;
    }
    if (cur != NULL) {
      fp__chunk_free(cur);
      it->cur = NULL;
    }
    fp__chunk *ch = next_chunk_locked(it);
    if (ch != NULL) {
      it->cur = ch;
      it->cur_pos = 0;
      it->cur_err = 0;
      fp_reader_init(&it->cur_rd, ch->res, ch->res_len);
      continue;
    }
    if (it->finished) {
      int rc = FP_EOF;
      if (it->final_code) {
        rc = it->final_code;
        snprintf(it->msg, sizeof(it->msg), "%s",
                 it->final_msg ? it->final_msg : fp_strerror(rc));
        it->final_code = 0;
      }
      pthread_mutex_unlock(&it->mu);
      fp_reader_init(item, NULL, 0);
      return rc;
    }
    if (it->producer && !it->producer_done &&
        it->produced - it->consumed < (int64_t)it->readahead) {
      pthread_mutex_unlock(&it->mu);
      iter_fill(it);
      pthread_mutex_lock(&it->mu);
      continue;
    }
    if (timeout == 0) {
      pthread_mutex_unlock(&it->mu);
      return FP_ETIMEDOUT;
    }
    if (timeout < 0)
      pthread_cond_wait(&it->cond, &it->mu);
    else if (pthread_cond_timedwait(&it->cond, &it->mu, &ts) != 0) {
      if (!it->dhead && !it->finished &&
          !(it->ordered && it->done_cap &&
            it->done_by_num[it->next_num & (it->done_cap - 1)])) {
        pthread_mutex_unlock(&it->mu);
        return FP_ETIMEDOUT;
      }
    }
  }
}

int64_t fp_iter_index(const fp_iter *it) {
  return it ? it->last_index : -1;
}

const char *fp_iter_error(const fp_iter *it) {
  return it ? it->msg : "";
}

void fp_iter_free(fp_iter *it) {
  if (it == NULL)
    return;
  pthread_mutex_lock(&it->mu);
  fp_pool *pool = it->pool;
  pthread_mutex_unlock(&it->mu);
  if (pool != NULL) {
    pthread_mutex_lock(&pool->mu);
    if (it->job != NULL)
      fp__job_cancel_locked(pool, it->job, FP_ECANCELED, -1,
                            "the iterator was freed");
    pthread_mutex_unlock(&pool->mu);
  }
  pthread_mutex_lock(&it->mu);
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
  int left = --it->refs;
  pthread_mutex_unlock(&it->mu);
  if (left == 0)
    iter_destroy(it);
}
