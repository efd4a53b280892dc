/* SPDX-License-Identifier: MIT */
/* job.h - jobs, chunks, results and iterators: the state of the work.
 *
 * A job is one API call (apply, map, starmap, imap ...). It is cut into
 * chunks, the unit a worker runs. A job delivers its outcome either to a
 * result object (CPython's AsyncResult) or to an iterator (IMapIterator).
 * Every change of this state happens in job.c; the scheduler (sched.c,
 * deaths.c) moves chunks between the queue and workers and reports each
 * finished chunk with fp__chunk_done_locked(); result.c, iter.c and
 * calls.c are the public calls over it.
 *
 * Locking: "_locked" functions hold pool->mu, the pool's one mutex, which
 * guards every job and chunk. Results and iterators have their own mutex
 * so they can outlive the pool; the order is always pool->mu before
 * res->mu / it->mu, never the reverse.
 */
#ifndef FP_POOL_JOB_H
#define FP_POOL_JOB_H

#include "pool/link.h"
#include "pool/progress.h"
#include "pool/proto.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct fp__job fp__job;
typedef struct fp__chunk fp__chunk;

typedef struct fp__item_err {
  int64_t index;
  int code;
  char *msg; /* malloc'd (strndup), NUL-terminated */
} fp__item_err;

enum { FP__CH_PENDING = 0, FP__CH_SENT, FP__CH_DONE };

/* Inputs and results of up to this many bytes (an apply's arguments and
 * its one result value, usually) live inside the job, chunk and result
 * structures instead of buffers of their own: a small apply_async then
 * costs two allocations (job, result) instead of six, which was 40% of the
 * master's instructions per call. */
#define FP__INLINE_BYTES 48

struct fp__chunk {
  fp__job *job;
  fp__chunk *qprev, *qnext; /* pending queue links (sched.c) */
  fp__chunk *dnext;         /* iterator's completion queue */
  uint64_t seq;             /* unique per pool, names it on the wire */
  uint64_t nth;             /* sent as the nth frame to its worker's
                               process (sched.c; steal.c takes it back) */
  size_t number;            /* position in the job */
  int64_t start;            /* input index of the first item */
  uint32_t count;           /* items */
  int state;
  int attempts;             /* crashes survived under the retry policy */
  int unblamed;             /* deaths of its worker, while it held it,
                               that named no chunk running (deaths.c) */
  int heap;                 /* allocated alone (iterator chunks) */
  const unsigned char *items; /* payload to send (borrowed from the job) */
  size_t items_len;
  unsigned char *res;       /* values kinds: encoded results, owned
                               (or res_small) */
  size_t res_len;
  unsigned char *res_base;  /* when set, res points into this buffer of */
  size_t res_cap;           /* res_cap bytes, which is what gets freed */
  fp__item_err *errs;       /* failed items, ascending index */
  uint32_t nerr;
  unsigned char *owned_items; /* producer chunks own their items */
  size_t owned_cap;
  unsigned char res_small[FP__INLINE_BYTES]; /* small results */
};

enum {
  FP__JOB_APPLY = 1,
  FP__JOB_MAP_FIXED,
  FP__JOB_MAP_VALUES,
  FP__JOB_STARMAP,
  FP__JOB_IMAP,
  FP__JOB_IMAP_UNORDERED
};

struct fp__job {
  fp__job *jprev, *jnext; /* the jobset's active jobs */
  int kind;
  uint8_t wire;
  fp__fnref fn;
  size_t in_size, out_size;
  const unsigned char *fixed_in; /* FIXED: caller's arrays (not copied) */
  unsigned char *fixed_out;
  uintptr_t out_ok_lo, out_ok_hi; /* FIXED: pages of fixed_out found
                                     writable so far (job.c) */
  unsigned char *input;         /* values: the items (copied, possibly
                                   into in_small, or borrowed) */
  size_t input_len;
  int borrowed;                 /* input belongs to the caller */
  fp__chunk *carr;              /* result jobs: all chunks, one array
                                   (&one for a single chunk) */
  size_t nchunks;
  size_t chunks_done;
  size_t travelling;            /* chunks sent and not back (sched.c) */
  int64_t n_items, items_done;
  size_t chunksize;
  double timeout;               /* per item, seconds; 0 none */
  int *item_status;             /* caller's per-item outcomes, or NULL */
  int on_crash, retries;
  fp__progress *pg;
  int input_done;               /* no more chunks will be added */
  int input_read_by_join;       /* a join read what was left (pool.c) */
  int finished;                 /* outcome delivered */
  int canceled;                 /* failed as a whole (cancel, abort ...) */
  int err_code;                 /* lowest failing item so far */
  int64_t err_index;
  char *err_msg;
  fp_result *res;               /* result jobs */
  fp_iter *it;                  /* iterator jobs */
  /* blocking calls: results go straight to the caller's writer */
  fp_writer *sync_out;
  size_t sync_len0;             /* its length before the call */
  size_t streamed;              /* chunks already appended to it */
  int stream_err;               /* an append failed */
  fp__chunk one;                /* carr of a one-chunk result job */
  unsigned char in_small[FP__INLINE_BYTES]; /* small copied inputs */
};

struct fp_result {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  int refs;          /* user + job */
  _Atomic int ready; /* written under mu; read without it by waiters
                        spinning before they sleep */
  int user_freed;
  int borrows;       /* the job writes the caller's memory (fixed-size
                        map arrays, item_status) until it finishes */
  int code;
  int64_t err_index;
  char *msg;
  unsigned char *value;  /* owned, or value_small */
  size_t value_len;
  fp__job *job;      /* while running; guarded by pool->mu */
  fp_pool *pool;     /* while running; guarded by mu */
  fp_callback cb, ecb;
  void *arg;
  int after_progress; /* its job's last progress callback runs first, on
                         the pool thread: only that thread delivers it */
  /* A blocking fixed-size map: pages [out_pre_lo, out_pre_hi) of `out`
   * that the caller's prefault found writable so far (calls.c); the
   * result checks chunks against them without a system call (job.c). */
  _Atomic uintptr_t out_pre_lo, out_pre_hi;
  fp_result *done_next; /* the jobset's list of callbacks to run */
  uint64_t fork_gen;    /* the process it was made in (forked.c) */
  unsigned char value_small[FP__INLINE_BYTES]; /* a small value */
};

struct fp_iter {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  uint64_t fork_gen;    /* the process it was made in (forked.c) */
  int refs;             /* user + job */
  int ordered;
  const fp_pool *owner; /* the pool that made it (never cleared) */
  fp_pool *pool;        /* NULL once the job finished; guarded by mu */
  fp__job *job;         /* guarded by pool->mu */
  /* delivery (guarded by mu) */
  fp__chunk *dhead, *dtail; /* completed chunks, completion order */
  fp__chunk **done_by_num;  /* ordered: completed chunks by number */
  size_t done_cap;
  size_t next_num;          /* ordered: next chunk number to hand out */
  fp__chunk *cur;           /* chunk being handed out */
  uint32_t cur_pos;         /* item within cur */
  fp_reader cur_rd;         /* over cur->res */
  size_t cur_err;           /* next error record in cur */
  _Atomic int64_t produced; /* the producer's side writes it (the
                               consumer's thread, or a joining one) */
  int64_t consumed;
  int finished;             /* the job ended (all chunks delivered) */
  int final_code;           /* job-level failure (terminate, producer) */
  char *final_msg;
  int64_t final_index;      /* its item (abort policy), or -1 */
  int64_t last_index;
  char msg[FP__MSG_LEN];
  /* producer side (the consumer's thread, or a joining one) */
  pthread_mutex_t pmu;  /* held around every producer call: never two at
                           once, and none after fp_iter_free */
  fp_producer_fn producer;
  void *parg;
  fp_writer pitem;           /* where the producer writes its next item (pmu) */
  _Atomic int producer_done; /* read unlocked by the consumer */
  size_t readahead;
  size_t chunksize;
};

/* The pool's jobs: the active ones, and finished results whose callbacks
 * the pool thread has yet to run (outside pool->mu). */
typedef struct fp__jobset {
  fp__job *head;
  fp_result *done_head, *done_tail;
  fp__progress_queue pq; /* progress callbacks due (pool.c runs them) */
} fp__jobset;

/* ---- job.c -------------------------------------------------------------- */

/* A new job for fn (FP_ENOMEM, or the fnref error). */
int fp__job_new(const void *fn, fp__job **out);
void fp__job_free(fp__job *job);
/* Releases what a chunk owns; frees it when it was allocated alone. */
void fp__chunk_free(fp__chunk *ch);

/* Makes job active. */
void fp__job_add_locked(fp__jobset *js, fp__job *job);

/* Checks a returned chunk's results before anything is taken: `len`
 * bytes of values at data, `nerr` error records in errs_len bytes.
 * Returns 0 or FP_EPROTO (the worker broke the protocol). What it checks
 * must be the master's own copy, the very bytes then taken: a worker may
 * rewrite shared memory between a check and a use. */
int fp__chunk_check_results(const fp__chunk *ch, const unsigned char *data,
                            size_t len, const unsigned char *errs,
                            size_t errs_len, uint32_t nerr);

/* Takes a finished chunk's (checked) results: `data` (len bytes) for
 * values wires (copied, or taken from *keep when not NULL, see link.h),
 * written to the caller's array for the fixed wire; `errs` holds nerr
 * error records. Then counts the chunk done, which may finish the job.
 * The caller has taken the chunk off its worker (job->travelling). */
void fp__chunk_results_locked(fp__jobset *js, fp__chunk *ch,
                              const unsigned char *data, size_t len,
                              const unsigned char *errs, uint32_t nerr,
                              fp__rbuf *keep);

/* Fails a chunk whose worker died: the item `item` carries code and msg;
 * an iterator's other items of the chunk fail as lost. item -1: the chunk
 * never ran (it could not be sent): every item fails with code. Counts
 * the chunk done, which may finish the job. */
void fp__chunk_crashed_locked(fp__jobset *js, fp__chunk *ch, int code,
                              int64_t item, const char *msg);

/* A chunk of an already finished job came back (or its worker died),
 * and the caller took it off its worker (job->travelling): frees it and,
 * with the last one, the job. */
void fp__chunk_orphan_locked(fp__chunk *ch);

/* Finishes a job that failed as a whole (terminate, cancel, abort policy,
 * a storm, a producer error): delivers the failure now. The caller has
 * already dropped its queued chunks; chunks still travelling come back to
 * fp__chunk_orphan_locked. `index` is the item to blame or -1. */
void fp__job_fail_locked(fp__jobset *js, fp__job *job, int code,
                         int64_t index, const char *msg);

/* Finishes a job with no chunk left to wait for (an empty input, the
 * producer's last chunk already done). */
void fp__job_maybe_finish_locked(fp__jobset *js, fp__job *job);

/* Takes the finished results whose callbacks must run (pool thread, with
 * pool->mu held); run them with fp__results_deliver() after unlocking. */
fp_result *fp__jobset_take_done_locked(fp__jobset *js);
/* Takes the finished results that have no callbacks (any thread, with
 * pool->mu held), so the caller can mark them ready itself with
 * fp__results_deliver(); the others stay for the pool thread. *rest says
 * whether any stayed. */
fp_result *fp__jobset_take_plain_locked(fp__jobset *js, int *rest);
/* Runs each result's callback, then marks it ready and wakes waiters. */
void fp__results_deliver(fp_result *list);

/* Takes the next due progress callback (0: none); run it, without the
 * lock, with fp__progress_call_deliver, which refuses blocking pool calls
 * from it as from a result's callback. */
int fp__jobset_take_progress_locked(fp__jobset *js, fp__progress_call *c);
void fp__progress_call_deliver(const fp__progress_call *c);

/* The result currently in its callback on this thread, or NULL. */
fp_result *fp__result_in_callback(void);
/* Whether this thread is running, at any depth, the producer of iterator
 * it or of an iterator of pool: a producer runs with its iterator's
 * producer lock held, and calls that would take it again or wait for its
 * input are refused (iter.c, pool.c). Either argument may be NULL. */
int fp__producer_running(const fp_pool *pool, const fp_iter *it);
/* Drops a reference, freeing r with the last; use_mu 0 only in a forked
 * copy of the master (result.c, res_lock). */
void fp__result_unref(fp_result *r, int use_mu);
void fp__iter_destroy(fp_iter *it);

#endif
