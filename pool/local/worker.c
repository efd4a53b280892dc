/* SPDX-License-Identifier: MIT */
/* worker.c - a worker process of the local link: a loop over its task
 * ring, which spins briefly and then sleeps when the ring is empty.
 *
 * The fork server forks the worker and hands it an fp__wconf (what the
 * pool asked for) and an fp__wboot (its slot, its socket, its parent, the
 * signal mask to run tasks with, the shared memory). The worker pins
 * itself and applies the memory limit if asked, runs the user's
 * initializer, says READY, then loops: take the next TASK frame from its
 * task ring (or, when the ring holds a SOCK marker, from its socket), check
 * it, run the function over the chunk's items in place, release the ring
 * entry, publish one RESULT frame. With nothing in the ring it spins for up
 * to FP__SPIN_NS while the pool's CPU budget allows, then sleeps on the
 * ring's futex (local.h has the protocol).
 *
 * Before each item it publishes the chunk and item it is running in its
 * shared slot (relaxed atomic stores), so when it dies the master knows
 * which item was executing. The item clock (started_ns) runs only while a
 * task runs: it stops when the chunk's last item returned, before the
 * result is sent, so a slow master never makes a finished chunk look like
 * a task over its time limit. The chunk id (seq) stays set until the
 * result is sent, so a worker that dies while sending is still charged
 * with the chunk. A failing item does not stop the chunk: its error is
 * recorded and the next item runs.
 *
 * A RESULT payload is never larger than cfg->max_frame, whichever way it
 * goes (the master drops any frame over that limit and kills the worker).
 * Results of up to FP__RING_MAX bytes go through the worker's ring in
 * shared memory when there is room (see local.h for the kick protocol);
 * the rest go on the socket. Every frame header is written by frame.c.
 *
 * The worker trusts nothing in a TASK frame: a frame whose fields
 * disagree with its length or with each other ends the worker with
 * FP__WEXIT_PROTO before any item runs; so does a corrupt task ring. It
 * exits with FP__WEXIT_OK at a FINISH marker or when its socket reaches
 * EOF (the pool is closing or the master died), or after maxtasksperchild
 * chunks (it says RETIRE first), and dies with its parent
 * (PR_SET_PDEATHSIG). It always leaves with _exit(): the user's atexit
 * handlers belong to the master.
 */
#include "pool/local/local.h"
#include "ipc/wire/idle.h"
#include "ipc/wire/frame.h"
#include "forkpool.h"
#include "affinity/affinity.h"
#include "pool/clock.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* Task-side state: a worker is single-threaded, so plain globals are the
 * per-process state they look like. In the master they keep their initial
 * values, which is what the fp_task_* calls document there. */
static int g_worker_id = -1;
static int64_t g_item = -1;
static char g_msg[FP__MSG_LEN];
static int g_msg_set;

int64_t fp_task_index(void) {
  return g_item;
}

int fp_task_worker_id(void) {
  return g_worker_id;
}

int fp_task_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (fmt != NULL) {
    vsnprintf(g_msg, sizeof(g_msg), fmt, ap);
    g_msg_set = 1;
  }
  va_end(ap);
  return FP_ETASK;
}

/* Before a kick, a worker with no task queued watches this long for a
 * caller to start polling (or the pool thread to wake): a blocking call's
 * caller submits and then polls, and a short task can finish in between
 * (the worker would spin for its next task anyway). A kick costs
 * the worker 10-12 us here (the wake-up's IPI is a VM exit) and sends the
 * result the slow way round (pool thread, then a condition variable):
 * without this watch one apply in twenty took 10-50 us instead of 1-2. */
#define KICK_GRACE_NS 4000

/* The worker's own state. */
typedef struct worker {
  const fp__wconf *cfg;
  int fd;         /* its socket */
  fp__slot *slot; /* what it publishes about the running item */
  fp__ring *ring; /* its result ring */
  fp__tring *tring;       /* its task ring */
  uint64_t tpos;          /* task ring: just past the entry being run */
  uint64_t taken;         /* task frames begun (slot->taken) */
  int64_t moved_ns;       /* last move_off_cpu() */
  fp__local_shm *shm;     /* master_idle and the CPU budget */
  _Atomic int *master_idle;
  fp_writer in;           /* raw bytes read from the socket */
  size_t off;             /* start of the next frame in `in` */
  fp_writer data;         /* the chunk's item results */
  fp_writer item;         /* what a task after a chunk's first writes */
  fp_writer errs;         /* the chunk's error records */
  uint32_t nerr;          /* records in errs */
  int timed;              /* publish each item's start time */
  int64_t deferred_since; /* first result not kicked yet, 0: none */
  int gave_back;          /* Manager heaps given back since the last task
                             (all of it: nothing left to retry) */
} worker;

/* A TASK frame that passed parse_task(). */
typedef struct chunk {
  fp__task_hdr th;
  const unsigned char *items; /* inside the read buffer */
  size_t items_len;
} chunk;

/* The worker cannot even allocate the report of a failure. It ends the
 * way the kernel's OOM killer would end it, with SIGKILL, which the master
 * reports against the chunk it was running; a plain exit status would
 * claim a cause that is not true. */
static void die_nomem(void) __attribute__((noreturn));
static void die_nomem(void) {
  raise(SIGKILL);
  abort(); /* SIGKILL cannot be blocked or caught: never reached */
}

/* Writes all of iov, looping over short writes and EINTR. Returns 0 or
 * -errno (EPIPE when the master is gone; MSG_NOSIGNAL keeps SIGPIPE away).
 * iov is consumed. */
static int send_all(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = iov;
    mh.msg_iovlen = (size_t)n;
    ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
    if (w < 0 && errno == EAGAIN) {
      /* A task set O_NONBLOCK on the descriptor (it is shared with
       * every copy of it the task made): wait for room as a blocking
       * send would. */
      struct pollfd pf = {fd, POLLOUT, 0};
      if (poll(&pf, 1, -1) >= 0 || errno == EINTR)
        continue;
    }
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

/* Sends a header-only message (READY, RETIRE, KICK). Returns 0 or
 * -errno. */
static int send_simple(int fd, int type) {
  fp__res_hdr h;
  unsigned char fh[FP__FRAME_HDR];
  memset(&h, 0, sizeof(h));
  h.type = (uint8_t)type;
  fp__frame_put_hdr(fh, sizeof(h));
  struct iovec iov[2] = {{fh, sizeof(fh)}, {&h, sizeof(h)}};
  return send_all(fd, iov, 2);
}

/* Sends a RESULT payload larger than max_frame as PART frames (proto.h):
 * its `total` bytes are those of seg[0..nseg), nseg <= 3, cut into frames
 * of at most max_frame. Returns 0 or -errno. */
static int send_parts(int fd, size_t max_frame, const struct iovec *seg,
                      int nseg, size_t total) {
  size_t room = max_frame - sizeof(fp__part_hdr), sent = 0, so = 0;
  int k = 0;
  while (sent < total) {
    size_t len = total - sent < room ? total - sent : room;
    fp__part_hdr ph;
    unsigned char fh[FP__FRAME_HDR];
    struct iovec iov[2 + 3];
    int m = 0;
    memset(&ph, 0, sizeof(ph));
    ph.type = FP__MSG_PART;
    ph.last = sent + len == total;
    fp__frame_put_hdr(fh, sizeof(ph) + len);
    iov[m++] = (struct iovec){fh, sizeof(fh)};
    iov[m++] = (struct iovec){&ph, sizeof(ph)};
    /* The next len bytes: the rest of segment k from so, and on. */
    for (size_t need = len; need > 0 && k < nseg;) {
      size_t take = seg[k].iov_len - so < need ? seg[k].iov_len - so : need;
      if (take > 0)
        iov[m++] = (struct iovec){(char *)seg[k].iov_base + so, take};
      so += take;
      need -= take;
      if (so == seg[k].iov_len) {
        k++;
        so = 0;
      }
    }
    int rc = send_all(fd, iov, m);
    if (rc != 0)
      return rc;
    sent += len;
  }
  return 0;
}

/* Appends one error record for item `index`. A failed append leaves a
 * sticky error in w->errs, which fit_result() turns into a failure of the
 * whole chunk. */
static void add_error(worker *w, int64_t index, int code, const char *msg) {
  fp__err_rec rec;
  rec.index = index;
  rec.code = code;
  rec.msg_len = (uint32_t)strlen(msg);
  fp_writer_append(&w->errs, &rec, sizeof(rec));
  fp_writer_append(&w->errs, msg, rec.msg_len);
  w->nerr++;
}

/* Records the failure of item `index` from the task's return code and
 * the message it left with fp_task_fail(), if any. */
static void item_failed(worker *w, int64_t index, int rc) {
  char buf[FP__MSG_LEN + 64];
  if (g_msg_set)
    snprintf(buf, sizeof(buf), "item %lld: %s", (long long)index, g_msg);
  else if (rc > 0) /* not an error code: reported as FP_ETASK */
    snprintf(buf, sizeof(buf), "item %lld: task returned %d (a task returns "
             "0 or a negative code)", (long long)index, rc);
  else
    snprintf(buf, sizeof(buf), "item %lld: task returned %s (%s)",
             (long long)index, fp_err_name(rc), fp_strerror(rc));
  add_error(w, index, rc < 0 ? rc : FP_ETASK, buf);
}

/* Publishes the item about to run (see the file header). */
static void publish_item(worker *w, int64_t index) {
  g_item = index;
  g_msg_set = 0;
  atomic_store_explicit(&w->slot->item, index, memory_order_relaxed);
  if (w->timed)
    atomic_store_explicit(&w->slot->started_ns, fp__now_ns(),
                          memory_order_release);
}

/* ---- checking a TASK frame ----------------------------------------------- */

/* Checks the fields of a fixed-size chunk: the items are exactly count
 * elements of in_size bytes, and count outputs of out_size bytes stay
 * within max_frame (the master cuts chunks so that they do; a larger
 * product would only make us allocate what no frame can carry). */
static int check_fixed(const chunk *ch, size_t max_frame) {
  size_t in_bytes, out_bytes;
  if (ch->th.flags & FP__TASK_WHOLE)
    return FP_EPROTO;
  if (__builtin_mul_overflow((size_t)ch->th.count, (size_t)ch->th.in_size,
                             &in_bytes) ||
      in_bytes != ch->items_len)
    return FP_EPROTO;
  if (__builtin_mul_overflow((size_t)ch->th.count, (size_t)ch->th.out_size,
                             &out_bytes) ||
      out_bytes > max_frame)
    return FP_EPROTO;
  return 0;
}

/* Checks the items of a values or star chunk: well-formed codec values,
 * exactly count of them, or with FP__TASK_WHOLE (apply) one item made of
 * all of them. fp_values_count() walks every value within items_len, so
 * afterwards no item read can fail or leave the items. */
static int check_values(const chunk *ch) {
  size_t n = 0;
  if (ch->items_len > 0 && fp_values_count(ch->items, ch->items_len, &n) != 0)
    return FP_EPROTO;
  if (ch->th.flags & FP__TASK_WHOLE)
    return ch->th.count == 1 ? 0 : FP_EPROTO;
  return n == ch->th.count ? 0 : FP_EPROTO;
}

/* Parses and checks a TASK payload (p, len) into *ch. Returns 0, or
 * FP_EPROTO for a frame the master cannot have written: too short, items
 * beyond the frame, a frame length that breaks the alignment promise of
 * proto.h, an unknown wire or flag, item indices that would overflow, or
 * a count that disagrees with the items. ch->items points into p. */
static int parse_task(const unsigned char *p, size_t len, size_t max_frame,
                      chunk *ch) {
  const size_t head = sizeof(ch->th) + FP__HDR_PAD;
  const unsigned known = FP__TASK_TIMED | FP__TASK_WHOLE;
  if (len < head || (FP__FRAME_HDR + len) % FP__FRAME_ALIGN != 0)
    return FP_EPROTO;
  memcpy(&ch->th, p, sizeof(ch->th));
  const fp__task_hdr *th = &ch->th;
  if (th->type != FP__MSG_TASK || (th->flags & ~known) != 0 ||
      th->items_len > len - head)
    return FP_EPROTO;
  /* Item indices start + i must not overflow an int64_t. */
  if (th->start < 0 || th->start > INT64_MAX - (int64_t)th->count)
    return FP_EPROTO;
  ch->items = p + head;
  ch->items_len = (size_t)th->items_len;
  switch (th->wire) {
  case FP__WIRE_FIXED:
    return check_fixed(ch, max_frame);
  case FP__WIRE_VALUES:
  case FP__WIRE_STAR:
    return check_values(ch);
  default:
    return FP_EPROTO;
  }
}

/* ---- running a chunk ----------------------------------------------------- */

/* Runs a fixed-size chunk: item i reads element i of the items and writes
 * element i of the zero-filled outputs. When the outputs cannot be
 * allocated no item runs, and the sticky FP_ENOMEM in w->data makes
 * fit_result() fail the chunk. */
/* Set in a child that a task forked (pthread_atfork, worker_start). */
static volatile sig_atomic_t g_clone;

static void note_clone(void) {
  g_clone = 1;
}

/* A child the task forked that returns from the task into this loop
 * would take the worker's ring entries, socket and slot from under the
 * real worker (and its replacement): it leaves instead, as if it had
 * called _exit(0) at the end of the task. */
static void leave_if_clone(void) {
  if (g_clone)
    _exit(0);
}

static void run_fixed(worker *w, const chunk *ch, fp_elem_fn fn) {
  /* Outputs of zero bytes still need a valid pointer for the task: no
   * memset or pointer arithmetic ever touches a NULL w->data.data. */
  static unsigned char none[1];
  size_t outlen = (size_t)ch->th.count * ch->th.out_size; /* checked */
  unsigned char *out = none;
  if (outlen > 0) {
    if (fp_writer_reserve(&w->data, outlen) != 0)
      return;
    out = w->data.data;
    memset(out, 0, outlen);
    w->data.len = outlen;
  }
  for (uint32_t i = 0; i < ch->th.count; i++) {
    int64_t index = ch->th.start + i;
    publish_item(w, index);
    int rc = fn(ch->items + (size_t)i * ch->th.in_size,
                out + (size_t)i * ch->th.out_size);
    leave_if_clone();
    if (rc != 0)
      item_failed(w, index, rc);
  }
}

/* Checks what a task that returned 0 left in `out` (empty before the
 * task ran): exactly one well-formed value, or nothing (then nil is
 * written for it). Returns 0, or the code to fail the item with (its
 * message set by fp_task_fail). */
static int check_value(fp_writer *out) {
  size_t nvals = 0;
  if (out->err != 0 || out->depth != 0) {
    fp_task_fail("result value not well formed (%s)",
                 out->err ? fp_strerror(out->err) : "unclosed list");
    return out->err ? out->err : FP_EPROTO;
  }
  if (out->len == 0)
    return fp_write_nil(out);
  if (fp_values_count(out->data, out->len, &nvals) != 0) {
    fp_task_fail("the %zu result bytes the task wrote are not well-formed "
                 "values",
                 out->len);
    return FP_EPROTO;
  }
  if (nvals != 1) {
    fp_task_fail("task wrote %zu result values, expected one", nvals);
    return FP_EPROTO;
  }
  return 0;
}

/* Checks the value a task left in `out` (check_value) and its size, and
 * moves it to the chunk's results when `out` is the item writer. Returns
 * 0 or the code to fail the item with. */
static int take_value(worker *w, fp_writer *out) {
  size_t limit = w->cfg->max_frame - sizeof(fp__res_hdr);
  int rc = check_value(out);
  if (rc == 0 && out->len > limit) {
    /* One result must fit a frame, as one item must: max_frame is the
     * largest value either way. (A chunk's results together may take
     * several frames: PART, proto.h.) */
    fp_task_fail("result of %zu bytes too large for a frame (max_frame %zu "
                 "leaves %zu bytes)",
                 out->len, w->cfg->max_frame, limit);
    rc = FP_EMSGSIZE;
  }
  if (rc == 0 && out != &w->data &&
      fp_writer_append(&w->data, out->data, out->len) != 0)
    rc = FP_ENOMEM;
  return rc;
}

/* Runs one codec item whose arguments are the values in (span, span_len)
 * and leaves exactly one value for it in w->data: its result, or nil when
 * it failed (the failure is recorded). */
static void run_value_item(worker *w, int wire, fp_task_fn fn, int64_t index,
                           const void *span, size_t span_len) {
  fp_writer *data = &w->data;
  size_t before = data->len;
  /* A task may do anything to its writer, fp_writer_reset() included, so
   * only a chunk's first item writes straight into the chunk's results;
   * the others write into a writer of their own, copied over after. */
  fp_writer *out = before == 0 ? data : &w->item;
  fp_reader args;
  int rc = 0;
  if (out != data)
    fp_writer_reset(out);
  fp_reader_init(&args, span, span_len);
  if (wire == FP__WIRE_STAR) {
    uint32_t n;
    rc = fp_read_list(&args, &n);
  }
  if (rc == 0) {
    rc = fn(&args, out);
    leave_if_clone();
  }
  if (rc == 0)
    rc = take_value(w, out);
  if (rc != 0) {
    /* Drop whatever the failed item wrote, keep one value per item. */
    data->len = before;
    data->err = 0;
    data->depth = 0;
    item_failed(w, index, rc);
    fp_write_nil(data);
  }
}

/* Runs a values or star chunk, one item per value (parse_task() counted
 * them), or the one item of all values with FP__TASK_WHOLE. */
static void run_values(worker *w, const chunk *ch, fp_task_fn fn) {
  fp_reader items;
  fp_reader_init(&items, ch->items, ch->items_len);
  for (uint32_t i = 0; i < ch->th.count; i++) {
    int64_t index = ch->th.start + i;
    const void *span = ch->items;
    size_t span_len = ch->items_len;
    publish_item(w, index);
    if (!(ch->th.flags & FP__TASK_WHOLE) &&
        fp_read_span(&items, &span, &span_len) != 0)
      _exit(FP__WEXIT_PROTO); /* check_values() rules this out */
    run_value_item(w, ch->th.wire, fn, index, span, span_len);
  }
}

/* ---- the result ---------------------------------------------------------- */

/* Bytes of the RESULT payload as it stands. */
static size_t result_len(const worker *w) {
  return sizeof(fp__res_hdr) + w->errs.len + w->data.len;
}

/* Replaces the chunk's results by a failure of every item with `code`
 * and the message "item N: <what>", and a nil value (values and star
 * wires) or a zeroed output (fixed wire) per item. With detail 0 only
 * the first item carries the message and the others an empty one, which
 * is the smallest report the protocol can make. Returns 0 or the
 * writers' error (FP_ENOMEM). */
static int fail_all(worker *w, const chunk *ch, int code, const char *what,
                    int detail) {
  char buf[FP__MSG_LEN + 64];
  fp_writer_reset(&w->data);
  fp_writer_reset(&w->errs);
  w->nerr = 0;
  for (uint32_t i = 0; i < ch->th.count; i++) {
    int64_t index = ch->th.start + i;
    snprintf(buf, sizeof(buf), "item %lld: %s", (long long)index, what);
    add_error(w, index, code, detail || i == 0 ? buf : "");
  }
  if (ch->th.wire != FP__WIRE_FIXED) {
    for (uint32_t i = 0; i < ch->th.count; i++)
      fp_write_nil(&w->data);
  } else {
    size_t outlen = (size_t)ch->th.count * ch->th.out_size; /* checked */
    if (outlen > 0 && fp_writer_reserve(&w->data, outlen) == 0) {
      memset(w->data.data, 0, outlen);
      w->data.len = outlen;
    }
  }
  return w->errs.err != 0 ? w->errs.err : w->data.err;
}

/* fail_all(), with every message if that fits a chunk's results
 * (fp__wconf_result_limit, proto.h), else with the first one only. When neither
 * fits, the master cut a chunk whose failure report (an error record and
 * an output per item) cannot be sent: the worker ends with
 * FP__WEXIT_PROTO. When memory runs out, it dies. */
static void replace_results(worker *w, const chunk *ch, int code,
                            const char *what) {
  int rc = 0;
  for (int detail = 1; detail >= 0; detail--) {
    rc = fail_all(w, ch, code, what, detail);
    if (rc == 0 && result_len(w) <= fp__wconf_result_limit(w->cfg))
      return;
  }
  if (rc != 0)
    die_nomem();
  _exit(FP__WEXIT_PROTO);
}

/* Keeps every error record's index and code but only the first one's
 * message, in place (out <= in: a record is rewritten only after it was
 * read). A map reports the first failed item's message alone, so a
 * chunk whose outputs fit but whose messages do not keeps its good
 * results and every item's code; an iterator's later failed items then
 * come with their code and a message saying theirs did not fit
 * (iter.c). */
static void keep_first_message(worker *w) {
  unsigned char *p = w->errs.data;
  size_t in = 0, out = 0;
  for (uint32_t i = 0; i < w->nerr; i++) {
    fp__err_rec rec;
    memcpy(&rec, p + in, sizeof(rec));
    uint32_t keep = i == 0 ? rec.msg_len : 0;
    in += sizeof(rec) + rec.msg_len;
    rec.msg_len = keep;
    memcpy(p + out, &rec, sizeof(rec));
    out += sizeof(rec) + keep;
  }
  w->errs.len = out;
}

/* Makes the chunk's results sendable: when a writer failed (out of
 * memory), every item fails with that error; when the payload exceeds
 * fp__wconf_result_limit(), the messages of failed items after the first
 * go, and if it still does, every item fails with FP_EMSGSIZE instead of
 * the payload being sent (the master would take it for a broken
 * worker). */
static void fit_result(worker *w, const chunk *ch) {
  char what[160];
  int err = w->errs.err != 0 ? w->errs.err : w->data.err;
  if (err != 0) {
    snprintf(what, sizeof(what),
             "the worker could not hold the chunk's results (%s)",
             fp_strerror(err));
    replace_results(w, ch, err, what);
  }
  size_t total = result_len(w), limit = fp__wconf_result_limit(w->cfg);
  if (total > limit && w->nerr > 1) {
    keep_first_message(w);
    total = result_len(w);
  }
  if (total > limit) {
    snprintf(what, sizeof(what),
             "the results of a chunk of %u items, %zu bytes, exceed "
             "%zu (use a smaller chunksize)",
             ch->th.count, total, limit);
    replace_results(w, ch, FP_EMSGSIZE, what);
  }
}

/* Whether the master will see the ring without a kick: it is awake, or a
 * caller polls (a poller that stops looks at the rings once more,
 * local.h). Loads after the tail's store, both seq_cst (local.h). */
static int master_will_look(const worker *w) {
  return !atomic_load_explicit(w->master_idle, memory_order_seq_cst) ||
         atomic_load_explicit(&w->shm->pollers, memory_order_seq_cst) > 0;
}

/* After a result went into the ring: wakes the master with a KICK only
 * if it is going to sleep and no caller polls the rings. The tail store
 * in fp__ring_put() and the loads of master_will_look() are all seq_cst,
 * so the loads cannot be ordered before the store (the protocol is in
 * local.h). While this worker still has chunks queued the kick may wait
 * (up to FP__DEFER_NS, local.h): the master then drains several results and
 * refills the queue with one write, instead of one wake-up and one write
 * per chunk. With nothing queued it first watches KICK_GRACE_NS for a
 * poller. Returns 0 or -errno of the send. */
static int maybe_kick(worker *w, int may_defer) {
  if (master_will_look(w)) {
    w->deferred_since = 0;
    return 0;
  }
  int64_t now = fp__now_ns();
  if (!may_defer ||
      (w->deferred_since != 0 && now - w->deferred_since >= FP__DEFER_NS)) {
    w->deferred_since = 0;
    /* Only with nothing queued: this worker would wait for a task anyway. */
    int64_t grace = atomic_load_explicit(&w->tring->tail,
                                         memory_order_acquire) == w->tpos
                        ? KICK_GRACE_NS
                        : 0;
    for (int64_t until = now + grace; fp__now_ns() < until;) {
      for (int i = 0; i < 16; i++)
        fp__cpu_relax();
      if (master_will_look(w))
        return 0;
    }
    return send_simple(w->fd, FP__MSG_KICK);
  }
  if (w->deferred_since == 0)
    w->deferred_since = now;
  return 0;
}

/* Sends the chunk's RESULT frame (fit_result() ran: it fits max_frame).
 * A sleeping master has to be woken by the socket anyway, but a busy one
 * takes a ring entry with no system call at all; results too big for the
 * ring, or a full ring, go on the socket. Returns 0 or -errno. */
static int publish_result(worker *w, const chunk *ch, int may_defer) {
  fp__res_hdr rh;
  unsigned char fh[FP__FRAME_HDR];
  memset(&rh, 0, sizeof(rh));
  rh.type = FP__MSG_RESULT;
  rh.count = ch->th.count;
  rh.seq = ch->th.seq;
  rh.nerr = w->nerr;
  rh.cpu = sched_getcpu();
  rh.errs_len = w->errs.len;
  atomic_store_explicit(&w->slot->cpu, rh.cpu, memory_order_relaxed);
  size_t total = result_len(w);
  if (fp__frame_put_hdr(fh, total) != 0)
    return FP_EMSGSIZE; /* max_frame <= UINT32_MAX: not reached */
  struct iovec iov[4] = {{fh, sizeof(fh)},
                         {&rh, sizeof(rh)},
                         {w->errs.data, w->errs.len},
                         {w->data.data, w->data.len}};
  if (fp__ring_put(w->ring, iov + 1, 3, total) == 0)
    return maybe_kick(w, may_defer);
  if (total > w->cfg->max_frame)
    return send_parts(w->fd, w->cfg->max_frame, iov + 1, 3, total);
  return send_all(w->fd, iov, 4);
}

/* Runs a checked chunk and publishes its RESULT. Returns 0, or -errno of
 * the send (the master is gone). */
static int run_chunk(worker *w, const chunk *ch, int may_defer) {
  fp_writer_reset(&w->data);
  fp_writer_reset(&w->errs);
  w->nerr = 0;
  w->timed = (ch->th.flags & FP__TASK_TIMED) != 0;
  /* Both before the skip marks are read (local.h, fp__slot_recall). */
  atomic_store_explicit(&w->slot->taken, ++w->taken, memory_order_seq_cst);
  atomic_store_explicit(&w->slot->seq, ch->th.seq, memory_order_seq_cst);
  if (fp__slot_claim_skip(w->slot, ch->th.seq)) {
    /* Its job was canceled before it started (local.h): a RESULT with no
     * item results, which the master drops, and nothing runs. */
    fp__tring_release(w->tring, w->tpos);
    int rc = publish_result(w, ch, may_defer);
    atomic_store_explicit(&w->slot->seq, 0, memory_order_release);
    return rc;
  }

  void *fn = fp__fnref_resolve(&ch->th.fn);
  if (fn == NULL)
    replace_results(w, ch, FP_EINVAL,
                    "task function not found in the worker (module loaded "
                    "after the pool started?)");
  else if (ch->th.wire == FP__WIRE_FIXED)
    run_fixed(w, ch, (fp_elem_fn)fn);
  else
    run_values(w, ch, (fp_task_fn)fn);
  g_item = -1;
  /* The time limit is on running tasks, not on handing over the result. */
  atomic_store_explicit(&w->slot->started_ns, 0, memory_order_release);

  /* The items are no longer read: free their ring space before the
   * master can learn that the chunk is done (local.h: space bound). */
  fp__tring_release(w->tring, w->tpos);
  fit_result(w, ch);
  int rc = publish_result(w, ch, may_defer);
  /* Only now is the chunk no longer this worker's to answer for. A
   * result that could not be sent leaves the chunk named: the worker
   * ends (FP__WEXIT_SEND), and the master charges its death to this chunk,
   * which ran, instead of taking it for one never started and running it
   * again. */
  if (rc == 0)
    atomic_store_explicit(&w->slot->seq, 0, memory_order_release);
  return rc;
}

/* ---- reading frames ------------------------------------------------------ */

/* Whether this worker holds FP__DEFER_QUEUED chunks or more: the one it
 * runs and those queued in the task ring after it, which it will run
 * without waiting for the master. Its results may then wait (local.h). */
static int results_may_wait(const worker *w) {
  uint64_t pos = w->tpos;
  const unsigned char *p;
  size_t len;
  int n = 1;
  while (n < FP__DEFER_QUEUED && fp__tring_next(w->tring, &pos, &p, &len) == 1)
    n++;
  return n == FP__DEFER_QUEUED;
}

/* Returns the next frame's payload, reading as much as the socket has in
 * one call, so frames the master queued back to back cost one read. The
 * payload stays valid until the next call. Frames stay 16-byte aligned in
 * the buffer: the partial frame is moved to its (aligned) start and every
 * task frame is a multiple of FP__FRAME_ALIGN bytes. Returns 0, FP_EOF,
 * -errno of the read, FP_EMSGSIZE for a frame over max_frame or
 * FP_ENOMEM. */
static int next_frame(worker *w, const unsigned char **payload, size_t *plen) {
  fp_writer *in = &w->in;
  size_t max = w->cfg->max_frame;
  for (;;) {
    size_t have = in->len - w->off;
    if (have >= FP__FRAME_HDR) {
      int rc = fp_frame_parse(in->data + w->off, have, max, plen);
      if (rc < 0)
        return rc;
      if (rc == 0) {
        *payload = in->data + w->off + FP__FRAME_HDR;
        w->off += FP__FRAME_HDR + *plen;
        return 0;
      }
    }
    if (w->off > 0) {
      memmove(in->data, in->data + w->off, have);
      in->len = have;
      w->off = 0;
    }
    size_t want = fp__frame_want(in->data, have, max);
    if (want > in->cap && fp_writer_reserve(in, want - in->len) != 0)
      return FP_ENOMEM;
    ssize_t n = read(w->fd, in->data + in->len, in->cap - in->len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return n == 0 ? FP_EOF : -errno;
    in->len += (size_t)n;
  }
}

/* ---- the process --------------------------------------------------------- */

/* A SIGTERM the master sends for one chunk (a time limit, a cancel) comes
 * from the fork server through sigqueue() with that chunk's seq (link.h,
 * kill). The master decided while the worker ran that chunk; by the time
 * the signal lands the worker may have finished it and started another
 * job's chunk, which must not die for it (it would then fail, or run
 * twice). So a SIGTERM aimed at a chunk this worker is not running is
 * ignored; any other SIGTERM ends the worker as the default action does.
 * A task that installs its own SIGTERM handler replaces this one. */
static _Atomic uint64_t *g_running_seq;

static void on_sigterm(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  if (si != NULL && si->si_code == SI_QUEUE && si->si_pid == getppid()) {
    uint64_t aim = (uint64_t)(uintptr_t)si->si_value.sival_ptr;
    if (aim != 0 && aim != atomic_load(g_running_seq))
      return;
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

static void aim_sigterm(_Atomic uint64_t *running_seq) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  g_running_seq = running_seq;
  sa.sa_sigaction = on_sigterm;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
}

/* Everything before the first task: parent-death signal, the task signal
 * mask, the slot, pinning, the memory limit, the initializer, READY.
 * Exits on failure (FP__WEXIT_PIN, FP__WEXIT_INIT, or FP__WEXIT_OK when
 * the parent or the master is already gone). */
/* Unmaps n elements of `size` bytes at p (n may be 0). */
static void unmap_elems(void *p, size_t n, size_t size) {
  if (n > 0)
    munmap(p, n * size);
}

/* Unmaps every other worker's rings. All rings are in the one mapping
 * each process of the pool inherits, so a task could otherwise rewrite
 * another worker's task ring (erasing a chunk sent to it: its caller
 * would wait for ever) or its results while the master reads them.
 * Unmapped, such a write is this worker's own crash. Needs rings of whole
 * pages (local.h): on a machine with larger pages they stay mapped. */
static void unmap_other_rings(const fp__shm_view *v, int slot) {
  long page = sysconf(_SC_PAGESIZE);
  if (page <= 0 || FP__RING_ALIGN % page != 0)
    return;
  size_t after = (size_t)(v->nslots - slot - 1);
  unmap_elems(v->rings, (size_t)slot, sizeof(fp__ring));
  unmap_elems(v->rings + slot + 1, after, sizeof(fp__ring));
  unmap_elems(v->trings, (size_t)slot, sizeof(fp__tring));
  unmap_elems(v->trings + slot + 1, after, sizeof(fp__tring));
}

static void worker_start(worker *w, const fp__wconf *cfg,
                         const fp__wboot *boot) {
  memset(w, 0, sizeof(*w));
  w->cfg = cfg;
  w->fd = boot->fd;
  w->slot = &boot->v->slots[boot->slot];
  w->ring = &boot->v->rings[boot->slot];
  w->tring = &boot->v->trings[boot->slot];
  w->tpos = atomic_load(&w->tring->head);
  w->shm = boot->v->hdr;
  w->master_idle = &boot->v->hdr->master_idle;
  /* A worker of a pool that a task started inherits the flag of the
   * fork server the task forked: it is no clone. */
  g_clone = 0;
  pthread_atfork(NULL, NULL, note_clone);
  unmap_other_rings(boot->v, boot->slot);
  fp__mapreg_remove(boot->v->hdr); /* now with holes: see mapreg.c */
  g_worker_id = boot->slot;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != boot->parent)
    _exit(FP__WEXIT_OK); /* the fork server died before the signal was set */
  sigprocmask(SIG_SETMASK, &boot->mask, NULL);
  /* If this worker starts a pool of its own, that pool's fork server must
   * not hold this socket open. */
  fp__fdreg_lock();
  fp__fdreg_add_locked(w->fd);
  fp__fdreg_unlock();
  atomic_store(&w->slot->seq, 0);
  atomic_store(&w->slot->started_ns, 0);
  atomic_store(&w->slot->item, -1);
  atomic_store(&w->slot->pid, (int32_t)getpid());
  aim_sigterm(&w->slot->seq);

  if (cfg->cpu_of_worker != NULL &&
      fp__affinity_apply(cfg->cpu_of_worker[boot->slot]) != 0)
    _exit(FP__WEXIT_PIN);
  if (cfg->memory_limit > 0) {
    struct rlimit rl = {cfg->memory_limit, cfg->memory_limit};
    setrlimit(RLIMIT_AS, &rl);
  }
  if (cfg->initializer != NULL && cfg->initializer(cfg->initarg) != 0)
    _exit(FP__WEXIT_INIT);
  fflush(stdout);
  fflush(stderr);
  if (send_simple(w->fd, FP__MSG_READY) != 0)
    _exit(FP__WEXIT_OK);
  fp_writer_init(&w->in);
  fp_writer_init(&w->data);
  fp_writer_init(&w->item);
  fp_writer_init(&w->errs);
  fp__budget_join_slot(w->shm, w->slot); /* awake until the first sleep */
}

/* 1 when the master closed its end of the socket (the pool is gone). */
static int socket_eof(int fd) {
  char c;
  ssize_t n;
  do
    n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* Leaves the CPU the worker shares with the master thread that feeds it
 * (fp__tring_feeder_here): an affinity mask without this CPU moves the
 * worker at once, and the mask it had is put back right after, so where it
 * may run does not change (its tasks never see the narrowed mask: this
 * runs between tasks, in the worker's only thread; a mask that another
 * process set within those microseconds would be undone). At most once
 * per millisecond; nothing when the mask holds this CPU alone (the user
 * pinned the worker). */
static void move_off_cpu(worker *w, int64_t now) {
  cpu_set_t mask, off;
  int cpu = sched_getcpu();
  if (now - w->moved_ns < 1000000 || cpu < 0 || cpu >= CPU_SETSIZE)
    return;
  w->moved_ns = now;
  if (sched_getaffinity(0, sizeof mask, &mask) != 0 || CPU_COUNT(&mask) < 2)
    return;
  off = mask;
  CPU_CLR(cpu, &off);
  if (sched_setaffinity(0, sizeof off, &off) == 0)
    sched_setaffinity(0, sizeof mask, &mask);
}

/* Waits for the next entry of the task ring: spins up to FP__SPIN_NS while
 * the budget allows, then sleeps on the ring's futex (out of the budget).
 * Sets *p, *len to the entry's payload and w->tpos past it. Exits with
 * FP__WEXIT_PROTO on a corrupt ring, FP__WEXIT_OK on socket EOF. */
static void next_entry(worker *w, const unsigned char **p, size_t *len) {
  int64_t until = 0;
  int tried = 0; /* the idle hook, since the last sleep */
  fp__spinner sp;
  for (;;) {
    for (int i = 0; i < 64; i++) {
      uint64_t pos = w->tpos;
      int rc = fp__tring_next(w->tring, &pos, p, len);
      if (rc < 0)
        _exit(FP__WEXIT_PROTO);
      if (rc == 1) {
        w->tpos = pos;
        w->gave_back = 0;
        return;
      }
      fp__cpu_relax();
    }
    int64_t now = fp__now_ns();
    if (until == 0) {
      until = now + FP__SPIN_NS;
      fp__spinner_start(&sp, now);
    }
    if (now < until && fp__budget_ok(w->shm)) {
      if (fp__tring_feeder_here(w->tring))
        move_off_cpu(w, now);
      fp__spinner_tick(&sp, now);
      continue;
    }
    if (!w->gave_back && !tried) {
      /* Before a sleep that may last: what the tasks' Manager calls left
       * in this process's heaps goes back to the arena, where the other
       * processes can use it (only the owner can give it back). What a
       * call of another process keeps for now is tried again after the
       * sleep, which lasts at most FP__IDLE_POLL_MS. */
      tried = 1;
      w->gave_back = fp__idle_run() == 0;
      continue; /* a task may have come meanwhile */
    }
    fp__budget_leave_slot(w->shm, w->slot);
    fp__tring_sleep(w->tring, w->tpos);
    fp__budget_join_slot(w->shm, w->slot);
    if (atomic_load(&w->tring->tail) == w->tpos && socket_eof(w->fd))
      _exit(FP__WEXIT_OK);
    until = 0;
    tried = 0;
  }
}

/* The next TASK payload: from the ring, or from the socket when the ring
 * says so. Exits at FINISH, EOF, or on anything malformed. */
static void next_task(worker *w, const unsigned char **p, size_t *len) {
  next_entry(w, p, len);
  if (*len == FP__TRING_MARK_LEN && (*p)[0] == FP__TRING_FINISH)
    _exit(FP__WEXIT_OK);
  if (*len != FP__TRING_MARK_LEN || (*p)[0] != FP__TRING_SOCK)
    return;
  int rc = next_frame(w, p, len);
  if (rc == FP_ENOMEM)
    die_nomem();
  if (rc == FP_EMSGSIZE)
    _exit(FP__WEXIT_PROTO);
  if (rc != 0)
    _exit(FP__WEXIT_OK); /* EOF: the pool is closing, or the master died */
}

void fp__worker_main(const fp__wconf *cfg, const fp__wboot *boot) {
  worker w;
  unsigned done = 0;
  worker_start(&w, cfg, boot);
  for (;;) {
    const unsigned char *payload = NULL;
    size_t plen = 0;
    chunk ch;
    next_task(&w, &payload, &plen);
    if (parse_task(payload, plen, cfg->max_frame, &ch) != 0)
      _exit(FP__WEXIT_PROTO);
    int rc = run_chunk(&w, &ch, results_may_wait(&w));
    fflush(stdout);
    fflush(stderr);
    if (rc != 0) /* the master is gone, or a task broke the socket */
      _exit(FP__WEXIT_SEND);
    done++;
    if (cfg->maxtasksperchild && done >= cfg->maxtasksperchild) {
      send_simple(w.fd, FP__MSG_RETIRE);
      _exit(FP__WEXIT_OK);
    }
  }
}
