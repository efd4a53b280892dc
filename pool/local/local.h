/* SPDX-License-Identifier: MIT */
/* local.h - the local link's own protocol: what its three kinds of process
 * (the master's link_local.c, the fork server, the workers) share.
 *
 * The scheduler never includes this header: it sees the local link only
 * through link.h. Shared memory here is mapped by link_local.c before the
 * fork server is forked, so every worker inherits it.
 */
#ifndef FP_POOL_LOCAL_H
#define FP_POOL_LOCAL_H

#include "pool/proto.h"
#include "pool/spin.h"

#include <signal.h>
#include <stdatomic.h>
#include <sys/types.h>
#include <sys/uio.h>

#define FP__SOCKBUF (2 << 20) /* requested SO_SNDBUF/SO_RCVBUF per socket */

/* ---- what a worker publishes ---------------------------------------------
 *
 * One per worker slot, in a MAP_SHARED mapping, so the worker (writer) and
 * the master (reader) see the same memory. The worker publishes what it is
 * running with relaxed atomic stores: a few nanoseconds per item, and after
 * a crash the master knows which item was executing without any message. */
#define FP__SLOT_SKIPS 16

typedef struct fp__slot {
  _Atomic int32_t pid;
  _Atomic int32_t cpu;        /* sched_getcpu() at the last chunk */
  _Atomic uint64_t seq;       /* chunk running, 0 when idle */
  _Atomic int64_t item;       /* item index running */
  _Atomic int64_t started_ns; /* start of that item; 0: clock stopped */
  _Atomic int32_t counted;    /* the worker is counted in shm->active */
  _Atomic uint64_t taken;     /* task frames this process has begun (run
                                 or skipped), in the order sent */
  char pad[64 - 48];
  /* Chunks the worker holds that it must not run (their job was
   * canceled): the master sets an entry, the worker looks before it starts
   * a chunk, the master clears the entry when the chunk's RESULT comes.
   * At most FP__LINK_MAX_BATCH chunks are ever held, so one entry each
   * (link_local.c checks FP__SLOT_SKIPS against it). */
  _Atomic uint64_t skip[FP__SLOT_SKIPS];
} fp__slot;

/* Not running a chunk of a canceled job (a Dekker pair, all seq_cst, and
 * a compare-and-swap that decides who owns the entry):
 *  - the worker stores slot->seq = seq before it starts a chunk, then
 *    claims an entry holding seq (seq -> 0): claimed, it runs nothing;
 *  - the master stores seq in a free entry, then loads slot->seq: if it is
 *    not seq, the worker has not reached the chunk and will see the entry;
 *    if it is, the master withdraws the entry (seq -> 0): withdrawn, the
 *    worker runs (or is running) the chunk and the master kills it; not
 *    withdrawable, the worker claimed it and runs nothing.
 * Worker side: 1 when it claimed an entry for seq. */
int fp__slot_claim_skip(fp__slot *s, uint64_t seq);

/* Master side: asks the worker not to run seq (above). Returns 0 when it
 * will not run it (or no entry was free: then it runs, and its results
 * are dropped), 1 when it runs it. */
int fp__slot_skip(fp__slot *s, uint64_t seq);

/* Master side: takes back seq, the nth task frame sent to the slot's
 * current process, so that another worker can run it. The same Dekker
 * pair as fp__slot_skip, but on slot->taken, which only grows: a skip
 * mark alone cannot tell a chunk not reached from one already finished
 * (slot->seq has moved past both), and a finished chunk taken back would
 * run twice. Returns 0 when the worker will not run seq (it answers it
 * with an empty RESULT), 1 when it has begun it or no entry was free. */
int fp__slot_recall(fp__slot *s, uint64_t seq, uint64_t nth);

/* Master side, when seq's RESULT comes: withdraws a mark for seq that the
 * worker will never claim (it had finished seq when the mark was set). */
void fp__slot_unskip(fp__slot *s, uint64_t seq);

/* ---- result rings (ring.c) ------------------------------------------------
 *
 * Results of up to FP__RING_MAX bytes travel through a per-worker ring in
 * shared memory instead of the socket: the worker copies the RESULT frame
 * into the ring and publishes it with one store, with no system call. The
 * master drains the rings after every wake-up of its loop. Only when the
 * master is about to sleep (master_idle, set just before epoll) does a
 * worker send a one-frame KICK on its socket to wake it: Dekker-style, the
 * worker stores the tail, then reads master_idle; the master stores
 * master_idle, then reads the tails, all four accesses seq_cst, so at least
 * one side sees the other's store and a result is never left unseen.
 *
 * A worker that holds FP__DEFER_QUEUED or more chunks (the one it runs and
 * those queued behind it) may let a result wait in the ring instead of
 * kicking, until it publishes one FP__DEFER_NS later: the master then
 * takes several results per wake-up. The worker cannot bound that wait by
 * itself, as the next chunk it runs may be long; the master does, by
 * looking at the rings every FP__LOOK_MS while a worker holds that many
 * (the link's lazy_depth, pool.c).
 *
 * Results in the ring survive the worker: when a worker dies, the master
 * drains its ring before accounting for its chunks, so a chunk that
 * finished is never run twice or lost. Entries are frames (frame.h),
 * 8-byte aligned; FP__RING_WRAP in place of a frame header marks the unused
 * end before a wrap. */
#define FP__DEFER_QUEUED 3
#define FP__DEFER_NS 1000000
#define FP__RING_SIZE (256 * 1024)
#define FP__RING_MAX (FP__RING_SIZE / 2)
#define FP__RING_WRAP 0xFFFFFFFFu

/* Rings are page-aligned and a whole number of (4 KiB) pages long, so
 * that a worker can unmap every ring but its own (worker.c). */
#define FP__RING_ALIGN 4096

typedef struct fp__ring {
  _Alignas(FP__RING_ALIGN) _Atomic uint64_t head; /* consumer (master)
                                                     position in bytes */
  char pad1[56];
  _Atomic uint64_t tail; /* producer (worker) position in bytes */
  char pad2[56];
  unsigned char data[FP__RING_SIZE];
} fp__ring;

/* ---- task rings (ring.c) --------------------------------------------------
 *
 * Task frames travel master -> worker through a per-worker ring of the
 * same kind, so that feeding a worker that is awake is a memcpy and one
 * store. The master (any thread holding the pool's lock, so there is one
 * producer at a time) writes frames at its private tail and publishes them
 * with one seq_cst store; the worker runs each chunk in place (its items
 * stay in the ring) and only then releases the entry by moving the head.
 * Entries start FP__FRAME_ALIGN-aligned, so a chunk's items are aligned
 * like a C array, as in the worker's socket buffer.
 *
 * The ring is the only ordered channel of tasks. A frame over FP__TRING_MAX
 * bytes goes on the socket, announced in the ring by a SOCK marker at its
 * place in the order: the worker that reaches the marker reads one frame
 * from its socket (blocking). A FINISH marker tells the worker to leave.
 * The socket stays the channel that reports a death (EOF both ways) and
 * carries READY, RETIRE, KICK and large results.
 *
 * Space: the scheduler holds at most FP__LINK_MAX_BATCH chunks on a worker
 * and a worker releases an entry before it publishes the chunk's result,
 * so at most FP__LINK_MAX_BATCH entries of at most FP__TRING_MAX bytes
 * (plus one wrap's waste and a marker) are ever in use: the ring cannot be
 * full when the master writes. Should a broken worker make it look full
 * (its head is writable by its tasks), the master's send fails and the
 * worker is killed; a head that is not plausible is treated the same way.
 *
 * Sleep and wake (an eventcount). A worker with an empty ring spins for up
 * to FP__SPIN_NS while the CPU budget allows (below), then sleeps: it reads
 * `wake`, stores sleeping = 1, looks at the tail once more and, if still
 * empty, futex-waits on `wake` with that value. The master stores the tail
 * and then reads `sleeping` (both seq_cst, Dekker-style as for the result
 * rings); only if it is set does it bump `wake` and FUTEX_WAKE, so feeding
 * a worker that is awake costs no system call, and a bump between the
 * worker's read and its wait makes the wait return at once. A sleeping
 * worker wakes every FP__IDLE_POLL_MS to look for EOF on its socket, the
 * last resort if nobody else tells it that the master is gone.
 *
 * The CPU budget. `active` counts this pool's threads that spin or run: a
 * worker from the moment it wakes (or starts) until it sleeps, the pool
 * thread from the moment its loop wakes until it sleeps. A thread spins
 * only while active <= ncpu (the usable CPUs of the master): when more of
 * ours spin or run than there are CPUs, spinning would take a CPU from a
 * running task (or from the pool thread feeding the workers), so spinners
 * sleep instead. An idle pool sleeps entirely: every spin is bounded by
 * FP__SPIN_NS after the last piece of work.
 *
 * Pollers. A user thread blocked on a result may drain the result rings
 * itself (link.h, poll), so that a round trip needs two awake threads (the
 * caller and the worker) instead of three. While it spins it is counted in
 * `pollers` and in the budget; the pool thread then stops spinning (it
 * yields its place: `pool_spinning` says it is still in its spin, so a
 * poller does not count it) and workers send no KICK, since a poller
 * drains the ring. Kick and poller are Dekker-style again: a worker stores
 * the tail, then loads pollers; a poller that stops stores pollers, then
 * loads the tails (all seq_cst), and if a result waits it has the pool
 * thread woken, so no result is left unseen when the last poller leaves. */
#define FP__TRING_SIZE (1024 * 1024)
#define FP__TRING_MAX (56 * 1024) /* inline frames, header included */
#define FP__TRING_SOCK 0xF1       /* marker: the next frame is on the socket */
#define FP__TRING_FINISH 0xF2     /* marker: no more work, leave */
#define FP__TRING_MARK_LEN 12     /* marker payload (frame of 16 bytes) */
#define FP__SPIN_NS 50000         /* longest spin after the last work */
#define FP__IDLE_POLL_MS 200      /* a sleeping worker's look at its socket */

typedef struct fp__tring {
  _Alignas(FP__RING_ALIGN) _Atomic uint64_t head; /* consumer (worker)
                                                     position in bytes */
  char pad1[56];
  _Atomic uint64_t tail;     /* producer (master) position in bytes */
  _Atomic int32_t feeder_cpu; /* the CPU of the master thread that last
                                 published (fp__tring_feeder_here) */
  char pad2[52];
  _Atomic uint32_t wake;     /* futex word, bumped to wake the worker */
  _Atomic int32_t sleeping;  /* the worker is (about to be) asleep */
  char pad3[56];
  unsigned char data[FP__TRING_SIZE];
} fp__tring;

/* The local link's shared mapping: one slot and two rings per worker. */
typedef struct fp__local_shm {
  _Atomic int master_idle; /* the pool thread is (about to be) asleep */
  char pad[60];
  _Atomic int active;      /* threads spinning or running (the budget) */
  int ncpu;                /* usable CPUs */
  int nslots;
  char pad2[52];
  _Atomic int pollers;       /* callers draining the result rings */
  _Atomic int pool_spinning; /* the pool thread spins (and yields) */
  char pad3[56];
  /* The slots and rings follow: fp__shm_view says where. */
} fp__local_shm;

/* Where the mapping's parts are and how many slots it has, kept in the
 * master's private memory (and inherited by the fork server and the
 * workers), never in the mapping: every worker can write the mapping,
 * and one that scribbles over it must not steer the master's reads, nor
 * make every later worker crash at start. */
typedef struct fp__shm_view {
  fp__local_shm *hdr;
  fp__slot *slots;   /* nslots */
  fp__ring *rings;   /* nslots */
  fp__tring *trings; /* nslots */
  int nslots;
} fp__shm_view;

/* Where the parts of a pool's shared mapping of nslots workers lie when it
 * starts at base, and its length in *len (base may be NULL for the length
 * alone): hdr, the slots, then each worker's result ring, then each
 * worker's task ring, rings page-aligned (link_local.c). */
fp__shm_view fp__local_layout(void *base, int nslots, size_t *len);

/* Master side: writes one frame (payload of `total` bytes in the iov
 * parts, padded to FP__FRAME_ALIGN) at *tail, a private copy of the tail,
 * and advances it; nothing is visible to the worker before
 * fp__tring_publish(), so resetting *tail takes frames back. A part with
 * a NULL base is left for the caller to fill: *payload (when not NULL)
 * gets the address of the frame's payload in the ring. Returns 0, or -1
 * when it does not fit (or the worker's head is not plausible). */
int fp__tring_put(fp__tring *r, uint64_t *tail, const struct iovec *iov,
                  int n, size_t total, unsigned char **payload);

/* Master side: makes the frames before tail visible, noting the CPU the
 * publishing thread runs on; returns 1 when the worker sleeps and must be
 * woken (fp__tring_wake). */
int fp__tring_publish(fp__tring *r, uint64_t tail);

/* Worker side: 1 when the master thread that fed this ring last ran on the
 * worker's own CPU. Spinning there keeps the CPU from that thread, which
 * is what the worker waits for: the worker moves off it (worker.c,
 * move_off_cpu; spin.h says how the two come to share a CPU). */
int fp__tring_feeder_here(fp__tring *r);
void fp__tring_wake(fp__tring *r);

/* Worker side: as fp__ring_next, for the task ring (16-byte entries). */
int fp__tring_next(fp__tring *r, uint64_t *pos, const unsigned char **payload,
                   size_t *len);

/* Worker side: frees the entries before pos. */
void fp__tring_release(fp__tring *r, uint64_t pos);

/* Worker side: sleeps until the master published past `pos` (or a
 * timeout of FP__IDLE_POLL_MS passed). The caller left the budget. */
void fp__tring_sleep(fp__tring *r, uint64_t pos);

/* The CPU budget (see above). fp__budget_join counts the caller in;
 * fp__budget_leave counts it out; fp__budget_ok says whether a counted
 * thread may go on spinning. */
void fp__budget_join(fp__local_shm *shm);
void fp__budget_leave(fp__local_shm *shm);
/* A worker joins and leaves through its slot, which says whether it is
 * counted: a worker that exits or is killed while counted would otherwise
 * stay in `active` for the pool's life and stop every spinner (a pool
 * whose workers hit time limits went from 1.2 to 40 us per apply). The
 * master takes a dead worker out with fp__budget_drop_slot. */
void fp__budget_join_slot(fp__local_shm *shm, fp__slot *s);
void fp__budget_leave_slot(fp__local_shm *shm, fp__slot *s);
void fp__budget_drop_slot(fp__local_shm *shm, fp__slot *s);
int fp__budget_ok(fp__local_shm *shm);
/* As fp__budget_ok for a poller, which outranks the pool thread's spin:
 * a pool thread that only spins (it is about to yield) is not counted.
 * `extra` counts the caller when it has not joined yet. */
int fp__budget_ok_poller(fp__local_shm *shm, int extra);

/* Worker side: copies a frame of `total` payload bytes (the iov parts)
 * into the ring and publishes it. Returns 0, or -1 when it does not fit
 * now (the caller sends it on the socket instead). */
int fp__ring_put(fp__ring *r, const struct iovec *iov, int n, size_t total);

/* Master side: the frame at *pos (a private copy of the head), if any.
 * Returns 1 and sets *payload and *len (valid until fp__ring_release), 0 when
 * the ring is empty, or -1 when the ring is corrupt (the caller treats the
 * worker as broken). Advances *pos past the frame. */
int fp__ring_next(fp__ring *r, uint64_t *pos, const unsigned char **payload,
                  size_t *len);

/* Master side: frees the space before pos for the worker to reuse. */
void fp__ring_release(fp__ring *r, uint64_t pos);

/* 1 when the worker published something the master has not taken. */
int fp__ring_pending(fp__ring *r);

/* ---- the fork server's protocol (SOCK_SEQPACKET, a message a packet) ---- */

enum {
  FP__FS_SPAWN = 1, /* master -> fs: fork a worker for slot */
  FP__FS_KILL,      /* master -> fs: kill(pid, sig) if pid is still ours */
  FP__FS_SPAWNED,   /* fs -> master: slot, pid, and the socket (SCM_RIGHTS) */
  FP__FS_EXITED,    /* fs -> master: slot, pid, wait status */
  FP__FS_FAILED     /* fs -> master: slot, errno of fork/socketpair */
};

typedef struct fp__fs_msg {
  int32_t op;
  int32_t slot;
  int32_t pid;
  int32_t arg;  /* signal, wait status or errno */
  uint64_t aim; /* FP__FS_KILL: the chunk the signal is for, 0: any (see
                   fp__worker_aimed_term in worker.c) */
} fp__fs_msg;

/* ---- starting the processes ---------------------------------------------- */

/* What the fork server hands a new worker besides the fp__wconf. */
typedef struct fp__wboot {
  int slot;
  int fd;                 /* the worker's end of its socket */
  pid_t parent;           /* the fork server, for PR_SET_PDEATHSIG */
  sigset_t mask;          /* the signal mask to run tasks with */
  const fp__shm_view *v;  /* slots and rings: the fork server's private
                             copy of the master's view */
} fp__wboot;

/* procfs.c: reads the file at path whole into buf (NUL-terminated, cap
 * bytes at most with the NUL); returns its length, or -1 when it cannot
 * be read. */
ssize_t fp__proc_read(const char *path, char *buf, size_t cap);
/* 1 when process pid is stopped or traced-stopped (state T or t); 0 when
 * it runs, or when procfs cannot tell. */
int fp__proc_stopped(pid_t pid);
/* procfs.c: pid's start time (clock ticks since boot), 0 when unknown. */
uint64_t fp__proc_start_time(pid_t pid);
/* procfs.c: SIGKILLs pid if it is still the process that started at
 * `start`; returns a pidfd of it (poll it to see it end; close it), or -1
 * when nothing was sent (another process, gone, or no pidfd). */
int fp__proc_kill_same(pid_t pid, uint64_t start);
/* A pidfd of process pid (readable once it exited; close-on-exec), or -1
 * when the kernel (or a seccomp filter) has no pidfd_open, or no
 * descriptor is left. */
int fp__pidfd_open(pid_t pid);

/* The fork server's main loop (forkserver.c); never returns. master is the
 * pid of the process that forked it; by_main_thread says whether the
 * forking thread was its main thread (PR_SET_PDEATHSIG is then safe).
 * The fork server starts with every signal blocked; mask is the forking
 * thread's own mask, which the server passes on to its workers. */
void fp__forkserver_main(const fp__wconf *cfg, const fp__shm_view *v, int ctl,
                         pid_t master, int by_main_thread, const sigset_t *mask)
    __attribute__((noreturn));

/* A worker's main loop (worker.c); never returns. */
void fp__worker_main(const fp__wconf *cfg, const fp__wboot *boot)
    __attribute__((noreturn));

/* ---- descriptors (fdreg.c) ------------------------------------------------
 *
 * The registry of library-owned descriptors that fork servers close when
 * they start. Open and register under fp__fdreg_lock() (no allocation or
 * blocking call inside: fork() waits for the lock); unregister and close
 * with fp__fdreg_close(). fp__fdreg_init() installs the fork handlers
 * once per process: call it before the first fork of a fork server;
 * 0 or FP_ENOMEM. */
int fp__fdreg_init(void);
void fp__fdreg_lock(void);
void fp__fdreg_unlock(void);
void fp__fdreg_add_locked(int fd);
void fp__fdreg_close(int fd);
/* fp__fdreg_close in a copy of the process that opened fd: closes it only
 * while the registry still holds it. A fork server empties the registry
 * it inherits (fp__fdreg_close_all), so in a worker the number may have
 * been reused for a descriptor of the task's own. Returns 1 if closed. */
int fp__fdreg_close_if_registered(int fd);
int fp__fdreg_close_all(int keep);
/* A pair of descriptors just made under fp__fdreg_lock() (rc: how making
 * them went, 0 or -errno): both moved above stdio (fp__fd_above_stdio)
 * and registered, so that a fork server another thread forks meanwhile
 * closes them. Returns 0, or -errno with both closed. */
int fp__fdreg_add_pair_locked(int fds[2], int rc);

/* ---- shared mappings (mapreg.c) -------------------------------------------
 *
 * Every pool's shared mapping is registered (after mmap; unregistered
 * before munmap) so that a fork server unmaps the other pools' ones when
 * it starts (fp__mapreg_unmap_others, single-threaded: no lock). */
void fp__mapreg_add(void *base, size_t len);
void fp__mapreg_remove(void *base);
void fp__mapreg_unmap_others(const void *keep);

/* Moves fd above the standard descriptors (0-2) when it is one of them, so
 * a daemon that closed stdin/stdout/stderr never has a library socket
 * mistaken for a standard stream (libuv refuses to close fds 0-2).
 * Returns the descriptor to use (fd itself, or a close-on-exec copy; the
 * original is closed) or -errno. */
int fp__fd_above_stdio(int fd);

#endif
