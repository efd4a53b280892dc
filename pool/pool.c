/* pool.c - the pool: lifecycle, the pool thread's loop, dispatch, deaths.
 *
 * The master side of forkpool. fp_pool_new() forks the fork server, asks it
 * for one worker per slot, and starts the pool thread, which runs a libuv
 * loop over: the control socket (SPAWNED / EXITED reports), one socket per
 * worker (large results, kicks), an async handle (user threads poke it), a
 * tick timer (task time limits and SIGTERM -> SIGKILL escalation), and a
 * prepare/check pair that drains the workers' result rings around every
 * poll (see pool_int.h for the ring protocol).
 *
 * Work flows as chunks: a job (one API call) is cut into chunks that wait in
 * the pending queue until fp__dispatch_locked() sends them to workers. A
 * worker holds one chunk when chunks are long (20 ms or more), so long
 * tasks balance dynamically across workers as with CPython's shared task
 * queue, and about 1 ms of work (2 to 8 chunks) when they are short, so a
 * worker never idles waiting for the master.
 *
 * Dispatch may run on a user thread (submission) or on the pool thread
 * (after a result); both hold pool->mu, and both write to a worker's socket
 * only when nothing of an earlier frame is still unsent. A frame that does
 * not fit in the socket buffer is finished by the pool thread, which alone
 * changes libuv poll masks.
 *
 * When a worker dies, the fork server's EXITED report (authoritative: it
 * carries the wait status) makes the master drain the worker's socket and
 * result ring, then
 * fail the chunk that was running (the shared slot names the chunk and the
 * item), requeue the chunks the worker had not started, and ask for a
 * replacement - unless workers keep dying at start, which breaks the pool
 * with FP_ESTORM instead of forking forever.
 */
#include "pool/pool_int.h"
#include "affinity/affinity.h"
#include "ipc/wire/alloc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define EWMA_PREFETCH_NS 20000000 /* queue ahead below 20 ms per chunk */
#define QUEUE_AHEAD_NS 1000000    /* ... about this much work per worker */
#define TICK_MS 2

static void conn_on_io(uv_poll_t *h, int status, int events);
static int ring_drain_locked(fp_pool *pool, struct fp__wslot *ws);
static void run_callbacks(fp_pool *pool);

_Atomic unsigned fp__fork_gen;

static void on_fork_child(void) {
  atomic_fetch_add(&fp__fork_gen, 1);
}

static void register_atfork(void) {
  pthread_atfork(NULL, NULL, on_fork_child);
}

void fp__mutex_init(pthread_mutex_t *mu) {
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_NORMAL);
  pthread_mutex_init(mu, &ma);
  pthread_mutexattr_destroy(&ma);
}

int fp__on_pool_thread(fp_pool *pool) {
  return pool->thread_started && pthread_equal(pthread_self(), pool->thread);
}

void fp__wake(fp_pool *pool) {
  if (pool->thread_started && !pool->thread_done)
    uv_async_send(&pool->wake);
}

/* ---- control socket ------------------------------------------------------ */

static int fs_send(fp_pool *pool, int op, int slot, int pid, int arg) {
  fp__fs_msg m = {op, slot, pid, arg};
  if (pool->fs_fd < 0)
    return FP_EPIPE;
  for (;;) {
    ssize_t n = send(pool->fs_fd, &m, sizeof(m), MSG_NOSIGNAL);
    if (n == (ssize_t)sizeof(m))
      return 0;
    if (n < 0 && errno == EINTR)
      continue;
    return n < 0 ? -errno : FP_EPROTO;
  }
}

static void spawn_slot_locked(fp_pool *pool, fp__wslot *ws) {
  if (ws->spawning || ws->conn != NULL || pool->broken || pool->fs_gone)
    return;
  atomic_store(&pool->slots[ws->index].pid, 0);
  atomic_store(&pool->slots[ws->index].seq, 0);
  /* The previous process's ring was drained when it died. */
  atomic_store(&pool->shm->rings[ws->index].head, 0);
  atomic_store(&pool->shm->rings[ws->index].tail, 0);
  if (fs_send(pool, FP__FS_SPAWN, ws->index, 0, 0) == 0) {
    ws->spawning = 1;
    pool->nalive++;
  }
}

static void kill_worker_locked(fp_pool *pool, fp__wslot *ws, int sig) {
  if (ws->conn != NULL && ws->conn->pid > 0)
    fs_send(pool, FP__FS_KILL, ws->index, ws->conn->pid, sig);
}

/* ---- pending queue ---------------------------------------------------------- */

void fp__enqueue_locked(fp_pool *pool, fp__chunk *ch) {
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

static void requeue_front_locked(fp_pool *pool, fp__chunk *ch) {
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

/* ---- sending ------------------------------------------------------------ */

static void conn_set_events(fp__conn *c, int events) {
  if (c->closing || c->events == events)
    return;
  c->events = events;
  uv_poll_start(&c->poll, events, conn_on_io);
}

/* Writes the chunks queued for ws but not yet written, all in one
 * sendmsg, so a worker fed several small chunks wakes once and reads them
 * in one go. Returns 0 when everything is written or the unsent tail is
 * buffered for the pool thread; -errno when the socket is broken (the
 * worker is dying; its EXITED report follows). */
static int send_chunks_locked(fp_pool *pool, fp__wslot *ws) {
  fp__conn *c = ws->conn;
  int first = ws->nwritten, n = ws->ninflight - first;
  if (n <= 0 || c->out_len > 0)
    return 0;
  fp__task_hdr th[FP__MAX_INFLIGHT];
  uint32_t flen[FP__MAX_INFLIGHT];
  struct iovec iov[5 * FP__MAX_INFLIGHT];
  static const unsigned char zeros[FP__FRAME_ALIGN];
  size_t total = 0;
  for (int i = 0; i < n; i++) {
    fp__chunk *ch = ws->inflight[first + i];
    fp__job *job = ch->job;
    memset(&th[i], 0, sizeof(th[i]));
    th[i].type = FP__MSG_TASK;
    th[i].wire = job->wire;
    th[i].flags = (job->timeout > 0 ? FP__TASK_TIMED : 0) |
                  (job->kind == FP__JOB_APPLY ? FP__TASK_WHOLE : 0);
    th[i].count = ch->count;
    th[i].seq = ch->seq;
    th[i].start = ch->start;
    th[i].in_size = (uint32_t)job->in_size;
    th[i].out_size = (uint32_t)job->out_size;
    th[i].fn = job->fn;
    th[i].items_len = ch->items_len;
    size_t pad = (FP__FRAME_ALIGN - ch->items_len % FP__FRAME_ALIGN) %
                 FP__FRAME_ALIGN;
    flen[i] =
        (uint32_t)(sizeof(th[i]) + FP__HDR_PAD + ch->items_len + pad);
    iov[5 * i].iov_base = &flen[i];
    iov[5 * i].iov_len = 4;
    iov[5 * i + 1].iov_base = &th[i];
    iov[5 * i + 1].iov_len = sizeof(th[i]);
    iov[5 * i + 2].iov_base = (void *)zeros;
    iov[5 * i + 2].iov_len = FP__HDR_PAD;
    iov[5 * i + 3].iov_base = (void *)ch->items;
    iov[5 * i + 3].iov_len = ch->items_len;
    iov[5 * i + 4].iov_base = (void *)zeros;
    iov[5 * i + 4].iov_len = pad;
    total += 4 + flen[i];
  }
  ws->nwritten = ws->ninflight;
  struct msghdr mh;
  memset(&mh, 0, sizeof(mh));
  mh.msg_iov = iov;
  mh.msg_iovlen = (size_t)(5 * n);
  ssize_t w;
  do
    w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (w < 0 && errno == EINTR);
  if (w < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return -errno;
    w = 0;
  }
  if ((size_t)w < total) {
    /* Keep the unsent tail; the pool thread finishes it on POLLOUT. */
    size_t rest = total - (size_t)w;
    unsigned char *buf = fp__alloc(rest);
    if (buf == NULL)
      return FP_ENOMEM;
    size_t off = 0, skip = (size_t)w;
    for (int i = 0; i < 5 * n; i++) {
      size_t l = iov[i].iov_len;
      if (skip >= l) {
        skip -= l;
        continue;
      }
      memcpy(buf + off, (char *)iov[i].iov_base + skip, l - skip);
      off += l - skip;
      skip = 0;
    }
    c->out = buf;
    c->out_cap = rest;
    c->out_len = rest;
    c->out_off = 0;
    if (fp__on_pool_thread(pool))
      conn_set_events(c, UV_READABLE | UV_WRITABLE | UV_DISCONNECT);
    else
      fp__wake(pool);
  }
  return 0;
}

static int ws_can_take(fp_pool *pool, fp__wslot *ws, int depth) {
  fp__conn *c = ws->conn;
  if (c == NULL || !c->ready || c->eof || ws->retiring || ws->kill_at_ns ||
      ws->kill_reason || c->out_len > 0)
    return 0;
  if (ws->ninflight > depth)
    return 0;
  if (pool->opts.maxtasksperchild &&
      ws->sent >= pool->opts.maxtasksperchild)
    return 0;
  return 1;
}

void fp__dispatch_locked(fp_pool *pool) {
  if (pool->qhead == NULL || pool->state == FP__TERMINATE)
    return;
  int sent_timed = 0;
  /* How deep each worker's queue may be. Long chunks (or none measured
   * yet): one, so the next chunk goes to whichever worker frees up first,
   * as with CPython's shared queue. Shorter chunks: enough queued work to
   * cover QUEUE_AHEAD_NS, the time a result takes to reach the pool thread
   * and the next chunk to come back (a cross-CPU wake-up each way costs
   * tens of microseconds on small VMs), so a worker never idles between
   * chunks; between 2 and FP__MAX_INFLIGHT, or exactly `inflight` when
   * the user set it. */
  int maxdepth = 1;
  if (pool->ewma_ns > 0 && pool->ewma_ns < EWMA_PREFETCH_NS) {
    int64_t d = 1 + (QUEUE_AHEAD_NS + pool->ewma_ns - 1) / pool->ewma_ns;
    if (pool->inflight > 0) /* the user fixed it */
      maxdepth = pool->inflight;
    else
      maxdepth = d < 2 ? 2 : d > FP__MAX_INFLIGHT ? FP__MAX_INFLIGHT : (int)d;
  }
  /* A submitting thread feeds idle workers only: deeper queues are filled
   * by the pool thread when results come back, several chunks per write,
   * instead of one system call and one worker wakeup per submission. */
  if (!fp__on_pool_thread(pool))
    maxdepth = 1;
  /* Assign level by level, idle workers first; then write each worker's
   * new chunks with one system call. */
  for (int depth = 0; depth < maxdepth && pool->qhead; depth++) {
    for (int k = 0; k < pool->nworkers && pool->qhead; k++) {
      fp__wslot *ws = &pool->ws[(pool->rr + k) % pool->nworkers];
      if (!ws_can_take(pool, ws, depth))
        continue;
      fp__chunk *ch = pool->qhead;
      dequeue_locked(pool, ch);
      ch->state = FP__CH_SENT;
      ws->inflight[ws->ninflight++] = ch;
      ws->sent++;
      sent_timed |= ch->job->timeout > 0;
      if (ws->ninflight == 1)
        ws->last_done_ns = fp__now_ns();
    }
  }
  for (int k = 0; k < pool->nworkers; k++) {
    fp__wslot *ws = &pool->ws[k];
    if (ws->conn && ws->nwritten < ws->ninflight &&
        send_chunks_locked(pool, ws) != 0)
      ws->conn->eof = 1; /* broken: its death requeues what it held */
  }
  pool->rr = (pool->rr + 1) % pool->nworkers;
  if (sent_timed && !pool->tick_on && !fp__on_pool_thread(pool))
    fp__wake(pool); /* let the loop arm the tick for time limits */
}

/* ---- jobs ---------------------------------------------------------------- */

void fp__job_add_locked(fp_pool *pool, fp__job *job) {
  job->jprev = NULL;
  job->jnext = pool->jobs;
  if (pool->jobs)
    pool->jobs->jprev = job;
  pool->jobs = job;
}

static void job_unlink_locked(fp_pool *pool, fp__job *job) {
  if (job->jprev)
    job->jprev->jnext = job->jnext;
  else if (pool->jobs == job)
    pool->jobs = job->jnext;
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
  char *m = malloc(msg_len + 1);
  if (m != NULL) {
    memcpy(m, msg, msg_len);
    m[msg_len] = 0;
  }
  free(job->err_msg);
  job->err_msg = m;
  job->err_code = code;
  job->err_index = index;
}

/* Finishes a job whose chunks are all accounted for (or that was canceled):
 * delivers the outcome and unlinks it. Results go on the pool's callback
 * list; the pool thread runs callbacks and wakes waiters after unlocking. */
static void job_finish_locked(fp_pool *pool, fp__job *job);

typedef struct fp__cbnode cbnode;

void fp__job_maybe_finish_locked(fp_pool *pool, fp__job *job) {
  if (!job->finished && job->input_done && job->chunks_done == job->nchunks)
    job_finish_locked(pool, job);
}

void fp__job_cancel_locked(fp_pool *pool, fp__job *job, int code,
                           int64_t index, const char *msg) {
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
  /* A running chunk of the job (always a worker's first in-flight chunk)
   * has its worker killed and replaced. Chunks of the job queued behind
   * another job's chunk are left to run and their results dropped: killing
   * that worker would fail an innocent job. */
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    if (ws->ninflight > 0 && ws->inflight[0]->job == job && ws->conn &&
        !ws->kill_reason && pool->state != FP__TERMINATE) {
      ws->kill_reason = FP_ECANCELED;
      ws->kill_seq = ws->inflight[0]->seq;
      ws->kill_at_ns = fp__now_ns() + (int64_t)(pool->opts.kill_grace * 1e9);
      kill_worker_locked(pool, ws, SIGTERM);
      fp__wake(pool);
    }
  }
  job->canceled = 1;
  job->err_code = 0;
  job_note_error(job, index, code, msg, strlen(msg));
  job->input_done = 1;
  job_finish_locked(pool, job);
}

static void job_finish_locked(fp_pool *pool, fp__job *job) {
  job->finished = 1;
  job_unlink_locked(pool, job);
  fp__progress_finish(job->pg);
  job->pg = NULL;
  fp_result *res = fp__job_complete_locked(pool, job);
  if (res != NULL) {
    cbnode *n = malloc(sizeof(*n));
    if (n == NULL) {
      fp__result_run_callbacks(res); /* degrade: deliver in place */
    } else {
      n->res = res;
      n->next = NULL;
      if (pool->cb_tail)
        pool->cb_tail->next = n;
      else
        pool->cb_head = n;
      pool->cb_tail = n;
      if (!fp__on_pool_thread(pool))
        fp__wake(pool);
    }
  }
  /* Chunks still travelling keep the job alive until they come back. */
  size_t live = 0;
  for (int i = 0; i < pool->nworkers; i++)
    for (int k = 0; k < pool->ws[i].ninflight; k++)
      if (pool->ws[i].inflight[k]->job == job)
        live++;
  job->chunks_live = live;
  if (live == 0)
    fp__job_free(job);
  pthread_cond_broadcast(&pool->cond);
}

/* ---- results from workers ------------------------------------------------ */

/* Frames at least this big that start the read buffer are handed to their
 * chunk with the buffer itself instead of being copied out of it. */
#define STEAL_MIN (64 * 1024)

/* Takes a RESULT frame's payload (p, len). When `steal` is set, p is the
 * start of c->in and the chunk may take the whole buffer (c->in becomes
 * NULL; the caller keeps what followed the frame). */
static void chunk_results(fp_pool *pool, fp__wslot *ws, const unsigned char *p,
                          size_t len, fp__conn *steal) {
  fp__res_hdr rh;
  if (len < sizeof(rh) || ws->ninflight == 0)
    goto bad;
  memcpy(&rh, p, sizeof(rh));
  /* Results come in order per path, but a large one (socket) may be
   * overtaken by a later small one (ring): find the chunk by its id. */
  int k = 0;
  while (k < ws->nwritten && ws->inflight[k]->seq != rh.seq)
    k++;
  if (k == ws->nwritten)
    goto bad;
  fp__chunk *ch = ws->inflight[k];
  if (rh.count != ch->count || rh.errs_len > len - sizeof(rh))
    goto bad;
  memmove(ws->inflight + k, ws->inflight + k + 1,
          sizeof(ws->inflight[0]) * (size_t)(ws->ninflight - k - 1));
  ws->ninflight--;
  ws->nwritten--;
  int64_t now = fp__now_ns();
  int64_t took = now - ws->last_done_ns;
  ws->last_done_ns = now;
  pool->ewma_ns = pool->ewma_ns ? (pool->ewma_ns * 7 + took) / 8 : took;
  ws->tasks++;
  fp__job *job = ch->job;
  const unsigned char *errs = p + sizeof(rh);
  const unsigned char *data = errs + rh.errs_len;
  size_t data_len = len - sizeof(rh) - rh.errs_len;

  if (job->finished) {
    /* Canceled while this chunk travelled: drop it. */
    fp__chunk_free(ch);
    if (--job->chunks_live == 0)
      fp__job_free(job);
    return;
  }
  int is_iter = job->it != NULL;
  if (rh.nerr > 0) {
    ch->errs = calloc(rh.nerr, sizeof(*ch->errs));
    size_t off = 0;
    for (uint32_t i = 0; i < rh.nerr; i++) {
      fp__err_rec rec;
      if (off + sizeof(rec) > rh.errs_len)
        break;
      memcpy(&rec, errs + off, sizeof(rec));
      off += sizeof(rec);
      if (rec.msg_len > rh.errs_len - off)
        break;
      const char *msg = (const char *)errs + off;
      off += rec.msg_len;
      if (!is_iter)
        job_note_error(job, rec.index, rec.code, msg, rec.msg_len);
      if (ch->errs != NULL) {
        ch->errs[ch->nerr].index = rec.index;
        ch->errs[ch->nerr].code = rec.code;
        ch->errs[ch->nerr].msg = strndup(msg, rec.msg_len);
        ch->nerr++;
      }
    }
  }
  if (job->wire == FP__WIRE_FIXED) {
    size_t want = (size_t)ch->count * job->out_size;
    if (data_len >= want) {
      fp_result *res = job->res;
      pthread_mutex_lock(&res->mu);
      if (!res->user_freed)
        memcpy(job->fixed_out + (size_t)ch->start * job->out_size, data,
               want);
      pthread_mutex_unlock(&res->mu);
    }
  } else if (data_len >= STEAL_MIN && steal != NULL) {
    /* Large results: keep them where recv() put them. */
    ch->res_base = steal->in;
    ch->res_cap = steal->in_cap;
    ch->res = (unsigned char *)data;
    ch->res_len = data_len;
    steal->in = NULL;
    steal->in_cap = 0;
  } else if (data_len > 0) {
    ch->res = fp__alloc(data_len);
    if (ch->res != NULL) {
      memcpy(ch->res, data, data_len);
      ch->res_len = data_len;
    }
  }
  ch->state = FP__CH_DONE;
  job->chunks_done++;
  job->items_done += ch->count;
  fp__progress_update(job->pg, job->items_done);
  if (is_iter)
    fp__iter_chunk_done_locked(job, ch);
  else
    fp__job_stream_locked(job);
  fp__job_maybe_finish_locked(pool, job);
  return;
bad:
  /* A worker that speaks nonsense is killed; its death fails its chunks. */
  ws->kill_reason = FP_EPROTO;
  kill_worker_locked(pool, ws, SIGKILL);
}

/* Handles every complete frame in the connection's read buffer. */
static void conn_process(fp_pool *pool, fp__conn *c) {
  fp__wslot *ws = c->ws;
  size_t off = 0;
  while (c->in_len - off >= 4) {
    size_t plen;
    int rc = fp_frame_parse(c->in + off, c->in_len - off, pool->max_frame,
                            &plen);
    if (rc == 1)
      break;
    if (rc < 0) {
      ws->kill_reason = FP_EPROTO;
      kill_worker_locked(pool, ws, SIGKILL);
      c->eof = 1;
      off = c->in_len;
      break;
    }
    const unsigned char *p = c->in + off + 4;
    off += 4 + plen;
    if (plen < 1)
      continue;
    switch (p[0]) {
    case FP__MSG_READY:
      if (!c->ready) {
        c->ready = 1;
        pool->nready++;
        pthread_cond_broadcast(&pool->cond);
      }
      break;
    case FP__MSG_RESULT: {
      /* A large result alone at the start of the buffer may take the
       * buffer with it. What followed the frame is saved first: the chunk
       * can free the buffer before chunk_results returns (a blocking call
       * streams its results out at once). */
      fp__conn *steal = NULL;
      unsigned char *nb = NULL;
      size_t rest = 0, cap = 0;
      if (off == 4 + plen && plen >= STEAL_MIN) {
        rest = c->in_len - off;
        cap = rest > 65536 ? rest : 65536;
        nb = fp__alloc(cap);
        if (nb != NULL) {
          memcpy(nb, c->in + off, rest);
          steal = c;
        }
      }
      chunk_results(pool, ws, p, plen, steal);
      if (steal != NULL && c->in == NULL) {
        c->in = nb;
        c->in_cap = cap;
        c->in_len = rest;
        off = 0;
      } else if (nb != NULL) {
        fp__free(nb, cap);
      }
      break;
    }
    case FP__MSG_RETIRE:
      ws->retiring = 1;
      break;
    case FP__MSG_KICK:
      ring_drain_locked(pool, ws); /* the results are in the ring */
      break;
    default:
      ws->kill_reason = FP_EPROTO;
      kill_worker_locked(pool, ws, SIGKILL);
      break;
    }
  }
  if (off > 0) {
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
  }
}

/* Handles every result published in ws's ring (see pool_int.h). Returns
 * the number of results taken. */
static int ring_drain_locked(fp_pool *pool, fp__wslot *ws) {
  fp__ring *r = &pool->shm->rings[ws->index];
  uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
  int n = 0;
  while (h != t) {
    size_t pos = (size_t)(h % FP__RING_SIZE);
    uint32_t len;
    memcpy(&len, r->data + pos, 4);
    if (len == FP__RING_WRAP) {
      h += FP__RING_SIZE - pos;
      continue;
    }
    if (len > FP__RING_MAX || pos + 4 + len > FP__RING_SIZE ||
        t - h > FP__RING_SIZE) {
      /* A worker that corrupts its ring is killed like one that sends
       * nonsense on its socket. */
      ws->kill_reason = FP_EPROTO;
      kill_worker_locked(pool, ws, SIGKILL);
      h = t;
      break;
    }
    if (r->data[pos + 4] == FP__MSG_RESULT)
      chunk_results(pool, ws, r->data + pos + 4, len, NULL);
    h += (4 + (uint64_t)len + 7) & ~(uint64_t)7;
    n++;
  }
  /* chunk_results copied what it keeps: the space can be reused. */
  atomic_store_explicit(&r->head, h, memory_order_release);
  return n;
}

static int rings_pending(fp_pool *pool) {
  for (int i = 0; i < pool->nworkers; i++) {
    fp__ring *r = &pool->shm->rings[i];
    if (atomic_load_explicit(&r->tail, memory_order_seq_cst) !=
        atomic_load_explicit(&r->head, memory_order_relaxed))
      return 1;
  }
  return 0;
}

/* Reads what the socket has. Returns 0, or 1 at EOF/error. */
static int conn_read(fp_pool *pool, fp__conn *c) {
  for (;;) {
    /* Size the buffer for the frame being received, so a large frame is
     * read straight into place instead of through many small copies. */
    size_t need = c->in_len + 65536;
    if (c->in_len >= 4) {
      size_t plen;
      if (fp_frame_parse(c->in, c->in_len, pool->max_frame, &plen) == 1) {
        uint32_t l;
        memcpy(&l, c->in, 4);
        if (4 + (size_t)l > need)
          need = 4 + (size_t)l;
      }
    }
    if (need > c->in_cap) {
      unsigned char *nb = fp__realloc(c->in, c->in_cap, need);
      if (nb == NULL)
        return 1;
      c->in = nb;
      c->in_cap = need;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len,
                     MSG_DONTWAIT);
    if (n > 0) {
      size_t space = c->in_cap - c->in_len;
      c->in_len += (size_t)n;
      conn_process(pool, c);
      /* A short read drained the socket: the level-triggered poll says
       * when more arrives, so skip the recv that would say EAGAIN. */
      if ((size_t)n < space)
        return 0;
      continue;
    }
    if (n == 0)
      return 1;
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return 0;
    return 1;
  }
}

static void conn_flush(fp_pool *pool, fp__conn *c) {
  while (c->out_len > c->out_off) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c->out_off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    c->eof = 1; /* broken: the worker is dying */
    break;
  }
  fp__free(c->out, c->out_cap);
  c->out = NULL;
  c->out_cap = c->out_len = c->out_off = 0;
  conn_set_events(c, UV_READABLE | UV_DISCONNECT);
  fp__dispatch_locked(pool);
}

static void conn_on_io(uv_poll_t *h, int status, int events) {
  fp__conn *c = (fp__conn *)h;
  fp_pool *pool = c->pool;
  pthread_mutex_lock(&pool->mu);
  if (!c->closing) {
    ring_drain_locked(pool, c->ws);
    if (events & UV_WRITABLE)
      conn_flush(pool, c);
    if (status < 0 || (events & (UV_READABLE | UV_DISCONNECT))) {
      if (conn_read(pool, c) != 0 || status < 0) {
        /* EOF: the worker is gone or going; its EXITED report decides. */
        c->eof = 1;
        uv_poll_stop(&c->poll);
        c->events = 0;
      }
    }
    fp__dispatch_locked(pool);
  }
  pthread_mutex_unlock(&pool->mu);
  run_callbacks(pool);
}

static void conn_closed(uv_handle_t *h) {
  fp__conn *c = (fp__conn *)h;
  fp__free(c->in, c->in_cap);
  fp__free(c->out, c->out_cap);
  free(c);
}

static void conn_close(fp__conn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  fp__fdreg_del(c->fd);
  close(c->fd);
  uv_close((uv_handle_t *)&c->poll, conn_closed);
}

/* ---- deaths ---------------------------------------------------------------- */

static void describe_status(int status, char *buf, size_t len) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char *abbrev = sigabbrev_np(sig);
    snprintf(buf, len, "killed by signal SIG%s (%s)", abbrev ? abbrev : "?",
             sigdescr_np(sig) ? sigdescr_np(sig) : "unknown");
  } else if (WIFEXITED(status)) {
    int code = WEXITSTATUS(status);
    if (code == 125)
      snprintf(buf, len, "initializer failed");
    else
      snprintf(buf, len, "exited with status %d", code);
  } else {
    snprintf(buf, len, "ended with wait status %d", status);
  }
}

/* Fails a chunk whose worker died while running it. The item that was
 * executing carries the cause; for iterators, the chunk's other items
 * (their results died with the worker) fail as lost. */
static void chunk_crashed_locked(fp_pool *pool, fp__chunk *ch, int code,
                                 int64_t item, const char *msg) {
  fp__job *job = ch->job;
  if (item < ch->start || item >= ch->start + (int64_t)ch->count)
    item = ch->start;
  job_note_error(job, item, code, msg, strlen(msg));
  if (job->it != NULL) {
    ch->errs = calloc(ch->count, sizeof(*ch->errs));
    if (ch->errs != NULL) {
      for (uint32_t i = 0; i < ch->count; i++) {
        int64_t idx = ch->start + i;
        char lost[160];
        ch->errs[i].index = idx;
        ch->errs[i].code = idx == item ? code : FP_EWORKER;
        if (idx != item)
          snprintf(lost, sizeof(lost),
                   "item %lld: result lost: its chunk's worker died at item "
                   "%lld",
                   (long long)idx, (long long)item);
        ch->errs[i].msg = strdup(idx == item ? msg : lost);
      }
      ch->nerr = ch->count;
    }
  }
  if (job->wire != FP__WIRE_FIXED) {
    ch->res = fp__alloc(ch->count);
    if (ch->res != NULL) {
      memset(ch->res, FP_NIL, ch->count);
      ch->res_len = ch->count;
    }
  }
  ch->state = FP__CH_DONE;
  job->chunks_done++;
  job->items_done += ch->count;
  fp__progress_update(job->pg, job->items_done);
  if (job->it != NULL)
    fp__iter_chunk_done_locked(job, ch);
  else
    fp__job_stream_locked(job);
  fp__job_maybe_finish_locked(pool, job);
}

static int storm_locked(fp_pool *pool) {
  int64_t now = fp__now_ns();
  int n = pool->opts.max_restarts;
  pool->start_fail_ns[pool->start_fail_pos] = now;
  pool->start_fail_pos = (pool->start_fail_pos + 1) % (n + 1);
  /* The ring holds the last n+1 start failures: the storm is on when the
   * oldest of them is inside the window too. */
  int64_t oldest = pool->start_fail_ns[pool->start_fail_pos];
  return oldest != 0 &&
         now - oldest <= (int64_t)(pool->opts.restart_window * 1e9);
}

static void break_pool_locked(fp_pool *pool, int code, const char *msg) {
  pool->broken = code;
  while (pool->jobs)
    fp__job_cancel_locked(pool, pool->jobs, code, -1, msg);
  pthread_cond_broadcast(&pool->cond);
}

static int work_remains(fp_pool *pool) {
  return pool->jobs != NULL || pool->qhead != NULL;
}

static void worker_exited_locked(fp_pool *pool, int slot, pid_t pid,
                                 int status) {
  if (slot < 0 || slot >= pool->nworkers)
    return;
  fp__wslot *ws = &pool->ws[slot];
  fp__conn *c = ws->conn;
  if (c == NULL || c->pid != pid)
    return;
  /* Results the worker wrote before dying are still in the socket and in
   * its ring: take them all before deciding what it held. */
  if (!c->eof)
    conn_read(pool, c);
  ring_drain_locked(pool, ws);
  int was_ready = c->ready;
  if (was_ready)
    pool->nready--;
  ws->conn = NULL;
  conn_close(c);
  pool->nalive--;
  int clean = ws->retiring && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  int reason = ws->kill_reason ? ws->kill_reason : FP_EWORKER;
  uint64_t kill_seq = ws->kill_seq;
  ws->kill_reason = 0;
  ws->kill_seq = 0;
  ws->kill_at_ns = 0;
  ws->retiring = 0;
  ws->sent = 0;
  fp__slot *sl = &pool->slots[slot];
  uint64_t running = atomic_load(&sl->seq);
  int64_t item = atomic_load(&sl->item);
  char how[160], msg[FP__MSG_LEN];
  describe_status(status, how, sizeof(how));

  int n = ws->ninflight;
  fp__chunk *held[FP__MAX_INFLIGHT];
  memcpy(held, ws->inflight, sizeof(held[0]) * (size_t)n);
  ws->ninflight = 0;
  ws->nwritten = 0;
  /* Requeue in reverse so the queue keeps the original order. */
  for (int k = n - 1; k >= 0; k--) {
    fp__chunk *ch = held[k];
    fp__job *job = ch->job;
    if (job->finished) {
      fp__chunk_free(ch);
      if (--job->chunks_live == 0)
        fp__job_free(job);
      continue;
    }
    /* We killed this worker for another chunk (a time limit or a cancel
     * that raced with the worker moving on): this one is innocent. */
    int innocent = (reason == FP_ETIMEDOUT || reason == FP_ECANCELED) &&
                   ch->seq != kill_seq;
    if (clean || innocent || ch->seq != running ||
        pool->state == FP__TERMINATE) {
      if (pool->state == FP__TERMINATE)
        ch->state = FP__CH_DONE; /* the job is being canceled */
      else
        requeue_front_locked(pool, ch);
      continue;
    }
    int64_t at = item;
    if (at < ch->start || at >= ch->start + (int64_t)ch->count)
      at = ch->start;
    if (reason == FP_ETIMEDOUT)
      snprintf(msg, sizeof(msg),
               "item %lld: exceeded its time limit of %gs; worker %d (pid "
               "%d) was killed",
               (long long)at, job->timeout, slot, (int)pid);
    else if (reason == FP_ECANCELED)
      snprintf(msg, sizeof(msg), "item %lld: canceled; worker %d (pid %d) %s",
               (long long)at, slot, (int)pid, how);
    else
      snprintf(msg, sizeof(msg),
               "item %lld: worker %d (pid %d) %s while running it",
               (long long)at, slot, (int)pid, how);
    if (reason == FP_EWORKER && job->on_crash == FP_CRASH_RETRY &&
        ch->attempts < job->retries) {
      ch->attempts++;
      requeue_front_locked(pool, ch);
    } else if (reason == FP_EWORKER && job->on_crash == FP_CRASH_ABORT) {
      int heap = ch->heap;
      fp__job_cancel_locked(pool, job, FP_EWORKER, at, msg);
      if (heap)
        fp__chunk_free(ch); /* array chunks go with their job */
    } else {
      chunk_crashed_locked(pool, ch, reason, at, msg);
    }
  }

  if (!was_ready && !clean && pool->state != FP__TERMINATE) {
    if (storm_locked(pool)) {
      snprintf(msg, sizeof(msg),
               "workers keep dying at start (last: pid %d %s): more than %d "
               "in %gs",
               (int)pid, how, pool->opts.max_restarts,
               pool->opts.restart_window);
      break_pool_locked(pool, FP_ESTORM, msg);
    }
  }
  int respawn = !pool->broken &&
                (pool->state == FP__RUN ||
                 (pool->state == FP__CLOSE && work_remains(pool)));
  if (respawn) {
    ws->restarts++;
    spawn_slot_locked(pool, ws);
  }
  fp__dispatch_locked(pool);
  pthread_cond_broadcast(&pool->cond);
}

static void worker_spawned_locked(fp_pool *pool, int slot, pid_t pid, int fd) {
  if (slot < 0 || slot >= pool->nworkers || fd < 0) {
    if (fd >= 0)
      close(fd);
    return;
  }
  fp__wslot *ws = &pool->ws[slot];
  ws->spawning = 0;
  fp__conn *c = calloc(1, sizeof(*c));
  if (c == NULL || uv_poll_init(&pool->loop, &c->poll, fd) != 0) {
    free(c);
    close(fd);
    fs_send(pool, FP__FS_KILL, slot, pid, SIGKILL);
    return; /* its EXITED report finds no conn; nalive fixed there */
  }
  fp__fdreg_add(fd);
  c->ws = ws;
  c->pool = pool;
  c->fd = fd;
  c->pid = pid;
  ws->conn = c;
  conn_set_events(c, UV_READABLE | UV_DISCONNECT);
  if (pool->state == FP__TERMINATE)
    kill_worker_locked(pool, ws, SIGKILL);
}

/* ---- the loop's handlers ---------------------------------------------------- */

static void fs_gone_locked(fp_pool *pool) {
  if (pool->fs_gone)
    return;
  pool->fs_gone = 1;
  uv_poll_stop(&pool->fs_poll);
  /* Without the fork server no worker can live (PDEATHSIG) or be
   * replaced: every worker is dead or dying. */
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    if (ws->conn) {
      ws->conn->eof = 1;
      worker_exited_locked(pool, i, ws->conn->pid, SIGKILL);
    }
    if (ws->spawning) {
      ws->spawning = 0;
      pool->nalive--;
    }
  }
  pool->nalive = 0;
  /* Broken even when idle: new work could never run. */
  if (pool->state != FP__TERMINATE)
    break_pool_locked(pool, FP_EWORKER, "the pool's fork server died");
}

static void fs_on_io(uv_poll_t *h, int status, int events) {
  fp_pool *pool = h->data;
  pthread_mutex_lock(&pool->mu);
  for (;;) {
    fp__fs_msg m;
    union {
      char buf[CMSG_SPACE(sizeof(int))];
      struct cmsghdr align;
    } u;
    struct iovec iov = {&m, sizeof(m)};
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = u.buf;
    mh.msg_controllen = sizeof(u.buf);
    ssize_t n = recvmsg(pool->fs_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    if (n <= 0) {
      fs_gone_locked(pool);
      break;
    }
    int fd = -1;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
      memcpy(&fd, CMSG_DATA(cm), sizeof(int));
    if (n != sizeof(m)) {
      if (fd >= 0)
        close(fd);
      continue;
    }
    switch (m.op) {
    case FP__FS_SPAWNED:
      worker_spawned_locked(pool, m.slot, m.pid, fd);
      break;
    case FP__FS_EXITED:
      worker_exited_locked(pool, m.slot, m.pid, m.arg);
      break;
    case FP__FS_FAILED:
      if (m.slot >= 0 && m.slot < pool->nworkers &&
          pool->ws[m.slot].spawning) {
        pool->ws[m.slot].spawning = 0;
        pool->nalive--;
        if (storm_locked(pool))
          break_pool_locked(pool, FP_ESTORM,
                            "the fork server cannot fork workers");
        else if (pool->state == FP__RUN ||
                 (pool->state == FP__CLOSE && work_remains(pool)))
          spawn_slot_locked(pool, &pool->ws[m.slot]); /* try again */
      }
      break;
    default:
      if (fd >= 0)
        close(fd);
    }
  }
  (void)status;
  (void)events;
  pthread_mutex_unlock(&pool->mu);
  run_callbacks(pool);
}

static int need_tick_locked(fp_pool *pool) {
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    if (ws->kill_at_ns)
      return 1;
    for (int k = 0; k < ws->ninflight; k++)
      if (ws->inflight[k]->job->timeout > 0)
        return 1;
  }
  return 0;
}

static void on_tick(uv_timer_t *t) {
  fp_pool *pool = t->data;
  pthread_mutex_lock(&pool->mu);
  int64_t now = fp__now_ns();
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    if (ws->conn == NULL)
      continue;
    if (ws->kill_at_ns && now >= ws->kill_at_ns) {
      kill_worker_locked(pool, ws, SIGKILL);
      ws->kill_at_ns = INT64_MAX; /* SIGKILL sent; wait for EXITED */
      continue;
    }
    if (ws->ninflight == 0 || ws->kill_reason)
      continue;
    fp__chunk *ch = ws->inflight[0];
    double limit = ch->job->timeout;
    if (limit <= 0)
      continue;
    fp__slot *sl = &pool->slots[i];
    if (atomic_load(&sl->seq) != ch->seq)
      continue;
    int64_t started = atomic_load_explicit(&sl->started_ns,
                                           memory_order_acquire);
    if (started > 0 && now - started > (int64_t)(limit * 1e9)) {
      ws->kill_reason = FP_ETIMEDOUT;
      ws->kill_seq = ch->seq;
      ws->kill_at_ns = now + (int64_t)(pool->opts.kill_grace * 1e9);
      kill_worker_locked(pool, ws, SIGTERM);
    }
  }
  if (!need_tick_locked(pool)) {
    uv_timer_stop(&pool->tick);
    pool->tick_on = 0;
  }
  pthread_mutex_unlock(&pool->mu);
}

static void closed_noop(uv_handle_t *h) {
  (void)h;
}

/* Moves the pool towards its end once closed or terminated: workers are
 * told to leave when no work remains, and once none is alive the control
 * socket is closed (the fork server exits) and the loop's handles close,
 * which ends uv_run() and the pool thread. */
static void maybe_shutdown_locked(fp_pool *pool) {
  if (pool->state == FP__RUN || pool->stopping)
    return;
  if (pool->state == FP__CLOSE && work_remains(pool) && !pool->broken)
    return;
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    if (ws->conn && !ws->conn->eof && ws->ninflight == 0 &&
        ws->conn->out_len == 0)
      shutdown(ws->conn->fd, SHUT_WR); /* EOF: the worker exits */
  }
  /* Terminating: wait until every worker is reported dead (terminate
   * returns only then). Closing: the workers have no work and are leaving
   * on EOF; the fork server reaps them before it exits, and join waits for
   * the fork server, so there is no need to wait for each EXITED report. */
  if (pool->state == FP__TERMINATE && pool->nalive > 0 && !pool->fs_gone)
    return;
  pool->stopping = 1;
  if (!pool->fs_gone)
    uv_poll_stop(&pool->fs_poll);
  uv_close((uv_handle_t *)&pool->fs_poll, closed_noop);
  shutdown(pool->fs_fd, SHUT_RDWR);
  uv_close((uv_handle_t *)&pool->wake, closed_noop);
  uv_timer_stop(&pool->tick);
  uv_close((uv_handle_t *)&pool->tick, closed_noop);
  uv_close((uv_handle_t *)&pool->prep, closed_noop);
  uv_close((uv_handle_t *)&pool->chk, closed_noop);
  uv_close((uv_handle_t *)&pool->spin, closed_noop);
  for (int i = 0; i < pool->nworkers; i++)
    if (pool->ws[i].conn) {
      conn_close(pool->ws[i].conn);
      pool->ws[i].conn = NULL;
    }
}

static void terminate_locked(fp_pool *pool) {
  while (pool->jobs)
    fp__job_cancel_locked(pool, pool->jobs, FP_ECANCELED, -1,
                          "the pool was terminated");
  while (pool->qhead)
    dequeue_locked(pool, pool->qhead);
  int64_t kill_at = fp__now_ns() + (int64_t)(pool->opts.kill_grace * 1e9);
  for (int i = 0; i < pool->nworkers; i++) {
    fp__wslot *ws = &pool->ws[i];
    if (ws->conn && !ws->kill_at_ns) {
      kill_worker_locked(pool, ws, SIGTERM);
      ws->kill_at_ns = kill_at;
    }
  }
}

static void on_wake(uv_async_t *a) {
  fp_pool *pool = a->data;
  pthread_mutex_lock(&pool->mu);
  if (pool->state == FP__TERMINATE && !pool->stopping)
    terminate_locked(pool);
  for (int i = 0; i < pool->nworkers; i++) {
    fp__conn *c = pool->ws[i].conn;
    if (c && !c->eof && c->out_len > 0)
      conn_set_events(c, UV_READABLE | UV_WRITABLE | UV_DISCONNECT);
  }
  fp__dispatch_locked(pool);
  pthread_mutex_unlock(&pool->mu);
  run_callbacks(pool);
}

/* Runs queued result callbacks and wakes waiters, outside pool->mu. Also
 * the place where every handler re-checks timers and shutdown. */
static void run_callbacks(fp_pool *pool) {
  for (;;) {
    pthread_mutex_lock(&pool->mu);
    cbnode *list = pool->cb_head; /* take the whole list at once */
    pool->cb_head = pool->cb_tail = NULL;
    if (list == NULL && !pool->stopping) {
      if (!pool->tick_on && need_tick_locked(pool)) {
        uv_timer_start(&pool->tick, on_tick, TICK_MS, TICK_MS);
        pool->tick_on = 1;
      }
      maybe_shutdown_locked(pool);
    }
    pthread_mutex_unlock(&pool->mu);
    if (list == NULL)
      return;
    while (list != NULL) {
      cbnode *n = list;
      list = n->next;
      fp__result_run_callbacks(n->res);
      free(n);
    }
  }
}

static void idle_noop(uv_idle_t *h) {
  (void)h;
}

/* Before the loop sleeps: tell workers to kick, then look at the rings
 * once more (a result published before the flag was seen would otherwise
 * wait for the next event). */
static void on_prepare(uv_prepare_t *h) {
  fp_pool *pool = h->data;
  atomic_store(&pool->shm->master_idle, 1); /* seq_cst, as the tail */
  if (rings_pending(pool)) {
    atomic_store(&pool->shm->master_idle, 0);
    uv_idle_start(&pool->spin, idle_noop); /* poll, don't wait */
  } else {
    uv_idle_stop(&pool->spin);
  }
}

/* After the loop wakes: no kicks needed while we work; take the results. */
static void on_check(uv_check_t *h) {
  fp_pool *pool = h->data;
  atomic_store(&pool->shm->master_idle, 0);
  if (!rings_pending(pool))
    return;
  pthread_mutex_lock(&pool->mu);
  for (int i = 0; i < pool->nworkers; i++)
    if (pool->ws[i].conn != NULL)
      ring_drain_locked(pool, &pool->ws[i]);
  fp__dispatch_locked(pool);
  pthread_mutex_unlock(&pool->mu);
  run_callbacks(pool);
}

static void *pool_thread(void *arg) {
  fp_pool *pool = arg;
  uv_run(&pool->loop, UV_RUN_DEFAULT);
  pthread_mutex_lock(&pool->mu);
  pool->thread_done = 1;
  pthread_cond_broadcast(&pool->cond);
  pthread_mutex_unlock(&pool->mu);
  return NULL;
}

/* ---- public lifecycle ------------------------------------------------------- */

static int resolve_opts(fp_pool *pool, const fp_pool_opts *in) {
  fp_pool_opts o;
  if (in)
    o = *in;
  else
    memset(&o, 0, sizeof(o));
  if (o.processes < 0 || o.processes > 4096 || o.task_timeout < 0 ||
      o.kill_grace < 0 || o.retries < 0 || o.max_restarts < 0 ||
      o.restart_window < 0 || o.inflight < 0 ||
      o.inflight > FP__MAX_INFLIGHT || o.on_crash < FP_CRASH_DEFAULT ||
      o.on_crash > FP_CRASH_ABORT || o.progress < FP_PROGRESS_DEFAULT ||
      o.progress > FP_PROGRESS_CALLBACK ||
      (o.max_frame != 0 && o.max_frame < 4096) ||
      o.max_frame > UINT32_MAX)
    return FP_EINVAL;
  if (o.processes == 0)
    o.processes = fp_cpu_count();
  if (o.processes < 1)
    o.processes = 1;
  if (o.kill_grace == 0)
    o.kill_grace = 0.2;
  if (o.on_crash == FP_CRASH_DEFAULT)
    o.on_crash = FP_CRASH_FAIL;
  if (o.retries == 0)
    o.retries = 1;
  if (o.max_restarts == 0)
    o.max_restarts = 5;
  if (o.restart_window == 0)
    o.restart_window = 1.0;
  if (o.progress == FP_PROGRESS_DEFAULT)
    o.progress = FP_PROGRESS_OFF;
  pool->inflight = o.inflight; /* 0: adaptive */
  pool->max_frame = o.max_frame ? o.max_frame : FP_FRAME_MAX_DEFAULT;
  pool->nworkers = o.processes;
  pool->opts = o;
  return 0;
}

static void pool_release(fp_pool *pool) {
  if (pool->slots)
    munmap(pool->slots, pool->slots_len);
  if (pool->shm)
    munmap(pool->shm, pool->shm_len);
  free(pool->ws);
  free(pool->cpu_of_worker);
  free(pool->pin_cpus);
  free(pool->start_fail_ns);
  pthread_mutex_destroy(&pool->mu);
  pthread_cond_destroy(&pool->cond);
  free(pool);
}

int fp_pool_new(fp_pool **out, const fp_pool_opts *opts) {
  if (out == NULL)
    return FP_EINVAL;
  *out = NULL;
  fp_pool *pool = calloc(1, sizeof(*pool));
  if (pool == NULL)
    return FP_ENOMEM;
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, register_atfork);
  fp__mutex_init(&pool->mu);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&pool->cond, &ca);
  pthread_condattr_destroy(&ca);
  pool->fs_fd = -1;
  int rc = resolve_opts(pool, opts);
  if (rc != 0) {
    fp__set_last_error(rc, "invalid pool options");
    pool_release(pool);
    return rc;
  }
  int n = pool->nworkers;
  pool->owner_pid = getpid();
  pool->fork_gen = atomic_load(&fp__fork_gen);
  pool->ws = calloc((size_t)n, sizeof(*pool->ws));
  pool->cpu_of_worker = malloc(sizeof(int) * (size_t)n);
  pool->start_fail_ns =
      calloc((size_t)pool->opts.max_restarts + 1, sizeof(int64_t));
  if (pool->opts.pin_ncpus > 0 && pool->opts.pin_cpus != NULL) {
    pool->pin_cpus = malloc(sizeof(int) * pool->opts.pin_ncpus);
    if (pool->pin_cpus)
      memcpy(pool->pin_cpus, pool->opts.pin_cpus,
             sizeof(int) * pool->opts.pin_ncpus);
    pool->opts.pin_cpus = pool->pin_cpus;
  }
  if (!pool->ws || !pool->cpu_of_worker || !pool->start_fail_ns ||
      (pool->opts.pin_ncpus > 0 && pool->opts.pin_cpus && !pool->pin_cpus)) {
    pool_release(pool);
    return FP_ENOMEM;
  }
  char err[256] = "";
  rc = fp__affinity_plan(pool->opts.pin, pool->opts.pin_cpus,
                         pool->opts.pin_ncpus, n, pool->cpu_of_worker, err,
                         sizeof(err));
  if (rc != 0) {
    fp__set_last_error(rc, err);
    pool_release(pool);
    return rc;
  }
  for (int i = 0; i < n; i++) {
    pool->ws[i].index = i;
    pool->ws[i].cpu = pool->cpu_of_worker[i];
  }
  pool->slots_len = sizeof(fp__slot) * (size_t)n;
  pool->slots = mmap(NULL, pool->slots_len, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (pool->slots == MAP_FAILED) {
    pool->slots = NULL;
    pool_release(pool);
    return -errno;
  }
  /* Rings are reserved, not touched: a page costs memory once used. */
  pool->shm_len = sizeof(fp__shared) + sizeof(fp__ring) * (size_t)n;
  pool->shm = mmap(NULL, pool->shm_len, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (pool->shm == MAP_FAILED) {
    rc = -errno;
    pool->shm = NULL;
    pool_release(pool);
    return rc;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    rc = -errno;
    pool_release(pool);
    return rc;
  }
  pid_t pid = fork();
  if (pid < 0) {
    rc = -errno;
    close(sv[0]);
    close(sv[1]);
    pool_release(pool);
    return rc;
  }
  if (pid == 0) {
    close(sv[0]);
    fp__forkserver_main(pool, sv[1]);
  }
  close(sv[1]);
  pool->fs_pid = pid;
  pool->fs_fd = sv[0];
  fp__fdreg_add(sv[0]);

  if ((rc = uv_loop_init(&pool->loop)) != 0)
    goto fail_fs;
  uv_async_init(&pool->loop, &pool->wake, on_wake);
  pool->wake.data = pool;
  uv_poll_init(&pool->loop, &pool->fs_poll, pool->fs_fd);
  pool->fs_poll.data = pool;
  uv_poll_start(&pool->fs_poll, UV_READABLE | UV_DISCONNECT, fs_on_io);
  uv_timer_init(&pool->loop, &pool->tick);
  pool->tick.data = pool;
  uv_prepare_init(&pool->loop, &pool->prep);
  pool->prep.data = pool;
  uv_prepare_start(&pool->prep, on_prepare);
  uv_check_init(&pool->loop, &pool->chk);
  pool->chk.data = pool;
  uv_check_start(&pool->chk, on_check);
  uv_idle_init(&pool->loop, &pool->spin);
  /* prepare/check/idle must not keep the loop alive on their own. */
  uv_unref((uv_handle_t *)&pool->prep);
  uv_unref((uv_handle_t *)&pool->chk);

  pthread_mutex_lock(&pool->mu);
  for (int i = 0; i < n; i++)
    spawn_slot_locked(pool, &pool->ws[i]);
  pthread_mutex_unlock(&pool->mu);

  /* The pool thread takes no signals: the user's handlers run on the
   * user's threads, as they would without the library. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&pool->thread, NULL, pool_thread, pool);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    rc = -rc;
    uv_close((uv_handle_t *)&pool->wake, NULL);
    uv_close((uv_handle_t *)&pool->fs_poll, NULL);
    uv_close((uv_handle_t *)&pool->tick, NULL);
    uv_close((uv_handle_t *)&pool->prep, NULL);
    uv_close((uv_handle_t *)&pool->chk, NULL);
    uv_close((uv_handle_t *)&pool->spin, NULL);
    uv_run(&pool->loop, UV_RUN_DEFAULT);
    uv_loop_close(&pool->loop);
    goto fail_fs;
  }
  pool->thread_started = 1;

  pthread_mutex_lock(&pool->mu);
  while (pool->nready < n && !pool->broken && !pool->fs_gone)
    pthread_cond_wait(&pool->cond, &pool->mu);
  rc = pool->broken ? pool->broken : pool->fs_gone ? FP_EWORKER : 0;
  pthread_mutex_unlock(&pool->mu);
  if (rc != 0) {
    fp__set_last_error(rc, "workers could not start (initializer failing "
                           "or crashing, or fork failing)");
    fp_pool_free(pool);
    return rc;
  }
  *out = pool;
  return 0;

fail_fs:
  fp__fdreg_del(pool->fs_fd);
  close(pool->fs_fd);
  while (waitpid(pool->fs_pid, NULL, 0) < 0 && errno == EINTR) {
  }
  pool_release(pool);
  return rc < 0 ? rc : FP_ENOMEM;
}

int fp_pool_size(const fp_pool *pool) {
  return pool ? pool->nworkers : FP_EINVAL;
}

int fp_pool_worker_info(fp_pool *pool, int i, fp_worker_info *info) {
  if (pool == NULL || info == NULL || i < 0 || i >= pool->nworkers)
    return FP_EINVAL;
  pthread_mutex_lock(&pool->mu);
  fp__wslot *ws = &pool->ws[i];
  info->pid = ws->conn ? ws->conn->pid : 0;
  info->cpu = ws->cpu;
  info->last_cpu = ws->tasks ? atomic_load(&pool->slots[i].cpu) : -1;
  info->tasks = ws->tasks;
  info->restarts = ws->restarts;
  pthread_mutex_unlock(&pool->mu);
  return 0;
}

int fp__pool_check_submit(fp_pool *pool) {
  if (pool->fork_gen != atomic_load_explicit(&fp__fork_gen,
                                             memory_order_relaxed))
    return FP_EINVAL; /* a forked copy of the master, or a worker */
  if (pool->broken)
    return pool->broken;
  if (pool->state != FP__RUN)
    return FP_ECLOSED;
  return 0;
}

int fp_pool_close(fp_pool *pool) {
  if (pool == NULL)
    return FP_EINVAL;
  pthread_mutex_lock(&pool->mu);
  if (pool->state == FP__RUN)
    pool->state = FP__CLOSE;
  fp__wake(pool);
  pthread_mutex_unlock(&pool->mu);
  return 0;
}

int fp_pool_terminate(fp_pool *pool) {
  if (pool == NULL)
    return FP_EINVAL;
  if (fp__on_pool_thread(pool))
    return FP_EINVAL;
  pthread_mutex_lock(&pool->mu);
  pool->state = FP__TERMINATE;
  fp__wake(pool);
  /* Return once every worker is dead: the pool thread kills, the fork
   * server reports, and nalive drops to zero. */
  while (pool->nalive > 0 && !pool->fs_gone && !pool->thread_done)
    pthread_cond_wait(&pool->cond, &pool->mu);
  pthread_mutex_unlock(&pool->mu);
  return 0;
}

int fp_pool_join(fp_pool *pool) {
  if (pool == NULL)
    return FP_EINVAL;
  if (fp__on_pool_thread(pool))
    return FP_EINVAL;
  pthread_mutex_lock(&pool->mu);
  if (pool->state == FP__RUN) {
    pthread_mutex_unlock(&pool->mu);
    fp__set_last_error(FP_EINVAL, "join before close or terminate");
    return FP_EINVAL;
  }
  if (pool->joined) {
    pthread_mutex_unlock(&pool->mu);
    return 0;
  }
  fp__wake(pool);
  while (!pool->thread_done)
    pthread_cond_wait(&pool->cond, &pool->mu);
  pool->joined = 1;
  pthread_mutex_unlock(&pool->mu);
  pthread_join(pool->thread, NULL);
  uv_loop_close(&pool->loop);
  fp__fdreg_del(pool->fs_fd);
  close(pool->fs_fd);
  pool->fs_fd = -1;
  int st;
  while (waitpid(pool->fs_pid, &st, 0) < 0 && errno == EINTR) {
  }
  return 0;
}

void fp_pool_free(fp_pool *pool) {
  if (pool == NULL)
    return;
  if (pool->thread_started && !pool->joined) {
    /* As leaving Python's with-block: terminate, even after close. */
    fp_pool_terminate(pool);
    fp_pool_join(pool);
  }
  pool_release(pool);
}
