/* SPDX-License-Identifier: MIT */
/* calls.c - the calls users make: apply, map, starmap, imap (and _async).
 *
 * (The pool/ folder is the scheduler: these calls, result and iterator
 * objects, job state, the queue and dispatch, deaths and time limits, the
 * pool's life and loop. It reaches workers only through link.h; the local
 * implementation of that link is in pool/local/. docs/architecture.md
 * draws the whole.)
 *
 * Every call becomes a job (job.h) cut into chunks: fixed-size maps cut
 * the caller's array (not copied), value calls cut their encoded items
 * (copied at the call, except for blocking calls, whose caller waits). The
 * job is then registered and its chunks queued for the scheduler. Blocking
 * calls are the async ones plus a wait; their results stream into the
 * caller's writer as chunks complete (job.c).
 */
#include "pool/pool_int.h"
#include "ipc/wire/alloc.h"
#include "ipc/wire/error.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The fast path caps its default chunk at this many bytes per direction,
 * so transfers pipeline with work (see make_fixed). 48 KiB, with the
 * frame's header, stays within the local link's inline task frames
 * (FP__TRING_MAX, 56 KiB): 64 KiB chunks fell back to the socket, which
 * costs a copy more and a sendmsg per batch. */
#define FIXED_CHUNK_BYTES (48 * 1024)
/* Most items in one chunk: counts travel as u32 on the wire. */
#define MAX_CHUNK_ITEMS ((size_t)UINT32_MAX)

/* ---- building jobs ------------------------------------------------------ */

/* What is wrong with a call's options, or NULL. */
static const char *bad_call_option(const fp_pool *pool, const fp_call_opts *o) {
  if (o == NULL)
    return NULL;
  if (o->on_crash < 0 || o->on_crash > FP_CRASH_ABORT)
    return "opts->on_crash is not an fp_crash_policy";
  if (o->retries < 0)
    return "opts->retries is negative";
  if (o->progress < 0 || o->progress > FP_PROGRESS_CALLBACK)
    return "opts->progress is not an fp_progress_mode";
  if (o->progress == FP_PROGRESS_CALLBACK && pool->opts.progress_cb == NULL)
    return "opts->progress is FP_PROGRESS_CALLBACK but the pool has no "
           "progress_cb";
  if (!fp__timeout_ok(o->timeout))
    return "opts->timeout is not a number (NaN)";
  return NULL;
}

/* Resolves the call's options against the pool's into job. */
static int job_options(fp_pool *pool, fp__job *job, const fp_call_opts *o) {
  const char *bad = bad_call_option(pool, o);
  if (bad != NULL)
    return fp__refuse(bad);
  double t = o && o->timeout != 0 ? o->timeout : pool->opts.task_timeout;
  job->timeout = t > 0 ? t : 0;
  job->on_crash = o && o->on_crash ? o->on_crash : pool->opts.on_crash;
  job->retries = o && o->retries > 0 ? o->retries : pool->opts.retries;
  return 0;
}

/* A new job for fn with the call's options. */
static int job_alloc(fp_pool *pool, const void *fn, const fp_call_opts *o,
                     fp__job **out) {
  /* A forked copy of the master must not even take the pool's mutex: a
   * thread that held it at the fork does not exist here to release it. */
  if (fp__pool_foreign(pool))
    return fp__pool_refuse_in_copy("a pool call");
  int rc = fp__job_new(fn, out);
  if (rc == FP_ENOMEM)
    fp__set_last_error(rc, "out of memory for the call's job");
  else if (rc != 0)
    fp__set_last_error(rc, "fn is not code: no loaded module or executable "
                           "mapping holds that address");
  if (rc == 0 && (rc = job_options(pool, *out, o)) != 0)
    fp__job_free(*out);
  return rc;
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

/* The chunk size of a fixed-size map. CPython's default makes a few huge
 * chunks (2 M int64 on 2 workers: 250,000 items, 2 MB a frame), which
 * serialises copying and computing. The fast path caps the default at
 * FIXED_CHUNK_BYTES per direction so transfers pipeline with work; results
 * are identical either way. An explicit chunksize is used as given, but a
 * chunk must fit in one frame and its count in a u32. */
static size_t fixed_chunksize(fp_pool *pool, size_t n, size_t big,
                              size_t room, const fp_call_opts *o) {
  size_t cs = default_chunksize(pool, n, o);
  if (!(o && o->chunksize) && big > 0 && cs > FIXED_CHUNK_BYTES / big)
    cs = FIXED_CHUNK_BYTES / big > 0 ? FIXED_CHUNK_BYTES / big : 1;
  if (big > 0 && cs > room / big)
    cs = room / big;
  return cs > MAX_CHUNK_ITEMS ? MAX_CHUNK_ITEMS : cs;
}

/* Starts the caller's per-item outcomes (all 0: success) when it asked
 * for them; see fp_call_opts.item_status. */
static void track_items(fp__job *job, const fp_call_opts *o) {
  if (o == NULL || o->item_status == NULL || job->kind == FP__JOB_APPLY ||
      job->kind == FP__JOB_IMAP || job->kind == FP__JOB_IMAP_UNORDERED)
    return;
  job->item_status = o->item_status;
  if (job->n_items > 0)
    memset(job->item_status, 0, sizeof(int) * (size_t)job->n_items);
}

/* FP_EMSGSIZE, with the message: `what` (bytes long) is larger than what
 * one frame of this pool carries. */
static int refuse_too_big(const fp_pool *pool, const char *what, size_t bytes) {
  char msg[160];
  snprintf(msg, sizeof(msg),
           "too large for a frame: %s of %zu bytes (max_frame %zu leaves "
           "%zu bytes)",
           what, bytes, pool->max_frame, pool->max_frame - FP__FRAME_OVERHEAD);
  fp__set_last_error(FP_EMSGSIZE, msg);
  return FP_EMSGSIZE;
}

/* What is wrong with a fixed-size map's arguments, or NULL. */
static const char *bad_fixed_args(const fp_pool *pool, fp_elem_fn fn,
                                  const void *in, size_t n, size_t in_size,
                                  const void *out, size_t out_size) {
  if (pool == NULL)
    return "NULL pool";
  if (fn == NULL)
    return "NULL fn";
  if (n > 0 && in == NULL && in_size > 0)
    return "NULL in with n > 0 and in_size > 0";
  if (n > 0 && out == NULL && out_size > 0)
    return "NULL out with n > 0 and out_size > 0";
  if (in_size > UINT32_MAX || out_size > UINT32_MAX)
    return "in_size or out_size above UINT32_MAX";
  if (n > (size_t)INT64_MAX)
    return "n above INT64_MAX";
  return NULL;
}

/* A map's chunks are made up front, one record each (an imap's over a
 * buffer too, ~250 bytes a chunk with its span and pointer): a count of them
 * that could not fit in half the machine's memory gives FP_ENOMEM with a
 * message at once, before an allocation that the kernel's overcommit
 * might grant and the record writes would turn into the OOM killer's
 * visit (n = INT64_MAX makes 2^31 chunks of 2^32 items). */
static int chunk_table_fits(size_t nchunks, size_t n, size_t cs) {
  if (nchunks <= ((size_t)64 << 20) / sizeof(fp__chunk))
    return 0; /* 64 MiB of records at most: no need to ask the kernel */
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  size_t half =
      pages > 0 && page > 0 ? (size_t)pages / 2 * (size_t)page : SIZE_MAX;
  char msg[200];
  if (nchunks <= half / sizeof(fp__chunk))
    return 0;
  snprintf(msg, sizeof(msg),
           "a map of %zu items in chunks of %zu needs %zu chunk records, "
           "more than half this machine's memory holds: use a larger "
           "chunksize, or map in parts",
           n, cs, nchunks);
  fp__set_last_error(FP_ENOMEM, msg);
  return FP_ENOMEM;
}

/* Creates a result job over fixed-size elements. */
static int make_fixed(fp_pool *pool, fp_elem_fn fn, const void *in, size_t n,
                      size_t in_size, void *out, size_t out_size,
                      const fp_call_opts *o, fp__job **jobp) {
  const char *bad = bad_fixed_args(pool, fn, in, n, in_size, out, out_size);
  if (bad != NULL)
    return fp__refuse(bad);
  size_t room = pool->max_frame - FP__FRAME_OVERHEAD;
  size_t big = in_size > out_size ? in_size : out_size;
  if (big > room)
    return refuse_too_big(pool, "an element", big);
  fp__job *job;
  int rc = job_alloc(pool, (const void *)fn, o, &job);
  if (rc != 0)
    return rc;
  job->kind = FP__JOB_MAP_FIXED;
  job->wire = FP__WIRE_FIXED;
  job->in_size = in_size;
  job->out_size = out_size;
  job->fixed_in = in;
  job->fixed_out = out;
  job->n_items = (int64_t)n;
  size_t cs = fixed_chunksize(pool, n, big, room, o);
  job->chunksize = cs;
  job->nchunks = n / cs + (n % cs != 0);
  if ((rc = chunk_table_fits(job->nchunks, n, cs)) != 0 ||
      (job->nchunks &&
       !(job->carr = calloc(job->nchunks, sizeof(fp__chunk))))) {
    fp__job_free(job);
    if (rc == 0)
      fp__set_last_error(FP_ENOMEM, "out of memory for the map's chunks");
    return FP_ENOMEM;
  }
  for (size_t i = 0; i < job->nchunks; i++) {
    fp__chunk *ch = &job->carr[i];
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
  track_items(job, o);
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

/* Adds one item of l bytes at off to the spans, starting a new span when
 * the last is full (cs items or room bytes). Returns 0 or FP_ENOMEM. */
static int span_add(span **sp, size_t *ns, size_t *cap, size_t off, size_t l,
                    size_t cs, size_t room) {
  span *last = *ns ? &(*sp)[*ns - 1] : NULL;
  if (last == NULL || last->count >= cs || last->len + l > room) {
    if (*ns == *cap) {
      span *nsp = realloc(*sp, 2 * *cap * sizeof(**sp));
      if (nsp == NULL)
        return FP_ENOMEM;
      *sp = nsp;
      *cap *= 2;
    }
    (*sp)[(*ns)++] = (span){off, 0, 0};
    last = &(*sp)[*ns - 1];
  }
  last->len += l;
  last->count++;
  return 0;
}

/* Refuses a call over item number `index` of its input (from 0): what is
 * wrong with it, the code, and for a too-big item its size against the
 * room a frame leaves. Returns code. */
static int refuse_item(int code, int64_t index, size_t bytes, size_t room) {
  char msg[200];
  if (code == FP_EMSGSIZE)
    snprintf(msg, sizeof(msg),
             "too large for a frame: item %lld of %zu bytes (max_frame %zu "
             "leaves %zu bytes)",
             (long long)index, bytes, room + FP__FRAME_OVERHEAD, room);
  else if (code == FP_ETYPE)
    snprintf(msg, sizeof(msg),
             "item %lld of a starmap is not a list: each item must be the "
             "list of its task's arguments",
             (long long)index);
  else
    snprintf(msg, sizeof(msg),
             "item %lld of the input is not a well-formed value (%s)",
             (long long)index, fp_strerror(code));
  fp__set_last_error(code, msg);
  return code;
}

/* Cuts a buffer of encoded items into chunk spans of at most cs items and
 * at most `room` bytes. Returns 0 and the spans (caller frees *spans), or
 * FP_EPROTO / FP_ETYPE (starmap item not a list) / FP_EMSGSIZE (one item
 * larger than a frame) / FP_ENOMEM. */
static int cut_items(const unsigned char *buf, size_t len, size_t cs,
                     size_t room, int need_list, span **spans, size_t *nspans,
                     int64_t *nitems) {
  fp_reader r;
  size_t cap = 16, ns = 0;
  span *sp = malloc(cap * sizeof(*sp));
  int64_t n = 0;
  int rc = sp ? 0 : FP_ENOMEM;
  if (cs > MAX_CHUNK_ITEMS)
    cs = MAX_CHUNK_ITEMS;
  fp_reader_init(&r, buf, len);
  while (rc == 0 && !fp_reader_at_end(&r)) {
    const void *p;
    size_t l;
    int t = need_list ? fp_read_peek(&r) : FP_LIST;
    if (t != FP_LIST)
      rc = refuse_item(t < 0 ? t : FP_ETYPE, n, 0, room);
    else if ((rc = fp_read_span(&r, &p, &l)) != 0)
      rc = refuse_item(rc, n, 0, room);
    else if (l > room)
      rc = refuse_item(FP_EMSGSIZE, n, l, room);
    else
      rc = span_add(&sp, &ns, &cap,
                    (size_t)((const unsigned char *)p - buf), l, cs, room);
    n++;
  }
  if (rc != 0) {
    free(sp);
    return rc;
  }
  *spans = sp;
  *nspans = ns;
  *nitems = n;
  return 0;
}

/* Takes the call's items: borrowed when the caller waits (or there are
 * none), else copied. */
static int take_items(fp__job *job, const unsigned char *buf, size_t len,
                      int borrow) {
  if (borrow || len == 0) {
    job->input = (unsigned char *)buf;
    job->borrowed = 1;
    return 0;
  }
  job->input = len <= sizeof(job->in_small) ? job->in_small : fp__alloc(len);
  if (job->input == NULL)
    return FP_ENOMEM;
  memcpy(job->input, buf, len);
  job->input_len = len;
  return 0;
}

/* The chunk size of a values job. Malformed input gets the default of a
 * count of 0: cut_items then walks it and names the item at fault. */
static size_t values_chunksize(fp_pool *pool, const fp__job *job, size_t len,
                               const fp_call_opts *o) {
  size_t cnt = 0;
  if (o && o->chunksize)
    return o->chunksize;
  if (job->kind == FP__JOB_IMAP || job->kind == FP__JOB_IMAP_UNORDERED)
    return 1;
  (void)fp_values_count(job->input, len, &cnt);
  return default_chunksize(pool, cnt, o);
}

/* Makes the job's chunks from spans: heap chunks for iterators (they move
 * to the iterator one by one), one array for result jobs. */
static int make_chunks(fp__job *job, const span *spans, size_t nspans,
                       fp__chunk ***heap_out) {
  int iter = job->kind == FP__JOB_IMAP || job->kind == FP__JOB_IMAP_UNORDERED;
  fp__chunk **heap = NULL;
  if (iter && !(heap = calloc(nspans ? nspans : 1, sizeof(*heap))))
    return FP_ENOMEM;
  if (!iter && nspans == 1)
    job->carr = &job->one;
  else if (!iter && nspans && !(job->carr = calloc(nspans, sizeof(fp__chunk))))
    return FP_ENOMEM;
  int64_t start = 0;
  for (size_t i = 0; i < nspans; i++) {
    fp__chunk *ch = iter ? calloc(1, sizeof(*ch)) : &job->carr[i];
    if (ch == NULL) {
      for (size_t k = 0; k < i; k++)
        free(heap[k]);
      free(heap);
      return FP_ENOMEM;
    }
    *ch = (fp__chunk){.job = job, .number = i, .start = start,
                      .count = spans[i].count, .heap = iter,
                      .items = job->input + spans[i].off,
                      .items_len = spans[i].len};
    if (iter)
      heap[i] = ch;
    start += spans[i].count;
  }
  job->nchunks = nspans;
  *heap_out = heap;
  return 0;
}

/* Cuts a values job's input into chunks. */
static int cut_values(fp_pool *pool, fp__job *job, size_t len,
                      const fp_call_opts *o, fp__chunk ***heap) {
  size_t room = pool->max_frame - FP__FRAME_OVERHEAD, cs = 1;
  span one = {0, len, 1}, *spans = &one;
  size_t nspans = 1;
  int64_t nitems = 1;
  int rc = 0;
  if (job->kind != FP__JOB_APPLY) {
    cs = values_chunksize(pool, job, len, o);
    rc = cut_items(job->input, len, cs, room, job->kind == FP__JOB_STARMAP,
                   &spans, &nspans, &nitems);
    if (rc == 0 && (rc = chunk_table_fits(nspans, (size_t)nitems, cs)) != 0)
      free(spans);
    if (rc != 0)
      return rc;
  }
  job->chunksize = cs;
  job->n_items = nitems;
  rc = make_chunks(job, spans, nspans, heap);
  if (spans != &one)
    free(spans);
  return rc;
}

/* Creates a job over codec values (apply, map_values, starmap, imap).
 * Iterator jobs return their chunks in *heap (the caller queues them). */
static int make_values(fp_pool *pool, int kind, fp_task_fn fn,
                       const fp_writer *items, int borrow,
                       const fp_call_opts *o, fp__job **jobp,
                       fp__chunk ***heap) {
  *heap = NULL;
  if (pool == NULL || fn == NULL)
    return fp__refuse(pool == NULL ? "NULL pool" : "NULL fn");
  if (items != NULL && (items->err != 0 || items->depth != 0))
    return fp__refuse(items->err != 0
                          ? "the items' writer is in an error state"
                          : "the items' writer has an unclosed list");
  const unsigned char *buf = items ? items->data : NULL;
  size_t len = items ? items->len : 0, dummy;
  int rc;
  if (kind == FP__JOB_APPLY && len > pool->max_frame - FP__FRAME_OVERHEAD)
    return refuse_too_big(pool, "the arguments", len);
  if (kind == FP__JOB_APPLY && len > 0 &&
      (rc = fp_values_count(buf, len, &dummy)) != 0) {
    fp__set_last_error(rc, "the arguments are not well-formed codec values");
    return rc;
  }
  fp__job *job;
  if ((rc = job_alloc(pool, (const void *)fn, o, &job)) != 0)
    return rc;
  job->kind = kind;
  job->wire = kind == FP__JOB_STARMAP ? FP__WIRE_STAR : FP__WIRE_VALUES;
  if ((rc = take_items(job, buf, len, borrow)) != 0 ||
      (rc = cut_values(pool, job, len, o, heap)) != 0 ||
      (rc = progress_for(pool, job, o, job->n_items)) != 0) {
    for (size_t i = 0; *heap && i < job->nchunks; i++)
      fp__chunk_free((*heap)[i]);
    free(*heap);
    *heap = NULL;
    fp__job_free(job);
    return rc;
  }
  job->input_done = 1;
  track_items(job, o);
  *jobp = job;
  return 0;
}

/* ---- submitting ---------------------------------------------------------- */

/* Registers a job and queues its chunks (heap: an iterator's, else the
 * job's array), or fails at once when the pool does not accept work. */
static int submit_locked(fp_pool *pool, fp__job *job, fp__chunk **heap) {
  int rc = fp__pool_check_submit_locked(pool);
  if (rc != 0)
    return rc;
  for (size_t i = 0; i < job->nchunks; i++) {
    fp__chunk *ch = heap ? heap[i] : &job->carr[i];
    ch->seq = ++pool->next_seq;
    fp__sched_enqueue_locked(pool, ch);
  }
  fp__job_add_locked(&pool->jobs, job);
  fp__job_maybe_finish_locked(&pool->jobs, job); /* empty input */
  fp__sched_dispatch_locked(pool);
  return 0;
}

/* Ends a refused call: the last error gets rc's own text, unless what
 * refused it set a message of its own since sets0 (fp__err_sets).
 * Returns rc. */
static int fail_call(int rc, unsigned sets0) {
  if (fp__err_sets(FP__ERR_POOL) == sets0)
    fp__set_last_error(rc, NULL);
  return rc;
}

/* Attaches a fresh result to job and submits it. Takes job. */
static int start_result_job(fp_pool *pool, fp__job *job, const fp_call_opts *o,
                            fp_result **res) {
  fp_result *r = fp__result_new(pool, o);
  if (r == NULL) {
    fp__job_free(job);
    fp__set_last_error(FP_ENOMEM, "out of memory for the call's result");
    return FP_ENOMEM;
  }
  job->res = r;
  r->job = job;
  r->borrows = job->wire == FP__WIRE_FIXED || job->item_status != NULL;
  fp__pool_lock(pool);
  int rc = submit_locked(pool, job, NULL);
  int finished = rc == 0 && r->job == NULL; /* empty input: done */
  if (finished && !fp__on_pool_thread(pool))
    fp__pool_wake(pool); /* its callbacks run on the pool thread; under
                            pool->mu: thread_done may change meanwhile */
  /* A submitting thread takes in the results the workers published since
   * its last call, as a waiting caller does: a stream of apply_async then
   * keeps the workers' queues full from this thread alone, while the pool
   * thread sleeps (50,000 calls: 1.3-1.5 M/s instead of 0.8, and about
   * 3,000 fewer sleeps and wake-ups across the four threads). */
  if (rc != 0 || fp__on_pool_thread(pool))
    fp__pool_unlock(pool); /* refused (closed, joined ...): nothing to do */
  else
    fp__sched_poll_leave(pool);
  if (rc != 0) {
    fp__job_free(job);
    fp__result_discard(r);
    return rc;
  }
  *res = r;
  return 0;
}

static int blocking_allowed(fp_pool *pool) {
  if (fp__on_pool_thread(pool) || fp__result_in_callback() != NULL) {
    fp__set_last_error(FP_EINVAL,
                       "blocking pool call from a callback (pool thread)");
    return 0;
  }
  return 1;
}

/* Waits for a blocking call's result, copies its values, frees it. */
static int finish_blocking(fp_result *res, fp_writer *out) {
  int rc = fp_result_get(res, FP_FOREVER);
  if (rc == 0 && out != NULL && res->value_len > 0) { /* not streamed */
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

/* Makes a blocking call's results stream into out (see job.c). Results
 * are often about as large as the items (transforms of strings or byte
 * buffers): reserving that much up front spares the writer its doubling
 * copies. Pages never written are never touched, so a smaller result costs
 * address space, not memory. */
static void stream_into(fp__job *job, fp_writer *out, size_t guess) {
  if (out == NULL || out->depth != 0 || out->err != 0)
    return;
  job->sync_out = out;
  job->sync_len0 = out->len;
  if (guess > 0 && guess < ((size_t)1 << 30) &&
      fp_writer_reserve(out, guess) != 0)
    out->err = 0; /* only a hint: nothing was written */
}

/* ---- the public calls ------------------------------------------------------ */

static int values_async(fp_pool *pool, int kind, fp_task_fn fn,
                        const fp_writer *items, const fp_call_opts *opts,
                        fp_result **res) {
  fp__job *job;
  fp__chunk **heap;
  if (res == NULL)
    return fp__refuse("NULL result pointer");
  *res = NULL;
  unsigned sets0 = fp__err_sets(FP__ERR_POOL);
  int rc = make_values(pool, kind, fn, items, 0, opts, &job, &heap);
  if (rc != 0)
    return fail_call(rc, sets0);
  return start_result_job(pool, job, opts, res);
}

static int values_blocking(fp_pool *pool, int kind, fp_task_fn fn,
                           const fp_writer *items, fp_writer *out,
                           const fp_call_opts *opts) {
  fp__job *job;
  fp__chunk **heap;
  fp_result *res;
  if (pool == NULL)
    return fp__refuse("NULL pool");
  if (!blocking_allowed(pool))
    return FP_EINVAL; /* its message is set */
  /* Refused before any task runs: its results could not be kept. */
  if (out != NULL && out->err != 0)
    return fp__refuse("the output writer is in an error state: reset it "
                      "first");
  /* Items are borrowed for the call, unless they are out's own bytes:
   * the results streaming into out would move them. */
  unsigned sets0 = fp__err_sets(FP__ERR_POOL);
  int rc = make_values(pool, kind, fn, items, items != out, opts, &job, &heap);
  if (rc != 0)
    return fail_call(rc, sets0);
  stream_into(job, out,
              kind == FP__JOB_APPLY || items == NULL ? 0 : items->len);
  if ((rc = start_result_job(pool, job, NULL, &res)) != 0)
    return rc; /* its message is set */
  return finish_blocking(res, out);
}

int fp_pool_apply_async(fp_pool *pool, fp_task_fn fn, const fp_writer *args,
                        const fp_call_opts *opts, fp_result **res) {
  return values_async(pool, FP__JOB_APPLY, fn, args, opts, res);
}

int fp_pool_apply(fp_pool *pool, fp_task_fn fn, const fp_writer *args,
                  fp_writer *out) {
  return values_blocking(pool, FP__JOB_APPLY, fn, args, out, NULL);
}

int fp_pool_map_async(fp_pool *pool, fp_elem_fn fn, const void *in, size_t n,
                      size_t in_size, void *out, size_t out_size,
                      const fp_call_opts *opts, fp_result **res) {
  fp__job *job;
  if (res == NULL)
    return fp__refuse("NULL result pointer");
  *res = NULL;
  unsigned sets0 = fp__err_sets(FP__ERR_POOL);
  int rc = make_fixed(pool, fn, in, n, in_size, out, out_size, opts, &job);
  if (rc != 0)
    return fail_call(rc, sets0);
  return start_result_job(pool, job, opts, res);
}

/* Results of a large blocking map land in the caller's output array, which
 * is often fresh memory: every first write of a page is a page fault, taken
 * one after another by the thread copying results in (4096 of them for
 * 16 MB, ~3 ms here: half of a 2 M-int64 map). The caller's thread has
 * nothing else to do while the workers start: it faults the array's whole
 * pages in itself (MADV_POPULATE_WRITE: as if written, contents unchanged),
 * overlapped with the work. Only a hint: failure (an old kernel, memory
 * the caller cannot write) changes nothing, the copies fault as before. */
#define PREFAULT_MIN_BYTES (256 * 1024)

#define PREFAULT_STEP_BYTES (256 * 1024)

/* The whole pages of out, a step at a time; each step that succeeds also
 * tells the result that those pages take stores (job.c checks each
 * chunk's range of out before storing it, and then needs no system call
 * of its own for pages already done here). */
static void prefault_output(fp_result *res, void *out, size_t bytes) {
#ifdef MADV_POPULATE_WRITE
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t lo = ((uintptr_t)out + page - 1) & ~(page - 1);
  uintptr_t hi = ((uintptr_t)out + bytes) & ~(page - 1);
  if (bytes < PREFAULT_MIN_BYTES || hi <= lo)
    return;
  atomic_store_explicit(&res->out_pre_hi, lo, memory_order_relaxed);
  atomic_store_explicit(&res->out_pre_lo, lo, memory_order_release);
  for (uintptr_t p = lo; p < hi;) {
    size_t len = hi - p < PREFAULT_STEP_BYTES ? hi - p : PREFAULT_STEP_BYTES;
    if (madvise((void *)p, len, MADV_POPULATE_WRITE) != 0)
      return; /* an old kernel, or memory the check will refuse */
    p += len;
    atomic_store_explicit(&res->out_pre_hi, p, memory_order_release);
  }
#else
  (void)res;
  (void)out;
  (void)bytes;
#endif
}

int fp_pool_map(fp_pool *pool, fp_elem_fn fn, const void *in, size_t n,
                size_t in_size, void *out, size_t out_size,
                const fp_call_opts *opts) {
  fp__job *job;
  fp_result *res;
  if (pool == NULL)
    return fp__refuse("NULL pool");
  if (!blocking_allowed(pool))
    return FP_EINVAL; /* its message is set */
  unsigned sets0 = fp__err_sets(FP__ERR_POOL);
  int rc = make_fixed(pool, fn, in, n, in_size, out, out_size, opts, &job);
  if (rc != 0)
    return fail_call(rc, sets0);
  if ((rc = start_result_job(pool, job, NULL, &res)) != 0)
    return rc; /* its message is set */
  prefault_output(res, out, n * out_size);
  return finish_blocking(res, NULL);
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

/* ---- iterators ----------------------------------------------------------- */

/* Attaches a fresh iterator to job and submits it with its chunks. */
static int start_iter(fp_pool *pool, fp__job *job, fp__chunk **heap,
                      int ordered, fp_iter **out) {
  fp_iter *it = fp__iter_new(pool, ordered);
  int rc = 0;
  if (it == NULL) {
    fp__set_last_error(FP_ENOMEM, "out of memory for the iterator");
    rc = FP_ENOMEM;
  }
  if (it != NULL) {
    job->it = it;
    it->job = job;
    fp__pool_lock(pool);
    rc = submit_locked(pool, job, heap);
    fp__pool_unlock_waking(pool); /* an empty input ended the job */
  }
  if (rc != 0) {
    for (size_t i = 0; heap && i < job->nchunks; i++)
      fp__chunk_free(heap[i]);
    fp__job_free(job);
    if (it)
      fp__iter_destroy(it);
  } else {
    *out = it;
  }
  free(heap);
  return rc;
}

static int imap_common(fp_pool *pool, fp_task_fn fn, const fp_writer *items,
                       const fp_call_opts *opts, int ordered, fp_iter **it) {
  fp__job *job;
  fp__chunk **heap;
  if (it == NULL)
    return fp__refuse("NULL iterator pointer");
  *it = NULL;
  unsigned sets0 = fp__err_sets(FP__ERR_POOL);
  int rc = make_values(pool, ordered ? FP__JOB_IMAP : FP__JOB_IMAP_UNORDERED,
                       fn, items, 0, opts, &job, &heap);
  if (rc != 0)
    return fail_call(rc, sets0);
  return start_iter(pool, job, heap, ordered, it); /* sets its message */
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

static int imap_producer_common(fp_pool *pool, fp_task_fn fn,
                                fp_producer_fn producer, void *parg,
                                const fp_call_opts *opts, int ordered,
                                fp_iter **out) {
  if (out == NULL)
    return fp__refuse("NULL iterator pointer");
  *out = NULL;
  if (pool == NULL || fn == NULL || producer == NULL)
    return fp__refuse(pool == NULL ? "NULL pool"
                      : fn == NULL ? "NULL fn"
                                   : "NULL producer");
  fp__job *job;
  unsigned sets0 = fp__err_sets(FP__ERR_POOL);
  int rc = job_alloc(pool, (const void *)fn, opts, &job);
  if (rc != 0)
    return fail_call(rc, sets0);
  job->borrowed = 1;
  job->kind = ordered ? FP__JOB_IMAP : FP__JOB_IMAP_UNORDERED;
  job->wire = FP__WIRE_VALUES;
  job->chunksize = opts && opts->chunksize ? opts->chunksize : 1;
  if (job->chunksize > MAX_CHUNK_ITEMS)
    job->chunksize = MAX_CHUNK_ITEMS;
  if ((rc = progress_for(pool, job, opts, -1)) != 0) {
    fp__job_free(job);
    return fail_call(rc, sets0);
  }
  if ((rc = start_iter(pool, job, NULL, ordered, out)) != 0)
    return rc; /* its message is set */
  fp_iter *it = *out;
  it->producer = producer;
  it->parg = parg;
  it->chunksize = job->chunksize;
  it->readahead = opts && opts->readahead
                      ? opts->readahead
                      : 8 * job->chunksize * (size_t)pool->nworkers;
  /* A readahead below chunksize is honoured: chunks then stop short. One
   * past INT64_MAX (SIZE_MAX for "no bound") is as good as no bound: the
   * iterator counts items in int64_t. */
  if (it->readahead > (size_t)INT64_MAX)
    it->readahead = (size_t)INT64_MAX;
  fp__iter_fill(it); /* a producer error is reported by fp_iter_next */
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
