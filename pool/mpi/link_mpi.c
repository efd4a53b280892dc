/* SPDX-License-Identifier: MIT */
/* link_mpi.c - the MPI link, rank 0's side: worker slots on other ranks.
 *
 * The scheduler's slots are laid out rank after rank: worker rank r's
 * local slots 0..count[r]-1 are the scheduler's base[r].. (hello.c). Every
 * operation becomes one message to that rank, posted to the progress
 * thread (progress.c) under the pool's lock, which costs a list append:
 * ops never wait for MPI. Messages from the ranks are queued by the
 * progress thread, which pokes an async handle on the pool's loop; its
 * callback replays them as link events between enter() and leave().
 *
 * What the scheduler reads synchronously (running(), for crash blame and
 * time limits) is a copy: a worker rank sends what its worker runs with
 * every EXITED and, for timed chunks, whenever the running item changes
 * (rank.c); the age it reports is turned into this machine's clock here.
 *
 * free() tells every rank BYE and waits (bounded) for their BYE_ACKs, so
 * their workers are gone when fp_pool_free() returns on rank 0.
 *
 * A rank that stops answering (stopped, hung in the kernel, its node
 * unreachable without MPI noticing) must not hang rank 0: when a worker
 * it was told to SIGKILL has not been reported dead UNRESPONSIVE_NS later,
 * the whole rank is given up (rank_unresponsive): its workers are
 * reported dead, nothing is spawned there again, whatever it sends later
 * is ignored, and BYE does not wait for it. fp_pool_terminate() and
 * fp_pool_free() are thus bounded even then.
 */
#include "pool/mpi/mpi_int.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BYE_WAIT_NS (10 * 1000000000LL)

/* A worker rank that has not reported a SIGKILLed worker dead this long
 * after the KILL was posted is given up; the watch looks every
 * WATCH_MS. */
#define UNRESPONSIVE_NS (10 * 1000000000LL)
#define WATCH_MS 1000

typedef struct mslot {
  int rank, lslot;
  pid_t pid;
  int alive, ready;
  int spawning; /* a SPAWN is unanswered */
  int64_t killed_ns; /* when a SIGKILL for it was posted; 0: none */
  fp__running run;
} mslot;

typedef struct mlink {
  fp__link base;
  fp__link_events ev;
  fp__mpi_world *w;
  int n;
  mslot *s;
  int *lost; /* per rank: its fork server died, or it was given up */
  int *gone; /* per rank: given up (rank_unresponsive) */
  int nlost;
  char (*where)[96];  /* per rank: "rank 2 on host" */
  fp__mprog prog;
  uv_async_t in;
  uv_timer_t watch; /* looks for ranks that stopped answering */
  int started;
  _Atomic int finalized; /* 1: MPI_Finalize ended the link under the pool
                            (leave_at_finalize); 2: the pool was told */
} mlink;

#define EV(l, name, ...) (l)->ev.name((l)->ev.ctx, __VA_ARGS__)

static void post(mlink *l, int g, int op, int pid, int arg) {
  fp__mbuf *m = fp__mbuf_new(l->s[g].rank, op, l->s[g].lslot, pid, arg, 0);
  if (m != NULL)
    fp__mprog_post(&l->prog, m);
}

/* ---- messages from the ranks (pool thread, between enter and leave) ---- */

static void set_run(mlink *l, mslot *s, const fp__mbuf *m) {
  fp__mrun r;
  if (FP__MPAYLOAD_LEN(m) < sizeof(r))
    return;
  memcpy(&r, FP__MPAYLOAD(m), sizeof(r));
  s->run.seq = r.seq;
  s->run.item = r.item;
  s->run.cpu = r.cpu;
  s->run.started_ns = r.age_ns >= 0 ? l->w->core->now_ns() - r.age_ns : 0;
}

static void rank_lost(mlink *l, int rank) {
  if (l->lost[rank])
    return;
  l->lost[rank] = 1;
  if (++l->nlost == l->w->size - 1)
    l->ev.lost(l->ev.ctx, "the fork server of every worker rank died");
}

/* Nothing known to run on the slot (no item to blame, no CPU). */
static void forget_run(mslot *s) {
  memset(&s->run, 0, sizeof(s->run));
  s->run.cpu = -1;
}

/* A worker rank's VIOLATION, with the rank's words (text, bounded). */
static void report_violation(mlink *l, int g, const fp__mbuf *m) {
  char what[160];
  size_t n = FP__MPAYLOAD_LEN(m);
  if (n > 100)
    n = 100;
  snprintf(what, sizeof(what), "protocol violation on a worker rank: %.*s",
           (int)n, (const char *)FP__MPAYLOAD(m));
  EV(l, violation, g, what);
}

/* Replays one message of a worker rank as link events. */
static void handle(mlink *l, const fp__mbuf *m) {
  const fp__mhdr *h = FP__MHDR(m);
  int r = m->peer;
  if (m->len < sizeof(*h) || r < 1 || r >= l->w->size || l->gone[r])
    return; /* a rank given up may wake up: its slots are settled */
  if (h->op == FP__M_LOST) {
    rank_lost(l, r);
    return;
  }
  if (h->slot < 0 || h->slot >= l->w->count[r])
    return;
  int g = l->w->base[r] + h->slot;
  mslot *s = &l->s[g];
  switch (h->op) {
  case FP__M_STARTED:
    s->spawning = 0;
    s->alive = 1;
    s->killed_ns = 0;
    s->pid = h->pid;
    forget_run(s);
    EV(l, started, g, h->pid);
    break;
  case FP__M_READY:
    s->ready = 1;
    EV(l, ready, g);
    break;
  case FP__M_RESULT:
    EV(l, result, g, FP__MPAYLOAD(m), FP__MPAYLOAD_LEN(m), NULL);
    break;
  case FP__M_RETIRED:
    EV(l, retired, g);
    break;
  case FP__M_VIOLATION:
    report_violation(l, g, m);
    break;
  case FP__M_NO_MEMORY:
    EV(l, no_memory, g);
    break;
  case FP__M_RUNNING:
    if (s->alive && s->pid == h->pid)
      set_run(l, s, m);
    break;
  case FP__M_EXITED:
    set_run(l, s, m);
    s->alive = s->ready = 0;
    s->killed_ns = 0;
    EV(l, exited, g, h->pid, h->arg);
    break;
  case FP__M_START_FAILED:
    s->spawning = 0;
    EV(l, start_failed, g, h->arg);
    break;
  }
}

/* Ends slot g as if its rank had reported it killed (SIGKILL, which keeps
 * the death out of the start-up storm count, as any kill from outside),
 * or its spawn as failed. keep_run: the scheduler blames the item it last
 * ran; else no item is blamed. */
static void end_slot(mlink *l, int g, int keep_run) {
  mslot *s = &l->s[g];
  if (s->alive) {
    s->alive = s->ready = 0;
    s->killed_ns = 0;
    if (!keep_run)
      forget_run(s);
    EV(l, exited, g, s->pid, SIGKILL);
  } else if (s->spawning) {
    s->spawning = 0;
    EV(l, start_failed, g, FP_EWORKER);
  }
}

/* MPI was finalized under the pool (leave_at_finalize): the worker ranks
 * were told BYE and nothing more will come from them. Ends every slot, as
 * link.h asks before lost(). lost[] first, so that the respawns the exits
 * ask for fail at once instead of posting SPAWNs nobody answers. An exit
 * blames no item (run cleared): the chunks go back to the queue, and
 * lost() fails them with its reason. */
static void end_every_slot(mlink *l) {
  int was_lost = l->nlost == l->w->size - 1;
  for (int r = 1; r < l->w->size; r++)
    l->lost[r] = 1;
  l->nlost = l->w->size - 1;
  for (int g = 0; g < l->n; g++)
    end_slot(l, g, 0);
  if (!was_lost) /* every rank's fork server died first: that said it */
    l->ev.lost(l->ev.ctx, "MPI_Finalize was called while the pool was "
                          "alive: its worker ranks were told to end");
}

/* Rank r has not reported a SIGKILLed worker dead (see the file
 * comment): every slot of it ends now, as for a rank that died. The last
 * known run of each stays, so the scheduler blames the item it was
 * killed for (a time limit, a cancel) as it would have. */
static void rank_unresponsive(mlink *l, int r) {
  int was_lost = l->lost[r];
  l->gone[r] = l->lost[r] = 1; /* first: the exits' respawns fail */
  for (int k = 0; k < l->w->count[r]; k++)
    end_slot(l, l->w->base[r] + k, 1);
  if (!was_lost && ++l->nlost == l->w->size - 1)
    l->ev.lost(l->ev.ctx, "every worker rank died or stopped answering");
}

static void on_watch(uv_timer_t *t) {
  mlink *l = t->data;
  int64_t now = l->w->core->now_ns();
  int entered = 0;
  for (int g = 0; g < l->n; g++) {
    mslot *s = &l->s[g];
    if (!s->alive || s->killed_ns == 0 || now - s->killed_ns < UNRESPONSIVE_NS)
      continue;
    if (!entered) {
      l->ev.enter(l->ev.ctx);
      entered = 1;
    }
    if (s->alive) /* an earlier slot's rank may have ended it */
      rank_unresponsive(l, s->rank);
  }
  if (entered)
    l->ev.leave(l->ev.ctx);
}

static void on_incoming(uv_async_t *a) {
  mlink *l = a->data;
  /* finalized before the take: what arrived before the halt is taken
   * now, so that its events come before lost(). */
  int ended = atomic_load(&l->finalized) == 1;
  fp__mbuf *m = fp__mprog_take(&l->prog);
  if (m == NULL && !ended)
    return;
  l->ev.enter(l->ev.ctx);
  while (m != NULL) {
    fp__mbuf *next = m->next;
    handle(l, m);
    fp__mbuf_free(m);
    m = next;
  }
  if (ended) {
    atomic_store(&l->finalized, 2);
    end_every_slot(l);
  }
  l->ev.leave(l->ev.ctx);
}

static void notify(void *arg) {
  uv_async_send(&((mlink *)arg)->in);
}

/* ---- operations ---------------------------------------------------------- */

static void mlink_release(mlink *l) {
  free(l->s);
  free(l->lost);
  free(l->gone);
  free(l->where);
  free(l);
}

static int mpi_open(fp__link **out, const fp__wconf *cfg,
                    const fp__link_events *ev) {
  fp__mpi_world *w = &fp__mpiw;
  if (cfg->nworkers != w->total)
    return FP_EINVAL;
  mlink *l = calloc(1, sizeof(*l));
  if (l == NULL)
    return FP_ENOMEM;
  l->base.ops = &fp__link_mpi;
  l->ev = *ev;
  l->w = w;
  l->n = cfg->nworkers;
  l->s = calloc((size_t)l->n, sizeof(*l->s));
  l->lost = calloc((size_t)w->size, sizeof(int));
  l->gone = calloc((size_t)w->size, sizeof(int));
  l->where = calloc((size_t)w->size, sizeof(*l->where));
  if (!l->s || !l->lost || !l->gone || !l->where) {
    mlink_release(l);
    return FP_ENOMEM;
  }
  for (int r = 1; r < w->size; r++) {
    snprintf(l->where[r], sizeof(l->where[r]), "rank %d on %s", r,
             w->host[r]);
    for (int k = 0; k < w->count[r]; k++) {
      l->s[w->base[r] + k].rank = r;
      l->s[w->base[r] + k].lslot = k;
    }
  }
  *out = &l->base;
  return 0;
}

/* A program that exits without freeing its MPI pool (returning from main,
 * exit()) or calls MPI_Finalize first would leave the worker ranks serving
 * forever, and mpirun and its own MPI_Finalize waiting for them; and
 * MPI_Finalize would run beside our progress thread. So at exit, and when
 * MPI_Finalize starts (it deletes MPI_COMM_SELF's attributes before
 * anything else, while MPI still works), the live link tells every rank
 * BYE and stops its progress thread. Nothing is freed: the pool thread may
 * still run. The exit handler is registered after world.c's
 * finalize_at_exit, so it runs before it. */
static pid_t leave_pid; /* the process that registered them: not its
                          forks, which have no progress thread */
/* Held by whoever ends the live link (these two, mpi_free) until its
 * progress thread stopped: MPI_Finalize must not go on while that thread
 * still calls MPI, nor free the link under a leave. */
static pthread_mutex_t leave_mu = PTHREAD_MUTEX_INITIALIZER;

/* Says BYE from the live link, if any, and halts its progress thread;
 * returns it (or NULL). mute: no notify() from now on (at exit: the loop
 * may be torn down while we wait). Call with leave_mu held. */
static mlink *leave_live(int mute) {
  if (getpid() != leave_pid)
    return NULL;
  mlink *l = atomic_exchange(&fp__mpiw.live, NULL);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (l == NULL || finalized)
    return NULL;
  if (mute)
    fp__mprog_mute(&l->prog);
  for (int r = 1; r < l->w->size; r++) {
    fp__mbuf *m = fp__mbuf_new(r, FP__M_BYE, 0, 0, 0, 0);
    if (m != NULL)
      fp__mprog_post(&l->prog, m);
  }
  fp__mprog_halt(&l->prog, fp__mpi_now() + BYE_WAIT_NS);
  return l;
}

static void leave_at_exit(void) {
  pthread_mutex_lock(&leave_mu);
  (void)leave_live(1);
  pthread_mutex_unlock(&leave_mu);
}

/* MPI_COMM_SELF's attribute delete callback: MPI_Finalize has begun. The
 * pool thread is then told (on_incoming), so that waits end with
 * FP_EWORKER instead of waiting for ranks that are gone; through the
 * progress thread's last notify(), which a closed loop has muted. Under
 * MPI_THREAD_SERIALIZED the progress thread's last calls overlap the
 * caller's MPI_Finalize: Open MPI allows it in the delete callback. */
static int leave_at_finalize(MPI_Comm comm, int keyval, void *value,
                             void *extra) {
  (void)comm, (void)keyval, (void)value, (void)extra;
  pthread_mutex_lock(&leave_mu);
  mlink *l = leave_live(0);
  if (l != NULL) {
    atomic_store(&l->finalized, 1);
    fp__mprog_notify_last(&l->prog);
  }
  pthread_mutex_unlock(&leave_mu);
  return MPI_SUCCESS;
}

/* Registers both, once per process, on the thread that opens the pool
 * (before the progress thread exists, so MPI is ours to call). */
static void hook_leave(fp__mpi_world *w) {
  int key = MPI_KEYVAL_INVALID;
  if (w->exit_hooked)
    return;
  w->exit_hooked = 1;
  leave_pid = getpid();
  atexit(leave_at_exit);
  if (MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, leave_at_finalize, &key,
                             NULL) == MPI_SUCCESS)
    MPI_Comm_set_attr(MPI_COMM_SELF, key, NULL);
}

static int mpi_start(fp__link *base, uv_loop_t *loop) {
  mlink *l = (mlink *)base;
  int rc = uv_async_init(loop, &l->in, on_incoming);
  if (rc != 0)
    return rc;
  l->in.data = l;
  uv_timer_init(loop, &l->watch); /* cannot fail: no system call */
  l->watch.data = l;
  uv_timer_start(&l->watch, on_watch, WATCH_MS, WATCH_MS);
  uv_unref((uv_handle_t *)&l->watch); /* it never keeps the loop alive */
  hook_leave(l->w);
  if ((rc = fp__mprog_start(&l->prog, notify, l)) != 0) {
    uv_close((uv_handle_t *)&l->in, NULL);
    uv_close((uv_handle_t *)&l->watch, NULL);
    return rc;
  }
  l->started = 1;
  atomic_store(&l->w->live, l);
  return 0;
}

static int mpi_spawn(fp__link *base, int g) {
  mlink *l = (mlink *)base;
  if (l->lost[l->s[g].rank])
    return FP_EWORKER;
  l->s[g].spawning = 1;
  post(l, g, FP__M_SPAWN, 0, 0);
  return 0;
}

static int mpi_can_send(fp__link *base, int g) {
  mlink *l = (mlink *)base;
  return l->s[g].alive && l->s[g].ready && !l->lost[l->s[g].rank];
}

static int mpi_kill(fp__link *base, int g, int sig, uint64_t aim) {
  mlink *l = (mlink *)base;
  (void)aim; /* the rank kills what its worker runs */
  if (!l->s[g].alive)
    return FP_EINVAL;
  if (sig == SIGKILL && l->s[g].killed_ns == 0)
    l->s[g].killed_ns = l->w->core->now_ns(); /* on_watch's clock */
  post(l, g, FP__M_KILL, l->s[g].pid, sig);
  return 0;
}

/* Copies the frames of t[0..n) into one TASK message, laid out as the
 * local link writes them on a worker's socket. */
/* Copies a map's items; borrowed ones (the caller's array, which it may
 * have unmapped by mistake) through the kernel: 0, or -EFAULT instead of
 * a crash. */
static int copy_items(mlink *l, void *dst, const fp__task_out *t) {
  if (t->items_len == 0)
    return 0;
  if (t->borrowed)
    return l->w->core->mem_read(dst, t->items, t->items_len);
  memcpy(dst, t->items, t->items_len);
  return 0;
}

/* Bytes of frame t in a TASK message: length word, header, items. */
static size_t frame_bytes(const fp__task_out *t) {
  return 4 + sizeof(t->hdr) + FP__HDR_PAD + t->items_len +
         FP__ITEMS_PAD(t->items_len);
}

/* Writes frames t[0..n) at p. Returns n, or the index of the first frame
 * whose borrowed items could not be read. */
static int put_frames(mlink *l, unsigned char *p, const fp__task_out *t,
                      int n) {
  static const unsigned char zeros[FP__FRAME_ALIGN];
  for (int i = 0; i < n; i++) {
    size_t pad = FP__ITEMS_PAD(t[i].items_len);
    size_t flen = sizeof(t[i].hdr) + FP__HDR_PAD + t[i].items_len + pad;
    l->w->core->frame_put_hdr(p, flen); /* fits: a message < INT32_MAX */
    p += 4;
    memcpy(p, &t[i].hdr, sizeof(t[i].hdr));
    p += sizeof(t[i].hdr);
    memcpy(p, zeros, FP__HDR_PAD);
    p += FP__HDR_PAD;
    if (copy_items(l, p, &t[i]) != 0)
      return i;
    p += t[i].items_len;
    memcpy(p, zeros, pad);
    p += pad;
  }
  return n;
}

/* The frames travel in as few TASK messages as MPI's int counts allow:
 * a batch of chunks whose total passes FP__MPI_PAYLOAD_MAX is cut into
 * several messages, posted in order (one frame always fits: the link's
 * max_frame caps the pool's). Every message is built before any is
 * posted, so the frames go all together or not at all. */
static int mpi_send(fp__link *base, int g, const fp__task_out *t, int n,
                    int *sent) {
  mlink *l = (mlink *)base;
  fp__mbuf *ms[FP__LINK_MAX_BATCH];
  int nm = 0, bad = n;
  *sent = -1;
  for (int i = 0; i < n && bad == n;) {
    size_t total = frame_bytes(&t[i]);
    int k = 1;
    while (i + k < n && total + frame_bytes(&t[i + k]) <= FP__MPI_PAYLOAD_MAX)
      total += frame_bytes(&t[i + k++]);
    fp__mbuf *m = fp__mbuf_new(l->s[g].rank, FP__M_TASK, l->s[g].lslot,
                               l->s[g].pid, k, total);
    if (m == NULL) {
      while (nm > 0)
        fp__mbuf_free(ms[--nm]);
      mpi_kill(base, g, SIGKILL, 0); /* its exited() hands the chunks back */
      return FP_ENOMEM;
    }
    ms[nm++] = m;
    int j = put_frames(l, FP__MPAYLOAD(m), t + i, k);
    bad = j < k ? i + j : n;
    i += k;
  }
  if (bad < n) { /* unreadable: send the frames before it alone (link.h) */
    while (nm > 0)
      fp__mbuf_free(ms[--nm]);
    int rc = bad > 0 ? mpi_send(base, g, t, bad, sent) : 0;
    if (rc != 0)
      return rc;
    *sent = bad;
    return -EFAULT;
  }
  for (int k = 0; k < nm; k++)
    fp__mprog_post(&l->prog, ms[k]);
  *sent = n;
  return 0;
}

static int mpi_running(fp__link *base, int g, fp__running *out) {
  *out = ((mlink *)base)->s[g].run;
  return 0;
}

static void mpi_finish(fp__link *base, int g) {
  mlink *l = (mlink *)base;
  if (l->s[g].alive)
    post(l, g, FP__M_FINISH, l->s[g].pid, 0);
}

static void mpi_close(fp__link *base) {
  mlink *l = (mlink *)base;
  if (l->started && !uv_is_closing((uv_handle_t *)&l->in)) {
    fp__mprog_mute(&l->prog);
    uv_close((uv_handle_t *)&l->in, NULL);
    uv_close((uv_handle_t *)&l->watch, NULL);
  }
}

/* Tells every rank still serving to leave and waits for their BYE_ACKs
 * (bounded: a rank that died never answers). */
static void say_bye(mlink *l) {
  int64_t deadline = fp__mpi_now() + BYE_WAIT_NS;
  int waiting = 0;
  for (int r = 1; r < l->w->size; r++) {
    /* A rank whose fork server died (lost) still waits for its BYE; one
     * given up is told too, but not waited for. */
    fp__mbuf *m = fp__mbuf_new(r, FP__M_BYE, 0, 0, 0, 0);
    if (m != NULL) {
      fp__mprog_post(&l->prog, m);
      waiting += !l->gone[r];
    }
  }
  while (waiting > 0 && fp__mpi_now() < deadline) {
    fp__mbuf *m = fp__mprog_wait(&l->prog, deadline);
    while (m != NULL) {
      fp__mbuf *next = m->next;
      if (m->len >= sizeof(fp__mhdr) && FP__MHDR(m)->op == FP__M_BYE_ACK &&
          m->peer > 0 && m->peer < l->w->size && !l->gone[m->peer])
        waiting--;
      fp__mbuf_free(m);
      m = next;
    }
  }
}

/* Runs after the pool thread ended (or never started): nothing else uses
 * the link but a leave, which leave_mu keeps out. */
static void mpi_free(fp__link *base) {
  mlink *l = (mlink *)base;
  void *expected = l;
  pthread_mutex_lock(&leave_mu);
  if (!l->started) {
    fp__mpi_bye_all(l->w, NULL); /* no thread: we may call MPI here */
  } else if (atomic_compare_exchange_strong(&l->w->live, &expected, NULL)) {
    say_bye(l);
    fp__mprog_stop(&l->prog, fp__mpi_now() + BYE_WAIT_NS);
  } else {
    /* A leave (MPI_Finalize, exit) said BYE and halted the progress
     * thread (a halt again is no-op, unless MPI ended without a leave). */
    fp__mprog_halt(&l->prog, 0);
    fp__mprog_release(&l->prog);
  }
  pthread_mutex_unlock(&leave_mu);
  mlink_release(l);
}

static const char *mpi_where(fp__link *base, int g) {
  mlink *l = (mlink *)base;
  return l->where[l->s[g].rank];
}

const fp__link_ops fp__link_mpi = {
    .name = "mpi",
    .open = mpi_open,
    .start = mpi_start,
    .spawn = mpi_spawn,
    .can_send = mpi_can_send,
    .send = mpi_send,
    .kill = mpi_kill,
    /* A frame and its length word in one message (MPI counts are int). */
    .max_frame = FP__MPI_PAYLOAD_MAX - 64,
    .running = mpi_running,
    .finish = mpi_finish,
    .close = mpi_close,
    .free = mpi_free,
    .where = mpi_where,
};
