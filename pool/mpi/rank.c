/* SPDX-License-Identifier: MIT */
/* rank.c - a worker rank: a local pool's link, driven from rank 0 over MPI.
 *
 * Inside fp_pool_new() on every rank but 0, fp__mpi_serve() opens the
 * core's local link (fork server, sockets, result rings: link_local.c)
 * with this rank's own options: `processes` workers (0: this node's CPU
 * count), its own initializer and initarg (valid here: every rank runs the
 * same program up to fp_pool_new()), pinning planned on this node. It
 * says HELLO to rank 0 and then relays, on one libuv loop:
 *
 *   rank 0's messages (progress thread -> async) -> local link operations
 *   local link events -> messages to rank 0 (posted to the progress thread)
 *
 * Task frames go to the local link as they came; when a worker's socket
 * is still busy with an earlier send (the local link then refuses more),
 * they wait in the slot's queue and are written from leave(), which runs
 * after every loop callback of the link. A timer reports what each worker
 * runs when it runs a timed chunk, so rank 0 can enforce time limits.
 *
 * On BYE the loop closes, the local link ends its workers and fork server,
 * the rank answers BYE_ACK, finalizes MPI and exits with status 0.
 */
#include "pool/mpi/mpi_int.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REPORT_MS 5

typedef struct rbatch {
  struct rbatch *next;
  fp__mbuf *m; /* holds the items the frames point into */
  int n;
  fp__task_out t[FP__LINK_MAX_BATCH];
} rbatch;

typedef struct rslot {
  pid_t pid;           /* current worker, 0 when none */
  rbatch *qh, *qt;     /* frames the local link could not take yet */
  int finish;          /* FINISH came while frames were queued */
  fp__running last;    /* last RUNNING report */
} rslot;

/* Where rank 0's modules are here (see rebase()). */
typedef struct rebased {
  uint64_t ident, from, to;
  int ok;
} rebased;

typedef struct rserver {
  rebased seen[4];
  int next_seen;
  fp__mpi_world *w;
  const fp__core_api *core;
  const fp__link_ops *ops;
  fp__link *link;
  fp__wconf cfg;
  int *cpu_of;
  rslot *s;
  pthread_mutex_t mu;
  uv_loop_t loop;
  uv_async_t in;
  uv_timer_t report;
  fp__mprog prog;
} rserver;

/* ---- to rank 0 ---------------------------------------------------------- */

/* Posts a message to rank 0. Returns 0, or FP_ENOMEM (nothing posted). */
static int post(rserver *sv, int op, int slot, int pid, int arg,
                const void *payload, size_t len) {
  fp__mbuf *m = fp__mbuf_new(0, op, slot, pid, arg, len);
  if (m == NULL)
    return FP_ENOMEM;
  if (len)
    memcpy(FP__MPAYLOAD(m), payload, len);
  fp__mprog_post(&sv->prog, m);
  return 0;
}

/* Posts an event of slot's worker. Without memory for it, rank 0 must
 * still learn what became of the worker, or its chunks would wait for
 * ever: a result becomes a NO_MEMORY report (rank 0 fails the worker's
 * chunks with FP_ENOMEM and has it killed, as when the local link's master
 * cannot buffer a frame); any other event, or a report that finds no
 * memory either, kills the worker here, whose EXITED then tells rank 0. */
static void post_slot(rserver *sv, int op, int slot, const void *payload,
                      size_t len) {
  if (post(sv, op, slot, 0, 0, payload, len) == 0)
    return;
  if (op == FP__M_RESULT && post(sv, FP__M_NO_MEMORY, slot, 0, 0, NULL, 0) == 0)
    return;
  if (sv->s[slot].pid != 0)
    sv->ops->kill(sv->link, slot, SIGKILL, 0);
}

static fp__mrun mrun_of(rserver *sv, const fp__running *r) {
  fp__mrun m = {.seq = r->seq, .item = r->item, .cpu = r->cpu, .age_ns = -1};
  if (r->started_ns > 0)
    m.age_ns = sv->core->now_ns() - r->started_ns;
  return m;
}

static void drop_queue(rslot *s) {
  while (s->qh != NULL) {
    rbatch *b = s->qh;
    s->qh = b->next;
    fp__mbuf_free(b->m);
    free(b);
  }
  s->qt = NULL;
  s->finish = 0;
}

/* Writes slot's queued frames while the local link takes them. */
static void flush_slot(rserver *sv, int slot) {
  rslot *s = &sv->s[slot];
  while (s->qh != NULL && sv->ops->can_send(sv->link, slot)) {
    rbatch *b = s->qh;
    s->qh = b->next;
    if (s->qh == NULL)
      s->qt = NULL;
    /* On failure the local link kills the worker: rank 0 learns it from
     * EXITED and hands the chunks to other workers. (Items here are the
     * rank's own copies, never borrowed: no frame is left unsent.) */
    int sent;
    sv->ops->send(sv->link, slot, b->t, b->n, &sent);
    fp__mbuf_free(b->m);
    free(b);
  }
  if (s->qh == NULL && s->finish && s->pid != 0) {
    s->finish = 0;
    sv->ops->finish(sv->link, slot);
  }
}

/* ---- local link events ---------------------------------------------------- */

static void ev_enter(void *ctx) {
  pthread_mutex_lock(&((rserver *)ctx)->mu);
}

static void ev_leave(void *ctx) {
  rserver *sv = ctx;
  for (int i = 0; i < sv->cfg.nworkers; i++)
    flush_slot(sv, i);
  pthread_mutex_unlock(&sv->mu);
}

static void ev_started(void *ctx, int slot, pid_t pid) {
  rserver *sv = ctx;
  sv->s[slot].pid = pid;
  memset(&sv->s[slot].last, 0, sizeof(sv->s[slot].last));
  post(sv, FP__M_STARTED, slot, pid, 0, NULL, 0);
}

static void ev_ready(void *ctx, int slot) {
  post_slot(ctx, FP__M_READY, slot, NULL, 0);
}

static void ev_result(void *ctx, int slot, const unsigned char *payload,
                      size_t len, fp__rbuf *keep) {
  (void)keep; /* copied into the message: the buffer stays the link's */
  if (len > FP__MPI_PAYLOAD_MAX) {
    /* Sent, it would abort every rank (MPI_ERR_COUNT is fatal): rank 0
     * kills the worker instead, which fails the chunk (FP_EPROTO). */
    char what[128];
    snprintf(what, sizeof(what),
             "a chunk's results of %zu bytes, more than one MPI message "
             "carries",
             len);
    post_slot(ctx, FP__M_VIOLATION, slot, what, strlen(what));
    return;
  }
  post_slot(ctx, FP__M_RESULT, slot, payload, len);
}

static void ev_retired(void *ctx, int slot) {
  post_slot(ctx, FP__M_RETIRED, slot, NULL, 0);
}

static void ev_violation(void *ctx, int slot, const char *what) {
  post_slot(ctx, FP__M_VIOLATION, slot, what, strlen(what));
}

/* This rank had no memory for a worker's results: rank 0 handles it as
 * its own local link's no_memory (the worker killed, its chunks failed
 * with FP_ENOMEM). */
static void ev_no_memory(void *ctx, int slot) {
  post_slot(ctx, FP__M_NO_MEMORY, slot, NULL, 0);
}

static void ev_exited(void *ctx, int slot, pid_t pid, int status) {
  rserver *sv = ctx;
  fp__running r = {0};
  sv->ops->running(sv->link, slot, &r);
  fp__mrun m = mrun_of(sv, &r);
  drop_queue(&sv->s[slot]);
  sv->s[slot].pid = 0;
  post(sv, FP__M_EXITED, slot, pid, status, &m, sizeof(m));
}

static void ev_start_failed(void *ctx, int slot, int err) {
  post(ctx, FP__M_START_FAILED, slot, 0, err, NULL, 0);
}

static void ev_lost(void *ctx, const char *why) {
  (void)why; /* rank 0 names the rank */
  post(ctx, FP__M_LOST, 0, 0, 0, NULL, 0);
}

/* What each worker runs, when it runs a timed item that rank 0 has not
 * heard of yet. */
static void on_report(uv_timer_t *t) {
  rserver *sv = t->data;
  ev_enter(sv);
  for (int i = 0; i < sv->cfg.nworkers; i++) {
    rslot *s = &sv->s[i];
    fp__running r;
    if (s->pid == 0 || sv->ops->running(sv->link, i, &r) != 0 ||
        r.started_ns == 0 ||
        (r.seq == s->last.seq && r.item == s->last.item &&
         r.started_ns == s->last.started_ns))
      continue;
    s->last = r;
    fp__mrun m = mrun_of(sv, &r);
    post(sv, FP__M_RUNNING, i, s->pid, 0, &m, sizeof(m));
  }
  ev_leave(sv);
}

/* ---- from rank 0 ---------------------------------------------------------- */

/* Function references name a module by identity and rank 0's load
 * address; this rank is not a fork of rank 0, so the same module sits
 * elsewhere here (ASLR): point the reference at our copy. A reference
 * that names nothing here is left naming nothing, and the worker fails
 * the task ("task function not found"). A few modules are cached: tasks
 * use few functions, and looking one up hashes every loaded module. */
static void rebase(rserver *sv, fp__fnref *fn) {
  for (int i = 0; i < 4; i++) {
    rebased *c = &sv->seen[i];
    if (c->ok && c->ident == fn->ident && c->from == fn->base) {
      fn->base = c->to;
      return;
    }
  }
  rebased c = {.ident = fn->ident, .from = fn->base};
  if (sv->core->fnref_rebase(fn) != 0)
    return;
  c.to = fn->base;
  c.ok = 1;
  sv->seen[sv->next_seen++ % 4] = c;
}

/* Splits a TASK message into the frames the local link's send() takes.
 * Returns the batch (which takes m) or NULL when m is malformed. */
static rbatch *parse_task(rserver *sv, fp__mbuf *m, int n) {
  const unsigned char *p = FP__MPAYLOAD(m), *end = p + FP__MPAYLOAD_LEN(m);
  rbatch *b = n > 0 && n <= FP__LINK_MAX_BATCH ? calloc(1, sizeof(*b))
                                                : NULL;
  for (int i = 0; b != NULL && i < n; i++) {
    size_t flen, left = (size_t)(end - p);
    if (sv->core->frame_parse(p, left, left, &flen) != 0)
      goto bad; /* cut short, or longer than the message */
    p += 4;
    fp__task_hdr *h = &b->t[i].hdr;
    if ((size_t)(end - p) < flen || flen < sizeof(*h) + FP__HDR_PAD)
      goto bad;
    memcpy(h, p, sizeof(*h));
    rebase(sv, &h->fn);
    if (h->items_len > flen - sizeof(*h) - FP__HDR_PAD)
      goto bad;
    b->t[i].items = p + sizeof(*h) + FP__HDR_PAD;
    b->t[i].items_len = h->items_len;
    p += flen;
  }
  if (b != NULL) {
    b->m = m;
    b->n = n;
  }
  return b;
bad:
  free(b);
  return NULL;
}

static void shut_down(rserver *sv);

/* Carries out one message of rank 0. Returns 1 when m was kept. */
static int handle(rserver *sv, fp__mbuf *m) {
  const fp__mhdr *h = FP__MHDR(m);
  if (m->len < sizeof(*h) || h->op == FP__M_BYE) {
    if (m->len >= sizeof(*h))
      shut_down(sv);
    return 0;
  }
  if (h->slot < 0 || h->slot >= sv->cfg.nworkers)
    return 0;
  rslot *s = &sv->s[h->slot];
  rbatch *b;
  switch (h->op) {
  case FP__M_SPAWN: {
    int rc = sv->ops->spawn(sv->link, h->slot);
    if (rc != 0)
      post(sv, FP__M_START_FAILED, h->slot, 0, rc, NULL, 0);
    return 0;
  }
  case FP__M_TASK:
    /* For a worker that died meanwhile: rank 0 requeues its chunks when
     * our EXITED arrives. */
    if (s->pid == 0 || s->pid != h->pid || (b = parse_task(sv, m, h->arg)) == 0)
      return 0;
    if (s->qt)
      s->qt->next = b;
    else
      s->qh = b;
    s->qt = b;
    return 1;
  case FP__M_KILL:
    if (s->pid != 0 && s->pid == h->pid)
      sv->ops->kill(sv->link, h->slot, h->arg, 0);
    return 0;
  case FP__M_FINISH:
    if (s->pid != 0 && s->pid == h->pid)
      s->finish = 1;
    return 0;
  }
  return 0;
}

static void on_incoming(uv_async_t *a) {
  rserver *sv = a->data;
  fp__mbuf *m = fp__mprog_take(&sv->prog);
  ev_enter(sv);
  while (m != NULL) {
    fp__mbuf *next = m->next;
    if (!handle(sv, m))
      fp__mbuf_free(m);
    m = next;
  }
  ev_leave(sv);
}

static void notify(void *arg) {
  uv_async_send(&((rserver *)arg)->in);
}

/* BYE: close the loop's handles; the loop ends and serve() tidies up.
 * Every live worker is told FINISH first: a FINISH of rank 0 that came in
 * the same batch as the BYE would otherwise be lost with the closed link,
 * and a worker asleep on its task ring would notice the closed socket
 * only at its next periodic look (200 ms), which every join paid. */
static void shut_down(rserver *sv) {
  if (uv_is_closing((uv_handle_t *)&sv->in))
    return;
  for (int i = 0; i < sv->cfg.nworkers; i++) {
    drop_queue(&sv->s[i]); /* their results would go nowhere */
    if (sv->s[i].pid != 0)
      sv->ops->finish(sv->link, i);
  }
  sv->ops->close(sv->link);
  if (sv->prog.running)
    fp__mprog_mute(&sv->prog);
  uv_close((uv_handle_t *)&sv->in, NULL);
  uv_timer_stop(&sv->report);
  uv_close((uv_handle_t *)&sv->report, NULL);
}

/* ---- setting up ------------------------------------------------------------ */

/* Opens the local link with this rank's options. Returns the number of
 * workers, or a negative code with err filled. */
static int open_local(rserver *sv, const fp_pool_opts *o, char *err,
                      size_t len) {
  int n = o->processes > 0 ? o->processes : sv->core->cpu_count();
  if (n < 1)
    n = 1;
  sv->cpu_of = malloc(sizeof(int) * (size_t)n);
  sv->s = calloc((size_t)n, sizeof(*sv->s));
  if (!sv->cpu_of || !sv->s) {
    snprintf(err, len, "out of memory");
    return FP_ENOMEM;
  }
  /* FP_PIN_LIST is refused by rank 0 (it names one machine's CPUs). */
  fp_pin_policy pin = o->pin == FP_PIN_LIST ? FP_PIN_NONE : o->pin;
  int rc = sv->core->affinity_plan(pin, NULL, 0, n, sv->cpu_of, err, len);
  if (rc != 0)
    return rc;
  sv->cfg = (fp__wconf){
      .nworkers = n,
      .max_frame = o->max_frame ? o->max_frame : FP_FRAME_MAX_DEFAULT,
      .maxtasksperchild = o->maxtasksperchild,
      .memory_limit = o->memory_limit,
      .initializer = o->initializer,
      .initarg = o->initarg,
      .cpu_of_worker = sv->cpu_of,
      /* A chunk's results travel to rank 0 as one MPI message: larger
       * ones fail their items with FP_EMSGSIZE in the worker, as locally
       * those beyond fp__result_limit() do. */
      .result_limit = FP__MPI_PAYLOAD_MAX,
  };
  static const fp__link_events ev0 = {
      .enter = ev_enter, .leave = ev_leave, .started = ev_started,
      .ready = ev_ready, .result = ev_result, .retired = ev_retired,
      .violation = ev_violation, .no_memory = ev_no_memory,
      .exited = ev_exited,
      .start_failed = ev_start_failed, .lost = ev_lost};
  fp__link_events ev = ev0;
  ev.ctx = sv;
  if ((rc = sv->ops->open(&sv->link, &sv->cfg, &ev)) != 0) {
    snprintf(err, len, "cannot start the fork server (%s)",
             sv->core->strerror(rc));
    return rc;
  }
  return n;
}

/* Runs the loop until BYE. Returns 0 or an error (nothing to undo). */
static int run(rserver *sv) {
  int rc = uv_loop_init(&sv->loop);
  if (rc != 0)
    return rc;
  uv_async_init(&sv->loop, &sv->in, on_incoming);
  uv_timer_init(&sv->loop, &sv->report);
  sv->in.data = sv->report.data = sv;
  if ((rc = sv->ops->start(sv->link, &sv->loop)) == 0 &&
      (rc = fp__mprog_start(&sv->prog, notify, sv)) == 0) {
    uv_timer_start(&sv->report, on_report, REPORT_MS, REPORT_MS);
    uv_run(&sv->loop, UV_RUN_DEFAULT);
  } else {
    shut_down(sv);
    uv_run(&sv->loop, UV_RUN_DEFAULT);
  }
  uv_loop_close(&sv->loop);
  return rc;
}

void fp__mpi_serve(fp__mpi_world *w, const fp_pool_opts *opts) {
  rserver *sv = calloc(1, sizeof(*sv));
  fp__mhello hello;
  memset(&hello, 0, sizeof(hello));
  gethostname(hello.host, sizeof(hello.host) - 1);
  int n = FP_ENOMEM;
  /* Before the local link forks its fork server: every process of this
   * rank then refuses Manager refs of rank 0 (transport.h). */
  w->core->enter_worker_rank(w->rank);
  if (sv != NULL) {
    pthread_mutex_init(&sv->mu, NULL);
    sv->w = w;
    sv->core = w->core;
    sv->ops = w->core->local;
    n = open_local(sv, opts, hello.err, sizeof(hello.err));
  }
  fp__mpi_send_now(0, FP__M_HELLO, 0, 0, n, &hello, sizeof(hello));
  if (n > 0 && run(sv) == 0) {
    /* After BYE: end the workers and the fork server, then answer. */
    sv->ops->free(sv->link);
    for (int i = 0; i < sv->cfg.nworkers; i++)
      drop_queue(&sv->s[i]);
    post(sv, FP__M_BYE_ACK, 0, 0, 0, NULL, 0);
    fp__mprog_stop(&sv->prog, fp__mpi_now() + 10 * 1000000000LL);
  }
  /* The job ends when every rank has finalized: leave quietly. */
  MPI_Finalize();
  exit(0);
}
