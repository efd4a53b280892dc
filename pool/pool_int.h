/* pool_int.h - internal structures of the pool (master, fork server, worker).
 *
 * Processes and threads:
 *
 *   user threads --API--> pool thread (libuv loop) --socket per worker--> workers
 *                               |  control socket (SOCK_SEQPACKET)          ^
 *                               +------------------> fork server --fork()---+
 *
 * Locking: one mutex per pool (pool->mu) guards the pool's state, the job
 * list, the pending queue and the worker table. Result objects and
 * iterators have their own mutex so they can outlive the pool; the lock
 * order is always pool->mu before res->mu / it->mu, never the reverse.
 * Only the pool thread touches libuv handles; user threads that need the
 * loop to react (new timers, write polling, shutdown) call uv_async_send.
 *
 * Wire messages between the master and a worker are frames (ipc/frame.c)
 * whose payload starts with one of the headers below, in the host's byte
 * order: both ends run the same binary on the same machine.
 */
#ifndef FP_POOL_INT_H
#define FP_POOL_INT_H

#include "forkpool.h"
#include "pool/progress.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

#define FP__MAX_INFLIGHT 8
#define FP__SOCKBUF (2 << 20) /* requested SO_SNDBUF/SO_RCVBUF per socket */
#define FP__MSG_LEN 512 /* longest task failure message kept */

/* ---- function references (fnref.c) ---------------------------------- */

/* A function named by the ELF module that holds it and its offset from the
 * module's load address. The module is identified by its load address and
 * a hash of its path, GNU build-id and segment layout, so the resolver
 * finds the same module or none, never another one that took its place in
 * the module list. kind == UINT32_MAX: `offset` is the raw address of code
 * outside every module (accepted only inside an executable mapping; valid
 * under fork only). 32 bytes, fixed layout; see fnref.c. */
typedef struct fp__fnref {
  uint32_t kind;   /* 0: module + offset; UINT32_MAX: raw address */
  uint32_t pad;    /* 0 */
  uint64_t offset; /* from the module's load address, or the raw address */
  uint64_t base;   /* the module's load address (dlpi_addr); raw: 0 */
  uint64_t ident;  /* hash of the module's path, build-id, layout; raw: 0 */
} fp__fnref;

int fp__fnref_make(const void *fn, fp__fnref *out);
void *fp__fnref_resolve(const fp__fnref *ref);

/* ---- shared slots ------------------------------------------------------ */

/* One per worker slot, in a MAP_SHARED mapping made before the fork server,
 * so the worker (writer) and the master (reader) see the same memory. The
 * worker publishes what it is running with relaxed atomic stores: a few
 * nanoseconds per item, and after a crash the master knows which item was
 * executing without any message. */
typedef struct fp__slot {
  _Atomic int32_t pid;
  _Atomic int32_t cpu;        /* sched_getcpu() at the last chunk */
  _Atomic uint64_t seq;       /* chunk running, 0 when idle */
  _Atomic int64_t item;       /* item index running */
  _Atomic int64_t started_ns; /* CLOCK_MONOTONIC start of that item */
  char pad[64 - 32];
} fp__slot;

/* ---- worker protocol ----------------------------------------------------- */

enum {
  FP__MSG_TASK = 1, /* master -> worker: run a chunk */
  FP__MSG_READY,    /* worker -> master: initializer done */
  FP__MSG_RESULT,   /* worker -> master: a chunk's results */
  FP__MSG_RETIRE,   /* worker -> master: maxtasksperchild reached, exiting */
  FP__MSG_KICK      /* worker -> master: a result is waiting in the ring */
};

/* ---- result rings ----------------------------------------------------------
 *
 * Results of up to FP__RING_MAX bytes travel through a per-worker ring in
 * shared memory instead of the socket: the worker copies the RESULT
 * payload into the ring and publishes it with one release store, with no
 * system call. The master drains the rings after every wake-up of its
 * loop. Only when the master is about to sleep (master_idle, set in a
 * prepare handler just before epoll) does a worker send a one-frame KICK
 * on its socket to wake it: Dekker-style, the worker stores the tail, then
 * reads master_idle; the master stores master_idle, then reads the tails,
 * all four accesses seq_cst, so at least one side sees the other's store
 * and a result is never left unseen.
 *
 * Results in the ring survive the worker: when a worker dies, the master
 * drains its ring before accounting for its chunks, so a chunk that
 * finished is never run twice or lost. Entries: u32 length + payload,
 * 8-byte aligned; FP__RING_WRAP marks the unused end before a wrap. */
#define FP__RING_SIZE (256 * 1024)
#define FP__RING_MAX (FP__RING_SIZE / 2)
#define FP__RING_WRAP 0xFFFFFFFFu

typedef struct fp__ring {
  _Atomic uint64_t head; /* consumer (master) position in bytes */
  char pad1[56];
  _Atomic uint64_t tail; /* producer (worker) position in bytes */
  char pad2[56];
  unsigned char data[FP__RING_SIZE];
} fp__ring;

typedef struct fp__shared {
  _Atomic int master_idle; /* the pool thread is (about to be) asleep */
  char pad[60];
  fp__ring rings[];        /* one per worker slot */
} fp__shared;

enum { FP__WIRE_FIXED = 1, FP__WIRE_VALUES, FP__WIRE_STAR };

#define FP__TASK_TIMED 1 /* publish started_ns per item */
#define FP__TASK_WHOLE 2 /* apply: the whole payload is one item's args */

typedef struct fp__task_hdr {
  uint8_t type;
  uint8_t wire;
  uint8_t flags;
  uint8_t pad;
  uint32_t count;    /* items in the chunk */
  uint64_t seq;      /* chunk id, unique per pool */
  int64_t start;     /* input index of the first item */
  uint32_t in_size;  /* FIXED: element sizes */
  uint32_t out_size;
  fp__fnref fn;
  uint64_t items_len; /* bytes of items; zero padding follows them */
} fp__task_hdr; /* followed by the items, then padding to 16 bytes */

/* Every task frame is a multiple of FP__FRAME_ALIGN bytes long and its
 * items start FP__FRAME_ALIGN-aligned within the frame, so a worker that
 * reads frames back to back into an aligned buffer hands fixed-size tasks
 * element pointers aligned like a C array (an int64_t or double element is
 * never misaligned). */
#define FP__FRAME_ALIGN 16
/* Zero bytes between the header and the items. */
#define FP__HDR_PAD                                                           \
  ((FP__FRAME_ALIGN - (4 + sizeof(fp__task_hdr)) % FP__FRAME_ALIGN) %        \
   FP__FRAME_ALIGN)

typedef struct fp__res_hdr {
  uint8_t type;
  uint8_t pad[3];
  uint32_t count;    /* items */
  uint64_t seq;
  uint32_t nerr;     /* failed items; their records follow the header */
  int32_t cpu;
  uint64_t errs_len; /* bytes of error records, then the item results */
} fp__res_hdr;

/* An error record: fp__err_rec then msg_len bytes of message (no NUL). */
typedef struct fp__err_rec {
  int64_t index;
  int32_t code;
  uint32_t msg_len;
} fp__err_rec;

/* ---- fork server protocol (SOCK_SEQPACKET, one message per packet) ---- */

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
  int32_t arg; /* signal, wait status or errno */
} fp__fs_msg;

/* ---- master-side structures ----------------------------------------------- */

typedef struct fp__job fp__job;
typedef struct fp__chunk fp__chunk;

typedef struct fp__item_err {
  int64_t index;
  int code;
  char *msg; /* fp__alloc'd, NUL-terminated */
} fp__item_err;

enum { FP__CH_PENDING = 0, FP__CH_SENT, FP__CH_DONE };

struct fp__chunk {
  fp__job *job;
  fp__chunk *qprev, *qnext; /* pending queue links */
  fp__chunk *dnext;         /* iterator's completion queue */
  uint64_t seq;
  size_t number;            /* position in the job */
  int64_t start;
  uint32_t count;
  int state;
  int attempts;
  int heap;                 /* allocated alone (producer chunks) */
  const unsigned char *items; /* payload to send (borrowed from the job) */
  size_t items_len;
  unsigned char *res;       /* values kinds: encoded results, owned */
  size_t res_len;
  unsigned char *res_base;  /* when set, res points into this buffer of */
  size_t res_cap;           /* res_cap bytes, which is what gets freed */
  fp__item_err *errs;       /* failed items, ascending index */
  uint32_t nerr;
  unsigned char *owned_items; /* producer chunks own their items */
  size_t owned_cap;
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
  fp_pool *pool;
  fp__job *jprev, *jnext; /* pool's active jobs */
  int kind;
  uint8_t wire;
  fp__fnref fn;
  size_t in_size, out_size;
  const unsigned char *fixed_in; /* FIXED: caller's arrays (not copied) */
  unsigned char *fixed_out;
  unsigned char *input;         /* values: the copied items */
  size_t input_len;
  fp__chunk **chunks;           /* in input order; NULL once freed */
  size_t nchunks;
  size_t chunks_done;
  size_t chunks_live;           /* allocated and not freed */
  int64_t n_items, items_done;
  size_t chunksize;
  double timeout;               /* per item, seconds; 0 none */
  int on_crash, retries;
  fp__progress *pg;
  int input_done;               /* no more chunks will be added */
  int finished;                 /* outcome delivered */
  int canceled;                 /* failed as a whole (cancel, abort, ...) */
  int err_code;                 /* lowest failing item so far */
  int64_t err_index;
  char *err_msg;
  fp_result *res;               /* result jobs */
  fp_iter *it;                  /* iterator jobs */
};

struct fp_result {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  int refs;          /* user + job */
  _Atomic int ready; /* written under mu; read without it by waiters
                        spinning before they sleep */
  int user_freed;
  int code;
  int64_t err_index;
  char *msg;
  unsigned char *value;
  size_t value_len;
  fp__job *job;      /* while running, guarded by pool->mu */
  fp_pool *pool;
  fp_callback cb, ecb;
  void *arg;
};

struct fp_iter {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  int refs;             /* user + job */
  int ordered;
  fp_pool *pool;        /* NULL once the job finished */
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
  int64_t produced, consumed;
  int finished;             /* the job ended (all chunks delivered) */
  int final_code;           /* job-level failure (terminate, producer) */
  char *final_msg;
  int64_t last_index;
  char msg[FP__MSG_LEN];
  /* producer side (caller's thread) */
  fp_producer_fn producer;
  void *parg;
  int producer_done;
  size_t readahead;
  size_t chunksize;
};

typedef struct fp__conn {
  uv_poll_t poll;        /* must stay first: handle -> conn */
  struct fp__wslot *ws;
  fp_pool *pool;
  int fd;
  pid_t pid;
  int ready;
  int eof;
  int closing;
  int events;            /* current uv_poll events */
  unsigned char *in;     /* read buffer */
  size_t in_len, in_cap;
  unsigned char *out;    /* unsent bytes of the last frame */
  size_t out_len, out_off, out_cap;
} fp__conn;

typedef struct fp__wslot {
  int index;
  fp__conn *conn;        /* current process, NULL when none */
  int spawning;          /* SPAWN sent, no answer yet */
  fp__chunk *inflight[FP__MAX_INFLIGHT];
  int ninflight;
  int nwritten;          /* of inflight, how many were written */
  uint64_t sent;         /* chunks sent to the current process */
  int retiring;
  int kill_reason;       /* FP_ETIMEDOUT / FP_ECANCELED: why we killed it */
  uint64_t kill_seq;     /* the chunk we killed it for */
  int64_t kill_at_ns;    /* when SIGKILL follows SIGTERM, 0: not killing */
  int cpu;               /* pinned CPU or -1 */
  uint64_t tasks, restarts;
  int64_t last_done_ns;
} fp__wslot;

enum { FP__RUN = 0, FP__CLOSE, FP__TERMINATE };

/* A finished result waiting for the pool thread to run its callback. */
struct fp__cbnode {
  fp_result *res;
  struct fp__cbnode *next;
};

struct fp_pool {
  pthread_mutex_t mu;
  pthread_cond_t cond;   /* ready workers, shutdown progress */
  int state;
  int broken;            /* restart storm: FP_ESTORM */
  int nworkers;
  fp_pool_opts opts;     /* resolved */
  int *pin_cpus;         /* copy of opts.pin_cpus */
  int *cpu_of_worker;
  size_t max_frame;
  int inflight;
  pid_t owner_pid;
  unsigned fork_gen;     /* fp__fork_gen when the pool was made */
  /* processes */
  pid_t fs_pid;
  int fs_fd;             /* master end of the control socket */
  fp__slot *slots;       /* shared mapping */
  size_t slots_len;
  fp__shared *shm;       /* result rings (shared mapping) */
  size_t shm_len;
  fp__wslot *ws;
  int nready;            /* workers that reported READY */
  int nalive;            /* worker processes alive or being spawned */
  int64_t *start_fail_ns; /* ring of recent start failures */
  int start_fail_pos;
  /* work */
  fp__job *jobs;         /* active jobs */
  fp__chunk *qhead, *qtail; /* pending chunks */
  size_t npending;
  uint64_t next_seq;
  int64_t ewma_ns;       /* smoothed chunk service time; 0 unknown */
  int rr;                /* round-robin start */
  struct fp__cbnode *cb_head, *cb_tail; /* callbacks to run */
  /* loop */
  uv_loop_t loop;
  uv_async_t wake;
  uv_poll_t fs_poll;
  uv_timer_t tick;
  uv_prepare_t prep;     /* before each poll: master_idle, ring check */
  uv_check_t chk;        /* after each poll: drain the rings */
  uv_idle_t spin;        /* keeps the poll from blocking while rings fill */
  int tick_on;
  pthread_t thread;
  int thread_started;
  int thread_done;
  int stopping;          /* loop asked to shut down */
  int joined;
  int fs_gone;
};

/* ---- pool.c ------------------------------------------------------------ */

/* Bumped in every child forked from this process (pthread_atfork), so a
 * forked copy of the master or a worker can tell that a pool it inherited
 * is not its own without a getpid() system call per submission. */
extern _Atomic unsigned fp__fork_gen;

/* Initialises a mutex that spins briefly before sleeping: the pool's
 * critical sections are short, and a futex sleep/wake pair costs more. */
void fp__mutex_init(pthread_mutex_t *mu);

int64_t fp__now_ns(void);
/* Queues a job's chunks (pool->mu held), then dispatches. */
void fp__enqueue_locked(fp_pool *pool, fp__chunk *ch);
void fp__dispatch_locked(fp_pool *pool);
void fp__wake(fp_pool *pool);
int fp__pool_check_submit(fp_pool *pool);
void fp__job_add_locked(fp_pool *pool, fp__job *job);
/* Fails a whole job now (cancel, abort policy, terminate, storm): its
 * queued chunks are dropped, workers running its chunks are killed. `index`
 * is the item to blame, or -1 for a job-level failure. */
void fp__job_cancel_locked(fp_pool *pool, fp__job *job, int code,
                           int64_t index, const char *msg);
void fp__job_maybe_finish_locked(fp_pool *pool, fp__job *job);
void fp__chunk_free(fp__chunk *ch);
int fp__on_pool_thread(fp_pool *pool);

/* ---- job.c ------------------------------------------------------------- */

/* Delivers a finished job's outcome to its result or iterator. Called on
 * the pool thread (or a terminating thread) with pool->mu held; returns
 * the result whose callback must run once the mutex is released. */
fp_result *fp__job_complete_locked(fp_pool *pool, fp__job *job);
void fp__result_run_callbacks(fp_result *res);
void fp__iter_chunk_done_locked(fp__job *job, fp__chunk *ch);
/* A blocking call's results go to the caller's writer as soon as they are
 * in input order, freeing each chunk's buffer right away (so receive
 * buffers are recycled instead of 200 MiB of results piling up). */
void fp__job_stream_locked(fp__job *job);
void fp__job_free(fp__job *job);
void fp__set_last_error(int code, const char *msg);

/* ---- worker.c / forkserver.c ------------------------------------------- */

/* The fork server's main loop; never returns. */
void fp__forkserver_main(fp_pool *pool, int ctl_fd) __attribute__((noreturn));
/* A worker's main loop; never returns. */
void fp__worker_main(fp_pool *pool, int slot, int fd) __attribute__((noreturn));

/* The registry of library-owned descriptors that fork servers close (see
 * forkserver.c). Register right after opening; unregister before closing,
 * so a reused number is never closed by mistake. */
void fp__fdreg_add(int fd);
void fp__fdreg_del(int fd);

#endif
