/* SPDX-License-Identifier: MIT */
/* link.h - the seam between the scheduler and "a worker it can reach".
 *
 * The scheduler (pool.c, sched.c, deaths.c, job.c) knows workers only as
 * slots 0..nworkers-1 of a link. It never touches a socket, a ring, a pid
 * table or a fork server: it calls the operations below and hears back
 * through the events it registered, the way Redis's ae.c reaches epoll or
 * kqueue through a handful of aeApi* calls and libuv's thread pool hands
 * work back through a `done` callback.
 *
 * Implementations:
 *   local/   fork server + socket + task and result rings in shared
 *            memory (link_local.c; llink.h lists its files)
 *   mpi/     worker slots on other MPI ranks, each rank running a local
 *            link (libforkpool_mpi, found at run time: transport.h)
 *
 * Threads and locking. The link is driven by the pool's libuv loop (the
 * pool thread) and by user threads that submit work. Every operation but
 * open() and free() is called with the owner's lock held (pool->mu; the
 * link never takes it by itself). Events come from the pool thread: the
 * link calls ev->enter() before it touches its own state from a loop
 * callback (that takes the owner's lock), then any number of events, then
 * ev->leave() (which releases the lock and runs what the scheduler
 * deferred, such as result callbacks). The one exception is poll(): it
 * delivers result (and violation) events on whichever thread calls it,
 * with the owner's lock held by that thread and without enter/leave. So
 * link state is guarded by the owner's lock, and events arrive with it
 * held, but not always on the pool thread.
 *
 * Life of a slot: spawn() -> started(pid) -> ready() -> any number of
 * send()/result() -> exited(pid, status). A successful spawn() is answered
 * by exactly one of start_failed() (no process was made, or it could not
 * be reached) or started(); every started() is followed by exactly one
 * exited(), after the link has delivered every result the worker wrote
 * before dying. After lost(), no slot can be spawned again.
 */
#ifndef FP_POOL_LINK_H
#define FP_POOL_LINK_H

#include "pool/proto.h"

#include <sys/types.h>
#include <uv.h>

/* Most task frames one send() takes (and a worker holds at once). Each
 * refill of a worker's queue costs a wake-up of the pool thread (a kick,
 * 10-12 us of the worker's time on a VM, where the IPI is a VM exit), so
 * the queue is deep enough for a refill to cover about 1 ms of ~0.1 ms
 * chunks: with 8, kmeans chunks of 107 us lost one kick every 4 chunks. */
#define FP__LINK_MAX_BATCH 16

typedef struct fp__link fp__link;

/* One task frame to send: the header (filled by the scheduler) and the
 * chunk's items, which the link copies or writes before send() returns. */
typedef struct fp__task_out {
  fp__task_hdr hdr;
  const unsigned char *items;
  size_t items_len;
  int borrowed; /* items lie in the caller's memory (a fixed-size map's
                   `in`), which a misbehaving program may have unmapped:
                   the link copies them only through the kernel
                   (sendmsg, process_vm_readv, a write() into a pipe), so
                   that is -EFAULT from send(), never a crash */
} fp__task_out;

/* The buffer a result payload lies in, when the scheduler may keep it
 * instead of copying the payload out: it takes the buffer by copying base
 * and cap and setting base to NULL (then frees it with fp__free(base,
 * cap)). */
typedef struct fp__rbuf {
  unsigned char *base;
  size_t cap;
} fp__rbuf;

/* What a worker is running now, as it published it (deaths.c blames the
 * item on a crash and enforces time limits with it). */
typedef struct fp__running {
  uint64_t seq;       /* chunk running, 0 when idle */
  int64_t item;       /* item index running */
  int64_t started_ns; /* fp__now_ns() when that item started; 0 unknown */
  int cpu;            /* CPU of the last chunk, -1 unknown */
} fp__running;

/* Where a link reports. Every callback gets ctx first. */
typedef struct fp__link_events {
  void *ctx;
  void (*enter)(void *ctx); /* takes the owner's lock */
  void (*leave)(void *ctx); /* releases it, runs deferred work */
  /* A process exists for slot (pid; for remote links, a local pid of
   * the remote end or 0). */
  void (*started)(void *ctx, int slot, pid_t pid);
  /* Its initializer ran: it takes work now. */
  void (*ready)(void *ctx, int slot);
  /* A RESULT payload (starting with fp__res_hdr). payload stays valid
   * until the callback returns; keep, when not NULL, lets the scheduler
   * take the buffer (see fp__rbuf). */
  void (*result)(void *ctx, int slot, const unsigned char *payload,
                 size_t len, fp__rbuf *keep);
  /* The worker says it leaves after maxtasksperchild chunks. */
  void (*retired)(void *ctx, int slot);
  /* The worker broke the protocol (a malformed or unknown frame, a
   * corrupt ring): the scheduler kills it. */
  void (*violation)(void *ctx, int slot, const char *what);
  /* The master had no memory for the worker's next frame, and stopped
   * reading from it: the scheduler kills it, and fails every chunk it
   * held with FP_ENOMEM (any of them may have run: its results are
   * lost, and running it again could run it twice). */
  void (*no_memory)(void *ctx, int slot);
  /* The process is gone: wait status, as waitpid() gives it. */
  void (*exited)(void *ctx, int slot, pid_t pid, int status);
  /* A spawn() could not make a reachable worker; err is -errno or FP_*. */
  void (*start_failed)(void *ctx, int slot, int err);
  /* The link can make no more workers (its fork server died, or MPI was
   * finalized under it); `why` says which, for the pool's error message.
   * Every live slot has had its exited(), and every spawn() its answer,
   * before this. */
  void (*lost)(void *ctx, const char *why);
} fp__link_events;

typedef struct fp__link_ops {
  const char *name;
  /* Creates the link for cfg->nworkers slots (the local link forks its
   * fork server here, before the pool thread exists). ev is copied.
   * Returns 0 and *out, or -errno / FP_ENOMEM; nothing is left behind on
   * failure. Called without any lock. */
  int (*open)(fp__link **out, const fp__wconf *cfg,
              const fp__link_events *ev);
  /* Registers the link's handles on the pool thread's loop (called once,
   * before the pool thread starts). Returns 0 or a negative code. */
  int (*start)(fp__link *l, uv_loop_t *loop);
  /* Asks for a worker process in slot (which has none). Returns 0 (an
   * answer follows, see above) or a negative code (none will). */
  int (*spawn)(fp__link *l, int slot);
  /* 1 when slot's worker can take frames now (ready, alive, nothing of an
   * earlier send still unwritten), else 0. */
  int (*can_send)(fp__link *l, int slot);
  /* Sends n (<= FP__LINK_MAX_BATCH) task frames to slot's worker, in
   * order. Returns 0 when they are written or queued for the pool thread
   * to finish (*sent = n). Returns -errno with *sent = k (0 <= k < n) when
   * frame k's borrowed items could not be read: frames before it went,
   * frames from it on did not, and the worker was left alone. On any
   * other outcome (*sent = -1) the link kills the worker itself (its
   * exited() follows), so a worker that cannot be fed never sits idle
   * holding chunks, and returns FP_EPIPE when the worker's connection
   * broke (it is dying: send these frames elsewhere) or another code when
   * these frames cannot be sent at all (-EFAULT: unreadable items on a
   * stream that then broke; FP_ENOMEM ...), which fails them. */
  int (*send)(fp__link *l, int slot, const fp__task_out *t, int n,
              int *sent);
  /* Sends sig to slot's current process, if it is still the one started.
   * aim: the chunk (seq) a SIGTERM is for; a worker that is no longer
   * running that chunk (it finished it, and may have started another)
   * ignores it, so another job's chunk is never hit by a stale kill. 0:
   * whatever it runs. A link may ignore aim (MPI does). Returns 0, or
   * FP_EINVAL when the slot has no process. */
  int (*kill)(fp__link *l, int slot, int sig, uint64_t aim);
  /* 1 when kill() honours aim; 0 when an aimed SIGTERM may still hit
   * whatever the worker runs by the time it arrives. */
  int kill_aims;
  /* 0, or how many chunks a worker must hold before the link lets its
   * results wait for the owner to look instead of telling it (the local
   * link's workers do, for about FP__DEFER_NS: local.h). While a worker
   * holds that many, the pool thread looks every FP__LOOK_MS (pool_int.h), so
   * that such a result waits no longer when the chunk after it runs long. */
  int lazy_depth;
  /* The largest frame the link carries, 0: any the options allow. A
   * pool's max_frame is capped to it, so that a task too big for the
   * link is refused at submission, naming its size. */
  size_t max_frame;
  /* Fills *out with what slot's worker runs. Returns 0, or FP_EINVAL
   * when the slot has no process. */
  int (*running)(fp__link *l, int slot, fp__running *out);
  /* Optional (NULL: a sent chunk always runs). Asks slot's worker not to
   * run the chunk `seq` that it holds but may not have started: a worker
   * that has not started it answers with a RESULT of no items (the owner
   * drops it: the chunk's job has ended) and runs nothing. Returns 0, or
   * 1 when the worker has started it already (the owner kills it, as for
   * any running chunk of a canceled job). Owner's lock held. */
  int (*skip)(fp__link *l, int slot, uint64_t seq);
  /* Optional (NULL: a sent chunk stays with its worker). Takes back the
   * chunk `seq`, the nth frame (1 = first) sent to slot's current process,
   * so that the owner can give it to an idle worker: returns 0 when it is
   * certain the worker will not run it (it answers seq with a RESULT of no
   * items, as for skip), 1 when the worker may have begun it, finished it
   * or holds it unrecallable (then nothing changed: it runs there). Unlike
   * skip, 0 must never be said of a chunk the worker already ran, or it
   * would run twice. Owner's lock held. */
  int (*recall)(fp__link *l, int slot, uint64_t seq, uint64_t nth);
  /* No more work for slot: its worker may leave once it finished what it
   * holds (the local link closes the write side of its socket). */
  void (*finish)(fp__link *l, int slot);
  /* Closes the link's loop handles (pool thread, at shutdown), so the
   * loop can end; workers still alive are left to free(). */
  void (*close)(fp__link *l);
  /* After the loop ended: ends every process the link made (the local
   * link closes its fork server's socket and reaps it) and frees l.
   * Called without any lock. */
  void (*free)(fp__link *l);
  /* Optional (NULL for the local link): where slot's worker runs, for
   * messages ("rank 2 on node7"); NULL or "" when nothing to add. */
  const char *(*where)(fp__link *l, int slot);
  /* Optional (NULL: results arrive only on the pool thread). Delivers
   * what workers have published (the local link drains the result rings)
   * now, from any thread, with the owner's lock held: result() and
   * violation() events may thus run off the pool thread. Returns the
   * number of results delivered. */
  int (*poll)(fp__link *l);
  /* With poll: a thread that waits for a result spins between
   * spin_begin() and spin_end(), within the link's CPU budget, and calls
   * poll() when spin_check() says results wait. No lock needed (the
   * owner keeps the link alive meanwhile). spin_begin() returns 1 when
   * the caller may spin (it is counted until spin_end()), 0 when the
   * budget has no room (then no spin_end()). spin_check() returns 1 when
   * results wait for poll(), -1 when the spinner must stop (the budget is
   * exceeded), else 0. spin_end() returns 1 when results wait that nobody
   * will deliver unless the pool thread's loop looks (the owner wakes
   * it). */
  int (*spin_begin)(fp__link *l);
  int (*spin_check)(fp__link *l);
  int (*spin_end)(fp__link *l);
} fp__link_ops;

/* Every implementation's state starts with this. */
struct fp__link {
  const fp__link_ops *ops;
};

extern const fp__link_ops fp__link_local;

#endif
