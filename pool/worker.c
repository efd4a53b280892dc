/* worker.c - a worker process: a plain blocking loop over its socket.
 *
 * The worker is forked by the fork server. It pins itself and applies the
 * memory limit if asked, runs the user's initializer, says READY, then
 * loops: read a TASK frame, run the function over the chunk's items, write
 * one RESULT frame. Before each item it publishes the chunk and item it is
 * running in its shared slot (relaxed atomic stores), so when it dies the
 * master knows exactly which item was executing. A failing item does not
 * stop the chunk: its error is recorded and the next item runs.
 *
 * The worker exits when its socket reaches EOF (the pool is closing or the
 * master died), when its parent (the fork server) dies (PR_SET_PDEATHSIG),
 * or after maxtasksperchild chunks (it says RETIRE first). It always leaves
 * with _exit(): the user's atexit handlers belong to the master.
 */
#include "pool/pool_int.h"
#include "affinity/affinity.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

extern sigset_t fp__fs_orig_mask;
extern pid_t fp__fs_pid;

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

int64_t fp__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Writes all of iov, looping over short writes and EINTR. Returns 0 or
 * -errno (EPIPE when the master is gone; MSG_NOSIGNAL keeps SIGPIPE away). */
static int send_all(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = iov;
    mh.msg_iovlen = (size_t)n;
    ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
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

/* Sends a header-only message (READY, RETIRE). */
static int send_simple(int fd, int type) {
  fp__res_hdr h;
  memset(&h, 0, sizeof(h));
  h.type = (uint8_t)type;
  uint32_t len = sizeof(h);
  struct iovec iov[2] = {{&len, 4}, {&h, sizeof(h)}};
  return send_all(fd, iov, 2);
}

/* Appends one error record for item `index` to errs. */
static void add_error(fp_writer *errs, uint32_t *nerr, int64_t index, int code,
                      const char *msg) {
  fp__err_rec rec;
  rec.index = index;
  rec.code = code;
  rec.msg_len = (uint32_t)strlen(msg);
  fp_writer_append(errs, &rec, sizeof(rec));
  fp_writer_append(errs, msg, rec.msg_len);
  (*nerr)++;
}

/* Records the failure of the current item from the task's return code. */
static void item_failed(fp_writer *errs, uint32_t *nerr, int64_t index,
                        int rc) {
  char buf[FP__MSG_LEN + 64];
  if (g_msg_set)
    snprintf(buf, sizeof(buf), "item %lld: %s", (long long)index, g_msg);
  else
    snprintf(buf, sizeof(buf), "item %lld: task returned %s (%s)",
             (long long)index, fp_err_name(rc), fp_strerror(rc));
  add_error(errs, nerr, index, rc < 0 ? rc : FP_ETASK, buf);
}

#define KICK_DEFER_NS 1000000 /* longest a published result waits */
static int64_t g_deferred_since; /* first result not kicked, 0: none */

/* Counts the complete frames (at most 2) buffered in `in` from off on:
 * chunks this worker will run without reading its socket. */
static int frames_buffered(const fp_writer *in, size_t off, size_t max) {
  int n = 0;
  while (n < 2 && in->len - off >= 4) {
    size_t plen;
    if (fp_frame_parse(in->data + off, in->len - off, max, &plen) != 0)
      break;
    off += 4 + plen;
    n++;
  }
  return n;
}

/* Copies a RESULT payload (the iov parts, total bytes) into the ring.
 * Returns 0, or -1 when it does not fit now (the caller uses the socket).
 * Only this worker writes the tail; the master only moves the head. */
static int ring_put(fp__ring *r, const struct iovec *iov, int n,
                    size_t total) {
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  uint64_t h = atomic_load_explicit(&r->head, memory_order_acquire);
  size_t need = (4 + total + 7) & ~(size_t)7;
  size_t pos = (size_t)(t % FP__RING_SIZE);
  size_t waste = pos + need > FP__RING_SIZE ? FP__RING_SIZE - pos : 0;
  if (total > FP__RING_MAX || FP__RING_SIZE - (t - h) < waste + need)
    return -1;
  if (waste > 0) { /* 8-aligned positions: waste >= 8, room for a marker */
    uint32_t wrap = FP__RING_WRAP;
    memcpy(r->data + pos, &wrap, 4);
    t += waste;
    pos = 0;
  }
  uint32_t len = (uint32_t)total;
  memcpy(r->data + pos, &len, 4);
  size_t off = pos + 4;
  for (int i = 0; i < n; i++) {
    if (iov[i].iov_len > 0)
      memcpy(r->data + off, iov[i].iov_base, iov[i].iov_len);
    off += iov[i].iov_len;
  }
  /* seq_cst, not just release: this store and the caller's load of
   * master_idle are the worker's half of the kick protocol. */
  atomic_store_explicit(&r->tail, t + need, memory_order_seq_cst);
  return 0;
}

typedef struct wstate {
  fp__slot *slot;
  int timed;
} wstate;

static inline void publish_item(wstate *ws, int64_t index) {
  g_item = index;
  g_msg_set = 0;
  atomic_store_explicit(&ws->slot->item, index, memory_order_relaxed);
  if (ws->timed)
    atomic_store_explicit(&ws->slot->started_ns, fp__now_ns(),
                          memory_order_release);
}

/* Runs one chunk and writes its RESULT frame. Returns 0 or -errno of the
 * write (the master is gone). */
static int run_chunk(int fd, fp__slot *slot, fp__shared *shared,
                     int slot_index, int may_defer, const unsigned char *p,
                     size_t len, fp_writer *data, fp_writer *errs) {
  fp__task_hdr th;
  uint32_t nerr = 0;
  wstate st = {slot, 0};
  if (len < sizeof(th))
    return -EPROTO;
  if (len < sizeof(th) + FP__HDR_PAD)
    return -EPROTO;
  memcpy(&th, p, sizeof(th));
  p += sizeof(th) + FP__HDR_PAD;
  len -= sizeof(th) + FP__HDR_PAD;
  if (th.items_len > len)
    return -EPROTO;
  len = th.items_len; /* drop the alignment padding */
  st.timed = (th.flags & FP__TASK_TIMED) != 0;
  fp_writer_reset(data);
  fp_writer_reset(errs);
  atomic_store_explicit(&slot->seq, th.seq, memory_order_release);

  void *fn = fp__fnref_resolve(&th.fn);
  if (fn == NULL) {
    for (uint32_t i = 0; i < th.count; i++)
      add_error(errs, &nerr, th.start + i, FP_EINVAL,
                "task function not found in the worker (module loaded "
                "after the pool started?)");
    if (th.wire != FP__WIRE_FIXED)
      for (uint32_t i = 0; i < th.count; i++)
        fp_write_nil(data);
    else if (fp_writer_reserve(data, (size_t)th.count * th.out_size) == 0) {
      memset(data->data, 0, (size_t)th.count * th.out_size);
      data->len = (size_t)th.count * th.out_size;
    }
  } else if (th.wire == FP__WIRE_FIXED) {
    fp_elem_fn efn = (fp_elem_fn)fn;
    size_t outlen = (size_t)th.count * th.out_size;
    if ((size_t)th.count * th.in_size > len ||
        fp_writer_reserve(data, outlen) != 0)
      return -EPROTO;
    memset(data->data, 0, outlen);
    data->len = outlen;
    for (uint32_t i = 0; i < th.count; i++) {
      publish_item(&st, th.start + i);
      int rc = efn(p + (size_t)i * th.in_size,
                   data->data + (size_t)i * th.out_size);
      if (rc != 0)
        item_failed(errs, &nerr, th.start + i, rc);
    }
  } else {
    fp_task_fn tfn = (fp_task_fn)fn;
    fp_reader items;
    fp_reader_init(&items, p, len);
    for (uint32_t i = 0; i < th.count; i++) {
      const void *span;
      size_t span_len;
      fp_reader args;
      int64_t index = th.start + i;
      publish_item(&st, index);
      size_t before = data->len;
      int rc = 0;
      if (th.flags & FP__TASK_WHOLE) { /* apply: all values are the args */
        span = p;
        span_len = len;
      } else {
        rc = fp_read_span(&items, &span, &span_len);
      }
      if (rc == 0) {
        fp_reader_init(&args, span, span_len);
        if (th.wire == FP__WIRE_STAR) {
          uint32_t n;
          rc = fp_read_list(&args, &n);
        }
      }
      if (rc != 0) {
        item_failed(errs, &nerr, index, rc);
        fp_write_nil(data);
        continue;
      }
      rc = tfn(&args, data);
      if (rc == 0) {
        size_t nvals = 0;
        if (data->err != 0 || data->depth != 0) {
          rc = data->err ? data->err : FP_EPROTO;
          fp_task_fail("result value not well formed (%s)",
                       data->err ? fp_strerror(data->err)
                                 : "unclosed list");
        } else if (data->len == before) {
          fp_write_nil(data);
        } else if (fp_values_count(data->data + before, data->len - before,
                                   &nvals) != 0 ||
                   nvals != 1) {
          rc = FP_EPROTO;
          fp_task_fail("task wrote %zu result values, expected one", nvals);
        }
      }
      if (rc != 0) {
        /* Drop whatever the failed item wrote, keep one value per item. */
        data->len = before;
        data->err = 0;
        data->depth = 0;
        item_failed(errs, &nerr, index, rc);
        fp_write_nil(data);
      }
    }
  }
  g_item = -1;

  fp__res_hdr rh;
  memset(&rh, 0, sizeof(rh));
  rh.type = FP__MSG_RESULT;
  rh.count = th.count;
  rh.seq = th.seq;
  rh.nerr = nerr;
  rh.cpu = sched_getcpu();
  rh.errs_len = errs->len;
  atomic_store_explicit(&slot->cpu, rh.cpu, memory_order_relaxed);
  uint64_t total = sizeof(rh) + errs->len + data->len;
  if (total > UINT32_MAX)
    return -EMSGSIZE;
  uint32_t flen = (uint32_t)total;
  struct iovec iov[4] = {{&flen, 4},
                         {&rh, sizeof(rh)},
                         {errs->data, errs->len},
                         {data->data, data->len}};
  int rc = 0;
  /* A sleeping master has to be woken by the socket anyway: then the
   * result itself goes that way (one system call, as a kick would be). A
   * busy master takes it from the ring with no system call at all. */
  if (shared != NULL &&
      ring_put(&shared->rings[slot_index], iov + 1, 3, (size_t)total) == 0) {
    /* Published. Wake the master only if it is going to sleep (see the
     * protocol in pool_int.h): both accesses are seq_cst, so this load
     * cannot be ordered before the tail store. While this worker still
     * has chunks queued, the kick may wait (up to KICK_DEFER_NS): the
     * master then drains several results and refills the queue with one
     * write, instead of one wake-up and one write per chunk. */
    if (atomic_load_explicit(&shared->master_idle, memory_order_seq_cst)) {
      int64_t now = fp__now_ns();
      if (!may_defer || (g_deferred_since != 0 &&
                         now - g_deferred_since >= KICK_DEFER_NS)) {
        rc = send_simple(fd, FP__MSG_KICK);
        g_deferred_since = 0;
      } else if (g_deferred_since == 0) {
        g_deferred_since = now;
      }
    } else {
      g_deferred_since = 0; /* the master is awake and drains the rings */
    }
  } else {
    rc = send_all(fd, iov, 4);
  }
  /* The chunk is finished: it is no longer "running" for crash accounting
   * once the result is on its way. */
  atomic_store_explicit(&slot->seq, 0, memory_order_release);
  atomic_store_explicit(&slot->started_ns, 0, memory_order_relaxed);
  return rc;
}

/* Returns the next frame's payload, reading as much as the socket has in
 * one call, so frames the master queued back to back cost one read.
 * `in` holds raw bytes from *off on; the payload stays valid until the
 * next call. Returns 0, or non-zero at EOF, on error or on an over-long
 * frame. */
static int next_frame(int fd, fp_writer *in, size_t *off, size_t max,
                      const unsigned char **payload, size_t *plen) {
  for (;;) {
    size_t have = in->len - *off;
    if (have >= 4) {
      int rc = fp_frame_parse(in->data + *off, have, max, plen);
      if (rc < 0)
        return rc;
      if (rc == 0) {
        *payload = in->data + *off + 4;
        *off += 4 + *plen;
        return 0;
      }
    }
    /* Move the partial frame to the front and make room for the rest. */
    if (*off > 0) {
      memmove(in->data, in->data + *off, have);
      in->len = have;
      *off = 0;
    }
    size_t want = 65536;
    if (have >= 4) {
      uint32_t l;
      memcpy(&l, in->data, 4);
      if ((size_t)l + 4 > have + want)
        want = (size_t)l + 4 - have;
    }
    if (in->cap - in->len < want && fp_writer_reserve(in, want) != 0)
      return FP_ENOMEM;
    ssize_t n = read(fd, in->data + in->len, in->cap - in->len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return n == 0 ? FP_EOF : -errno;
    in->len += (size_t)n;
  }
}

void fp__worker_main(fp_pool *pool, int slot_index, int fd) {
  fp__slot *slot = &pool->slots[slot_index];
  g_worker_id = slot_index;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != fp__fs_pid)
    _exit(0); /* the fork server died before we could arm the signal */
  sigprocmask(SIG_SETMASK, &fp__fs_orig_mask, NULL);
  atomic_store(&slot->seq, 0);
  atomic_store(&slot->started_ns, 0);
  atomic_store(&slot->item, -1);
  atomic_store(&slot->pid, (int32_t)getpid());

  if (pool->cpu_of_worker != NULL &&
      fp__affinity_apply(pool->cpu_of_worker[slot_index]) != 0)
    _exit(126);
  if (pool->opts.memory_limit > 0) {
    struct rlimit rl = {pool->opts.memory_limit, pool->opts.memory_limit};
    setrlimit(RLIMIT_AS, &rl);
  }
  if (pool->opts.initializer != NULL &&
      pool->opts.initializer(pool->opts.initarg) != 0)
    _exit(125);
  fflush(stdout);
  fflush(stderr);
  if (send_simple(fd, FP__MSG_READY) != 0)
    _exit(0);

  fp_writer in, data, errs;
  fp_writer_init(&in);
  fp_writer_init(&data);
  fp_writer_init(&errs);
  unsigned done = 0;
  size_t off = 0; /* start of the next frame in `in` */
  for (;;) {
    const unsigned char *payload = NULL;
    size_t plen = 0;
    int rc = next_frame(fd, &in, &off, pool->max_frame, &payload, &plen);
    if (rc != 0)
      _exit(0); /* EOF: the pool is closing, or the master is gone */
    if (plen < 1 || payload[0] != FP__MSG_TASK)
      _exit(124);
    rc = run_chunk(fd, slot, pool->shm, slot_index,
                   frames_buffered(&in, off, pool->max_frame) >= 2, payload,
                   plen, &data, &errs);
    fflush(stdout);
    fflush(stderr);
    if (rc != 0)
      _exit(rc == -EPROTO ? 124 : 0);
    done++;
    if (pool->opts.maxtasksperchild && done >= pool->opts.maxtasksperchild) {
      send_simple(fd, FP__MSG_RETIRE);
      _exit(0);
    }
  }
}
