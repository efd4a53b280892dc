/* SPDX-License-Identifier: MIT */
/* link_local.c - the local link: a fork server, a socket and two rings
 * (tasks out, results back) per worker (the master's side; see link.h for
 * the interface).
 *
 * open() maps the shared memory (a published-state slot, a result ring and
 * a task ring per worker, local.h) and forks the fork server, which forks
 * every worker on request. The master talks to the fork server over one
 * SOCK_SEQPACKET socket (SPAWN/KILL out; SPAWNED with the worker's socket,
 * EXITED, FAILED back) and to each worker through its task ring (task
 * frames, SOCK and FINISH markers; a futex wake only when the worker
 * sleeps) and its own stream socket: frames too large for the ring out;
 * READY, large RESULTs, RETIRE and KICKs back, and EOF when either side
 * dies. Small results come through the worker's result ring;
 * prepare/check hooks around every poll of the loop drain the rings, spin
 * for a while after recent work (within the CPU budget, local.h) instead
 * of sleeping, and tell workers (master_idle) when the loop is about to
 * sleep so that they kick it. A user thread waiting for a result may
 * drain the rings too (poll, with the pool's lock held; spin_begin/end
 * count it as a poller, local.h).
 *
 * Every SPAWN is answered by exactly one of: SPAWNED (then, later, one
 * EXITED) or FAILED. A worker whose socket cannot be taken here (the
 * descriptor table is full, say) is killed and reported start_failed();
 * its EXITED is then swallowed. When the fork server dies, every live
 * worker dies with it (PR_SET_PDEATHSIG): each gets its exited(), then
 * lost() says no worker can be made again.
 *
 * This file holds the operations, the loop's hooks and the handling of
 * the fork server's reports; what workers send is read in inbound.c, what
 * goes to them is written in outbound.c, and the fork server is forked,
 * told and watched in fsclient.c (llink.h).
 */
#include "pool/local/llink.h"
#include "ipc/wire/alloc.h"
#include "pool/clock.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* The space bound of local.h: every chunk a worker may hold, one wrap's
 * waste and a marker fit in its task ring. */
_Static_assert(FP__SLOT_SKIPS >= FP__LINK_MAX_BATCH,
               "a skip entry for every chunk a worker may hold");
_Static_assert((FP__LINK_MAX_BATCH + 1) * FP__TRING_MAX + 64 <= FP__TRING_SIZE,
               "task ring too small for FP__LINK_MAX_BATCH frames");

/* Longest the pool thread spins between two looks at its loop's events. */
#define SPIN_SLICE_NS 20000

static void fs_on_io(uv_poll_t *h, int status, int events);

/* ---- the loop's hooks --------------------------------------------------- */

/* The events the loop watches on the control socket: writable only while
 * messages wait. Loop thread only. */
static void fs_poll_events(llink *l) {
  int ev = UV_READABLE | UV_DISCONNECT;
  if (l->ctl_len > 0)
    ev |= UV_WRITABLE;
  uv_poll_start(&l->fs_poll, ev, fs_on_io);
}

static void idle_noop(uv_idle_t *h) {
  (void)h;
}

/* Spins (within the CPU budget) while work was seen in the last
 * FP__SPIN_NS, for at most SPIN_SLICE_NS, so that the loop's own events
 * are looked at in between. Returns 1 when the loop should poll without
 * sleeping: a result is waiting, or the spin may go on. */
static int pool_spin(llink *l) {
  int64_t last = atomic_load_explicit(&l->last_work, memory_order_relaxed);
  int64_t now = fp__now_ns(), end = now + SPIN_SLICE_NS;
  int rc = 0;
  fp__spinner sp;
  if (now - last >= FP__SPIN_NS)
    return 0;
  fp__spinner_start(&sp, now);
  atomic_store_explicit(&l->shm->pool_spinning, 1, memory_order_relaxed);
  /* A poller (a caller draining the rings itself) outranks this spin:
   * two spinners is all two CPUs hold, and the poller saves a wake-up. */
  while (fp__budget_ok(l->shm) &&
         atomic_load_explicit(&l->shm->pollers, memory_order_relaxed) == 0) {
    int i = 0;
    while (i < 64 && !fp__llink_pending(l)) {
      fp__cpu_relax();
      i++;
    }
    now = fp__now_ns();
    if (i < 64 || now >= end) {
      rc = i < 64 || now - last < FP__SPIN_NS;
      break;
    }
    fp__spinner_tick(&sp, now);
  }
  atomic_store_explicit(&l->shm->pool_spinning, 0, memory_order_relaxed);
  return rc;
}

/* Before the loop polls: spin while work is recent; otherwise tell workers
 * to kick, then look at the rings once more (a result published before the
 * flag was seen would otherwise wait for the next event), and sleep out of
 * the CPU budget. */
static void on_prepare(uv_prepare_t *h) {
  llink *l = h->data;
  if (pool_spin(l)) {
    uv_idle_start(&l->spin, idle_noop); /* poll, don't wait */
    return;
  }
  atomic_store(&l->shm->master_idle, 1); /* seq_cst, as the tail */
  if (fp__llink_pending(l)) {
    atomic_store(&l->shm->master_idle, 0);
    uv_idle_start(&l->spin, idle_noop);
    return;
  }
  uv_idle_stop(&l->spin);
  if (l->counted) {
    l->counted = 0;
    fp__budget_leave(l->shm);
  }
}

/* After the loop wakes: no kicks needed while we work; take the results. */
static void on_check(uv_check_t *h) {
  llink *l = h->data;
  atomic_store(&l->shm->master_idle, 0);
  if (!l->counted) {
    l->counted = 1;
    fp__budget_join(l->shm);
  }
  if (!fp__llink_pending(l))
    return;
  l->ev.enter(l->ev.ctx);
  for (int i = 0; i < l->cfg.nworkers; i++)
    if (l->slots[i].pid != 0)
      fp__llink_drain(l, i);
  l->ev.leave(l->ev.ctx);
}

/* A user thread left bytes to send, or made an EXITED due: libuv's
 * handles are the loop thread's, so it is the one to act on them. */
static void on_flush(uv_async_t *a) {
  llink *l = a->data;
  l->ev.enter(l->ev.ctx);
  for (int i = 0; i < l->cfg.nworkers; i++) {
    conn *c = l->slots[i].c;
    if (c && !c->eof && c->out_len > 0)
      fp__conn_set_events(c, UV_READABLE | UV_WRITABLE | UV_DISCONNECT);
  }
  if (l->ctl_len > 0 && !l->lost)
    fs_poll_events(l); /* requests wait for room */
  if (l->watch_wanted && !l->watching && !l->lost) {
    uv_timer_start(&l->watch, fp__fs_watch, 250, 250);
    l->watching = 1;
  }
  l->watch_wanted = 0;
  l->ev.leave(l->ev.ctx);
}

/* ---- fork server reports ------------------------------------------------ */

/* A worker's process ended: deliver what it wrote, then report it. */
static void worker_gone(llink *l, int slot, int status) {
  lslot *s = &l->slots[slot];
  conn *c = s->c;
  pid_t pid = s->pid;
  if (c != NULL && !c->eof)
    fp__conn_read(c); /* results still in the socket */
  fp__llink_drain(l, slot);
  s->c = NULL;
  s->pid = 0;
  s->ready = 0;
  s->exit_due_ns = 0;
  if (c != NULL)
    fp__conn_close(c);
  fp__budget_drop_slot(l->shm, &l->v.slots[slot]); /* died counted */
  FP__LL_EV(l, exited, slot, pid, status);
}

/* SPAWNED: the worker's socket came with the message (fd, registered and
 * above stdio by fp__fs_recv; or -errno when it could not be received). */
static void worker_spawned(llink *l, int slot, pid_t pid, int fd) {
  lslot *s = &l->slots[slot];
  conn *c = NULL;
  int err = fd < 0 ? fd : 0;
  s->spawning = 0;
  if (err == 0 && (c = calloc(1, sizeof(*c))) == NULL)
    err = FP_ENOMEM;
  if (err == 0 && (err = uv_poll_init(l->loop, &c->poll, fd)) != 0)
    free(c);
  if (err != 0) {
    fp__fdreg_close(fd);
    s->discard_pid = pid;
    fp__fs_send(l, FP__FS_KILL, slot, pid, SIGKILL, 0);
    FP__LL_EV(l, start_failed, slot, err);
    return;
  }
  c->l = l;
  c->slot = slot;
  c->fd = fd;
  s->c = c;
  s->pid = pid;
  s->start_time = fp__proc_start_time(pid);
  fp__conn_set_events(c, UV_READABLE | UV_DISCONNECT);
  FP__LL_EV(l, started, slot, pid);
}

static void fs_message(llink *l, const fp__fs_msg *m, int fd) {
  int ok = m->slot >= 0 && m->slot < l->cfg.nworkers;
  lslot *s = ok ? &l->slots[m->slot] : NULL;
  if (m->op == FP__FS_SPAWNED && ok && s->spawning) {
    worker_spawned(l, m->slot, m->pid, fd);
    return;
  }
  fp__fdreg_close(fd);
  if (m->op == FP__FS_EXITED && ok && m->pid == s->discard_pid) {
    s->discard_pid = 0;
  } else if (m->op == FP__FS_EXITED && ok && s->pid == m->pid && m->pid) {
    worker_gone(l, m->slot, m->arg);
  } else if (m->op == FP__FS_FAILED && ok && s->spawning) {
    s->spawning = 0;
    FP__LL_EV(l, start_failed, m->slot, -m->arg);
  }
}

/* Workers die with their fork server (PDEATHSIG), except those whose
 * credentials a task changed (setuid, setgid ...): the kernel clears the
 * parent-death signal then. Those that still run are SIGKILLed here (no
 * reused pid is hit: fp__proc_kill_same), and awaited for up to a second
 * in all, so that "every worker is dead" holds when terminate returns. */
static void kill_orphans(llink *l) {
  int64_t end = fp__now_ns() + 1000000000LL;
  for (int i = 0; i < l->cfg.nworkers; i++) {
    lslot *s = &l->slots[i];
    int fd = s->pid != 0 ? fp__proc_kill_same(s->pid, s->start_time) : -1;
    if (fd < 0)
      continue;
    int64_t left = (end - fp__now_ns()) / 1000000;
    struct pollfd pf = {fd, POLLIN, 0};
    while (left > 0 && poll(&pf, 1, (int)left) < 0 && errno == EINTR)
      left = (end - fp__now_ns()) / 1000000;
    close(fd);
  }
}

/* The fork server is gone: so are its workers (PDEATHSIG, or
 * kill_orphans). */
static void fs_gone(llink *l) {
  if (l->lost)
    return;
  l->lost = 1;
  uv_poll_stop(&l->fs_poll);
  kill_orphans(l);
  for (int i = 0; i < l->cfg.nworkers; i++) {
    lslot *s = &l->slots[i];
    if (s->pid != 0)
      worker_gone(l, i, SIGKILL);
    if (s->spawning) {
      s->spawning = 0;
      FP__LL_EV(l, start_failed, i, FP_EWORKER);
    }
  }
  char why[128];
  fp__fs_death_message(l, why, sizeof(why));
  l->ev.lost(l->ev.ctx, why);
}

static void fs_on_io(uv_poll_t *h, int status, int events) {
  llink *l = h->data;
  fp__fs_msg m;
  int fd, rc;
  (void)status;
  l->ev.enter(l->ev.ctx);
  /* Answers first: reading them is what lets a server blocked on one
   * read our requests again. */
  while (!l->lost && (rc = fp__fs_recv(l, &m, &fd)) != 1) {
    if (rc < 0)
      fs_gone(l);
    else
      fs_message(l, &m, fd);
  }
  if (!l->lost && (events & UV_WRITABLE)) {
    if (fp__fs_flush_queue(l) != 0) {
      /* The socket failed with requests the caller was told were sent:
       * the server must not serve on without them. It ends, its workers
       * with it, and the pool learns why (fs_gone). */
      kill(l->fs_pid, SIGKILL);
      fs_gone(l);
    } else if (l->ctl_len == 0) {
      fs_poll_events(l);
    }
  }
  l->ev.leave(l->ev.ctx);
}

/* ---- operations ---------------------------------------------------------- */

static void llink_release(llink *l) {
  if (l->shm != NULL) {
    fp__mapreg_remove(l->shm);
    munmap(l->shm, l->shm_len);
  }
  free(l->ctl_q);
  free(l->slots);
  free(l);
}

/* The CPUs this process may run on: the spinning budget (local.h). */
static int usable_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0)
    return 1;
  int n = CPU_COUNT(&set);
  return n > 0 ? n : 1;
}

/* Maps the slots and rings. Rings are reserved, not touched: a page costs
 * memory once used. */
fp__shm_view fp__local_layout(void *base, int nslots, size_t *len) {
  size_t n = (size_t)nslots;
  size_t hdr = (sizeof(fp__local_shm) + 63) & ~(size_t)63;
  size_t rings_off = (hdr + sizeof(fp__slot) * n + FP__RING_ALIGN - 1) &
                     ~(size_t)(FP__RING_ALIGN - 1);
  size_t trings_off = rings_off + sizeof(fp__ring) * n;
  *len = trings_off + sizeof(fp__tring) * n;
  return (fp__shm_view){.hdr = base,
                        .slots = (fp__slot *)((char *)base + hdr),
                        .rings = (fp__ring *)((char *)base + rings_off),
                        .trings = (fp__tring *)((char *)base + trings_off),
                        .nslots = nslots};
}

static int map_shared(llink *l) {
  fp__local_layout(NULL, l->cfg.nworkers, &l->shm_len);
  void *p = mmap(NULL, l->shm_len, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return -errno;
  l->shm = p;
  l->v = fp__local_layout(p, l->cfg.nworkers, &l->shm_len);
  fp__mapreg_add(p, l->shm_len);
  l->shm->ncpu = usable_cpus();
  return 0;
}

static int local_open(fp__link **out, const fp__wconf *cfg,
                      const fp__link_events *ev) {
  llink *l = calloc(1, sizeof(*l));
  if (l == NULL)
    return FP_ENOMEM;
  l->base.ops = &fp__link_local;
  l->ev = *ev;
  l->cfg = *cfg;
  l->fs_fd = -1;
  l->copy_pipe[0] = l->copy_pipe[1] = -1;
  l->opener = getpid();
  l->slots = calloc((size_t)cfg->nworkers, sizeof(*l->slots));
  /* Without it, borrowed items simply all take the socket. */
  int rc = l->slots ? map_shared(l) : FP_ENOMEM;
  if (rc == 0)
    rc = fp__fs_fork(l);
  if (rc != 0) {
    llink_release(l);
    return rc;
  }
  *out = &l->base;
  return 0;
}

static int local_start(fp__link *base, uv_loop_t *loop) {
  llink *l = (llink *)base;
  l->loop = loop;
  int rc = uv_poll_init(loop, &l->fs_poll, l->fs_fd);
  if (rc != 0)
    return rc;
  l->fs_poll.data = l;
  fs_poll_events(l); /* with what spawn queued before the loop ran */
  uv_prepare_init(loop, &l->prep);
  uv_check_init(loop, &l->chk);
  uv_idle_init(loop, &l->spin);
  uv_async_init(loop, &l->flush, on_flush);
  uv_timer_init(loop, &l->watch);
  l->prep.data = l->chk.data = l->flush.data = l->watch.data = l;
  uv_prepare_start(&l->prep, on_prepare);
  uv_check_start(&l->chk, on_check);
  /* prepare/check must not keep the loop alive on their own. */
  uv_unref((uv_handle_t *)&l->prep);
  uv_unref((uv_handle_t *)&l->chk);
  l->started = 1;
  return 0;
}

static int local_spawn(fp__link *base, int slot) {
  llink *l = (llink *)base;
  lslot *s = &l->slots[slot];
  if (s->spawning || s->pid != 0)
    return FP_EINVAL;
  fp__slot *pub = &l->v.slots[slot];
  atomic_store(&pub->pid, 0);
  atomic_store(&pub->seq, 0);
  atomic_store(&pub->taken, 0);
  atomic_store(&pub->started_ns, 0);
  atomic_store(&pub->item, -1);
  fp__budget_drop_slot(l->shm, pub); /* if worker_gone did not */
  for (int i = 0; i < FP__SLOT_SKIPS; i++)
    atomic_store(&pub->skip[i], 0); /* the old process's marks */
  /* The previous process's ring was drained when it died. */
  atomic_store(&l->v.rings[slot].head, 0);
  atomic_store(&l->v.rings[slot].tail, 0);
  fp__tring *tr = &l->v.trings[slot];
  atomic_store(&tr->head, 0);
  atomic_store(&tr->tail, 0);
  s->ttail = 0;
  atomic_store(&tr->sleeping, 0);
  atomic_store(&tr->feeder_cpu, -1); /* nobody fed it yet */
  int rc = fp__fs_send(l, FP__FS_SPAWN, slot, 0, 0, 0);
  if (rc == 0)
    s->spawning = 1;
  s->finished = 0;
  return rc;
}

static int local_can_send(fp__link *base, int slot) {
  lslot *s = &((llink *)base)->slots[slot];
  return s->c != NULL && s->ready && !s->c->eof && s->c->out_len == 0;
}

static int local_kill(fp__link *base, int slot, int sig, uint64_t aim) {
  llink *l = (llink *)base;
  lslot *s = &l->slots[slot];
  if (s->pid == 0)
    return FP_EINVAL;
  if (sig == SIGKILL)
    fp__fs_expect_exit(l, slot);
  return fp__fs_send(l, FP__FS_KILL, slot, s->pid, sig, aim);
}

/* A worker that cannot be fed must not sit idle holding chunks: it is
 * killed, and its exited() hands its chunks back to the scheduler. */
static int local_send(fp__link *base, int slot, const fp__task_out *t, int n,
                      int *sent) {
  llink *l = (llink *)base;
  int rc = fp__llink_send(l, slot, t, n, sent);
  if (*sent < 0 && l->slots[slot].pid != 0) {
    if (l->slots[slot].c != NULL)
      l->slots[slot].c->eof = 1;
    local_kill(base, slot, SIGKILL, 0);
  }
  return rc;
}

static void local_finish(fp__link *base, int slot) {
  fp__llink_finish((llink *)base, slot);
}

/* Delivers what every live worker published in its result ring (any
 * thread, the owner's lock held). Returns how many results. */
static int local_poll(fp__link *base) {
  llink *l = (llink *)base;
  int got = 0;
  for (int i = 0; i < l->cfg.nworkers; i++)
    if (l->slots[i].pid != 0 && fp__ring_pending(&l->v.rings[i]))
      got += fp__llink_drain(l, i);
  return got;
}

/* A poller starts: counted in the budget and in `pollers` (local.h) when
 * the budget has room for it. No lock needed. */
static int local_spin_begin(fp__link *base) {
  llink *l = (llink *)base;
  if (!fp__budget_ok_poller(l->shm, 1))
    return 0;
  fp__budget_join(l->shm);
  atomic_fetch_add_explicit(&l->shm->pollers, 1, memory_order_seq_cst);
  return 1;
}

static int local_spin_check(fp__link *base) {
  llink *l = (llink *)base;
  if (fp__llink_pending(l))
    return 1;
  return fp__budget_ok_poller(l->shm, 0) ? 0 : -1;
}

/* A poller stops. The pollers store, then the tails' loads (seq_cst):
 * a result a worker did not kick for is seen here. */
static int local_spin_end(fp__link *base) {
  llink *l = (llink *)base;
  atomic_fetch_sub_explicit(&l->shm->pollers, 1, memory_order_seq_cst);
  fp__budget_leave(l->shm);
  return fp__llink_pending(l);
}

static int local_skip(fp__link *base, int slot, uint64_t seq) {
  llink *l = (llink *)base;
  if (l->slots[slot].pid == 0)
    return 0;
  return fp__slot_skip(&l->v.slots[slot], seq);
}

static int local_recall(fp__link *base, int slot, uint64_t seq, uint64_t nth) {
  llink *l = (llink *)base;
  if (l->slots[slot].pid == 0)
    return 1;
  return fp__slot_recall(&l->v.slots[slot], seq, nth);
}

static int local_running(fp__link *base, int slot, fp__running *out) {
  llink *l = (llink *)base;
  fp__slot *pub = &l->v.slots[slot];
  out->seq = atomic_load(&pub->seq);
  out->item = atomic_load(&pub->item);
  out->started_ns =
      atomic_load_explicit(&pub->started_ns, memory_order_acquire);
  out->cpu = atomic_load_explicit(&pub->cpu, memory_order_relaxed);
  return 0;
}

static void closed_noop(uv_handle_t *h) {
  (void)h;
}

static void local_close(fp__link *base) {
  llink *l = (llink *)base;
  if (!l->started)
    return;
  l->started = 0;
  uv_close((uv_handle_t *)&l->fs_poll, closed_noop);
  uv_close((uv_handle_t *)&l->prep, closed_noop);
  uv_close((uv_handle_t *)&l->chk, closed_noop);
  uv_close((uv_handle_t *)&l->spin, closed_noop);
  uv_close((uv_handle_t *)&l->flush, closed_noop);
  uv_close((uv_handle_t *)&l->watch, closed_noop);
  for (int i = 0; i < l->cfg.nworkers; i++) {
    if (l->slots[i].c != NULL)
      fp__conn_close(l->slots[i].c);
    l->slots[i].c = NULL;
  }
  /* EOF for the fork server: it ends what is left of its workers, reaps
   * them and exits; free() waits for it. */
  shutdown(l->fs_fd, SHUT_RDWR);
}

/* Closes one of the link's descriptors. In a copy of the opener (the
 * user's fork, or a worker of another pool, whose fork server closed
 * them all and whose task may own the numbers now), only while the
 * registry still says it is ours. */
static void close_own_fd(int copy, int fd) {
  if (copy)
    fp__fdreg_close_if_registered(fd);
  else
    fp__fdreg_close(fd);
}

static void local_free(fp__link *base) {
  llink *l = (llink *)base;
  int copy = getpid() != l->opener;
  /* After the loop ended, or in a forked copy of the master whose loop
   * never ran here: no libuv call, and no shutdown(), which would act on
   * the socket the parent still uses. */
  for (int i = 0; i < l->cfg.nworkers; i++) {
    conn *c = l->slots[i].c;
    if (c != NULL) { /* a forked copy: its handles were never closed */
      close_own_fd(copy, c->fd);
      fp__free(c->in, c->in_cap);
      fp__free(c->out, c->out_cap);
      free(c);
    }
  }
  if (l->fs_fd >= 0) {
    close_own_fd(copy, l->fs_fd);
    /* A copy never owns the fork server: it is the opener's child. */
    if (!copy)
      fp__fs_reap(l->fs_pid);
  }
  for (int k = 0; k < 2; k++)
    if (l->copy_pipe[k] >= 0)
      close_own_fd(copy, l->copy_pipe[k]);
  llink_release(l);
}

const fp__link_ops fp__link_local = {
    .name = "local",
    .open = local_open,
    .start = local_start,
    .spawn = local_spawn,
    .can_send = local_can_send,
    .send = local_send,
    .kill = local_kill,
    .kill_aims = 1,
    .lazy_depth = FP__DEFER_QUEUED,
    .running = local_running,
    .skip = local_skip,
    .recall = local_recall,
    .finish = local_finish,
    .close = local_close,
    .free = local_free,
    .poll = local_poll,
    .spin_begin = local_spin_begin,
    .spin_check = local_spin_check,
    .spin_end = local_spin_end,
};
