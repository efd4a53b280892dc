/* SPDX-License-Identifier: MIT */
/* ring.c - the per-worker rings (single producer, single consumer): result
 * rings (worker -> master) and task rings (master -> worker), the futex
 * sleep and wake of a worker waiting for tasks, and the CPU budget that
 * bounds spinning.
 *
 * In both rings the producer owns the tail, the consumer the head; both are
 * byte positions that only grow, so tail - head is the space in use.
 * Entries are frames written with the wire's own header (frame.h), each
 * starting aligned (8 bytes in result rings, FP__FRAME_ALIGN in task
 * rings). An entry never wraps: when it does not fit before the end,
 * FP__RING_WRAP is written where its header would be and the entry starts
 * at offset 0. Either side validates what the other wrote (positions,
 * lengths) before it reads a byte at them: the other side may be a broken
 * or hostile process. See local.h for the kick and wake protocols.
 */
#include "pool/local/local.h"
#include "ipc/wire/frame.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ALIGN(n, a) (((n) + (a)-1) & ~(size_t)((a)-1))

/* A ring as the generic code sees it. */
typedef struct rview {
  _Atomic uint64_t *head, *tail;
  unsigned char *data;
  size_t size, align, max;
} rview;

static rview result_view(fp__ring *r) {
  return (rview){&r->head, &r->tail, r->data, FP__RING_SIZE, 8,
                 FP__RING_MAX};
}

static rview task_view(fp__tring *r) {
  return (rview){&r->head, &r->tail, r->data, FP__TRING_SIZE,
                 FP__FRAME_ALIGN, FP__TRING_MAX};
}

/* Writes one frame at *tail (not yet published); parts whose base is NULL
 * are left for the caller to fill, and *payload (when not NULL) gets where
 * the frame's payload starts. Returns 0 or -1 when it does not fit, or
 * when the consumer's head is not a position it could have reached (then
 * nothing is written). */
static int put(rview v, uint64_t *tail, const struct iovec *iov, int n,
               size_t total, unsigned char **payload) {
  uint64_t t = *tail;
  uint64_t h = atomic_load_explicit(v.head, memory_order_acquire);
  size_t need = ALIGN(FP__FRAME_HDR + total, v.align);
  size_t pos = (size_t)(t % v.size);
  size_t waste = pos + need > v.size ? v.size - pos : 0;
  /* An unaligned tail (the result ring's is the worker's to keep, and
   * anything in shared memory may be forged) would put the wrap marker
   * past the end of the data. */
  if (total > v.max || t % v.align != 0 || h > t || t - h > v.size ||
      v.size - (t - h) < waste + need)
    return -1;
  if (waste > 0) { /* aligned positions: waste >= 8, room for a marker */
    uint32_t wrap = FP__RING_WRAP;
    memcpy(v.data + pos, &wrap, 4);
    t += waste;
    pos = 0;
  }
  fp__frame_put_hdr(v.data + pos, total);
  size_t off = pos + FP__FRAME_HDR;
  if (payload != NULL)
    *payload = v.data + off;
  for (int i = 0; i < n; i++) {
    if (iov[i].iov_len > 0 && iov[i].iov_base != NULL)
      memcpy(v.data + off, iov[i].iov_base, iov[i].iov_len);
    off += iov[i].iov_len;
  }
  *tail = t + need;
  return 0;
}

/* Reads the entry at *pos (see fp__ring_next). */
static int next(rview v, uint64_t *pos, const unsigned char **payload,
                size_t *len) {
  uint64_t t = atomic_load_explicit(v.tail, memory_order_acquire);
  for (;;) {
    uint64_t h = *pos;
    if (h == t)
      return 0;
    if (t - h > v.size || h % v.align != 0)
      return -1;
    size_t at = (size_t)(h % v.size);
    uint32_t mark;
    memcpy(&mark, v.data + at, 4);
    if (mark == FP__RING_WRAP) {
      *pos = h + (v.size - at);
      continue;
    }
    size_t plen;
    if (fp_frame_parse(v.data + at, v.size - at, v.max, &plen) != 0 ||
        ALIGN(FP__FRAME_HDR + plen, v.align) > t - h)
      return -1; /* over-long, cut by the end, or past the tail */
    *payload = v.data + at + FP__FRAME_HDR;
    *len = plen;
    *pos = h + ALIGN(FP__FRAME_HDR + plen, v.align);
    return 1;
  }
}

/* ---- result rings -------------------------------------------------------- */

int fp__ring_put(fp__ring *r, const struct iovec *iov, int n, size_t total) {
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  if (put(result_view(r), &t, iov, n, total, NULL) != 0)
    return -1;
  /* seq_cst, not just release: this store and the caller's load of
   * master_idle are the worker's half of the kick protocol. */
  atomic_store_explicit(&r->tail, t, memory_order_seq_cst);
  return 0;
}

int fp__ring_next(fp__ring *r, uint64_t *pos, const unsigned char **payload,
                  size_t *len) {
  return next(result_view(r), pos, payload, len);
}

void fp__ring_release(fp__ring *r, uint64_t pos) {
  atomic_store_explicit(&r->head, pos, memory_order_release);
}

int fp__ring_pending(fp__ring *r) {
  return atomic_load_explicit(&r->tail, memory_order_seq_cst) !=
         atomic_load_explicit(&r->head, memory_order_relaxed);
}

/* ---- task rings ---------------------------------------------------------- */

int fp__tring_put(fp__tring *r, uint64_t *tail, const struct iovec *iov,
                  int n, size_t total, unsigned char **payload) {
  return put(task_view(r), tail, iov, n, total, payload);
}

int fp__tring_publish(fp__tring *r, uint64_t tail) {
  atomic_store_explicit(&r->feeder_cpu, sched_getcpu(), memory_order_relaxed);
  /* seq_cst store then seq_cst load: the master's half of the eventcount
   * (the worker stores sleeping, then loads the tail). */
  atomic_store_explicit(&r->tail, tail, memory_order_seq_cst);
  return atomic_load_explicit(&r->sleeping, memory_order_seq_cst) != 0;
}

static long futex(_Atomic uint32_t *uaddr, int op, uint32_t val,
                  const struct timespec *ts) {
  /* Not FUTEX_PRIVATE_FLAG: the word is shared between processes. */
  return syscall(SYS_futex, (uint32_t *)uaddr, op, val, ts, NULL, 0);
}

void fp__tring_wake(fp__tring *r) {
  atomic_fetch_add_explicit(&r->wake, 1, memory_order_seq_cst);
  futex(&r->wake, FUTEX_WAKE, 1, NULL);
}

int fp__tring_feeder_here(fp__tring *r) {
  int cpu = sched_getcpu();
  return cpu >= 0 &&
         atomic_load_explicit(&r->feeder_cpu, memory_order_relaxed) == cpu;
}

int fp__tring_next(fp__tring *r, uint64_t *pos, const unsigned char **payload,
                   size_t *len) {
  return next(task_view(r), pos, payload, len);
}

void fp__tring_release(fp__tring *r, uint64_t pos) {
  atomic_store_explicit(&r->head, pos, memory_order_release);
}

void fp__tring_sleep(fp__tring *r, uint64_t pos) {
  uint32_t v = atomic_load_explicit(&r->wake, memory_order_seq_cst);
  atomic_store_explicit(&r->sleeping, 1, memory_order_seq_cst);
  if (atomic_load_explicit(&r->tail, memory_order_seq_cst) == pos) {
    struct timespec ts = {0, FP__IDLE_POLL_MS * 1000000L};
    /* EINTR, EAGAIN (woken between the read and the wait) and ETIMEDOUT
     * all send the caller back to look at the ring. */
    futex(&r->wake, FUTEX_WAIT, v, &ts);
  }
  atomic_store_explicit(&r->sleeping, 0, memory_order_relaxed);
}

/* ---- chunks not to run -------------------------------------------------- */

int fp__slot_claim_skip(fp__slot *s, uint64_t seq) {
  for (int i = 0; i < FP__SLOT_SKIPS; i++) {
    uint64_t e = seq;
    if (atomic_load_explicit(&s->skip[i], memory_order_seq_cst) == seq &&
        atomic_compare_exchange_strong(&s->skip[i], &e, 0))
      return 1;
  }
  return 0;
}

void fp__slot_unskip(fp__slot *s, uint64_t seq) {
  /* Called for every RESULT, and almost never with a mark to withdraw: a
   * compare-and-swap, even one that fails, takes the line from the worker
   * that reads these entries before each chunk, so each entry is only
   * read first. A relaxed read suffices: marks are set (fp__slot_skip) and
   * withdrawn here under the pool's lock, and the worker only clears. */
  for (int i = 0; seq != 0 && i < FP__SLOT_SKIPS; i++) {
    uint64_t e = seq;
    if (atomic_load_explicit(&s->skip[i], memory_order_relaxed) == seq)
      atomic_compare_exchange_strong(&s->skip[i], &e, 0);
  }
}

int fp__slot_skip(fp__slot *s, uint64_t seq) {
  for (int i = 0; i < FP__SLOT_SKIPS; i++) {
    uint64_t e = 0;
    if (!atomic_compare_exchange_strong(&s->skip[i], &e, seq))
      continue;
    if (atomic_load_explicit(&s->seq, memory_order_seq_cst) != seq)
      return 0; /* not reached yet: the worker will claim the entry */
    e = seq;
    return atomic_compare_exchange_strong(&s->skip[i], &e, 0);
  }
  return 0;
}

int fp__slot_recall(fp__slot *s, uint64_t seq, uint64_t nth) {
  for (int i = 0; i < FP__SLOT_SKIPS; i++) {
    uint64_t e = 0;
    if (!atomic_compare_exchange_strong(&s->skip[i], &e, seq))
      continue;
    if (atomic_load_explicit(&s->taken, memory_order_seq_cst) < nth)
      return 0; /* not begun: the worker will claim the entry first */
    e = seq;
    /* Begun: withdrawn, it runs; already claimed, it will not. */
    return atomic_compare_exchange_strong(&s->skip[i], &e, 0);
  }
  return 1;
}

/* ---- the CPU budget ------------------------------------------------------ */

void fp__budget_join(fp__local_shm *shm) {
  atomic_fetch_add_explicit(&shm->active, 1, memory_order_relaxed);
}

void fp__budget_leave(fp__local_shm *shm) {
  atomic_fetch_sub_explicit(&shm->active, 1, memory_order_relaxed);
}


void fp__budget_join_slot(fp__local_shm *shm, fp__slot *s) {
  fp__budget_join(shm);
  atomic_store_explicit(&s->counted, 1, memory_order_relaxed);
}

void fp__budget_leave_slot(fp__local_shm *shm, fp__slot *s) {
  atomic_store_explicit(&s->counted, 0, memory_order_relaxed);
  fp__budget_leave(shm);
}

void fp__budget_drop_slot(fp__local_shm *shm, fp__slot *s) {
  if (atomic_exchange(&s->counted, 0))
    fp__budget_leave(shm);
}

/* Runnable threads of the whole machine: the "R/T" field of /proc/loadavg
 * (nr_running, the reader included), or 0 when it cannot be read. */
static int machine_running(void) {
  char buf[128];
  if (fp__proc_read("/proc/loadavg", buf, sizeof(buf)) < 0)
    return 0;
  char *p = buf;
  for (int field = 0; field < 3 && p != NULL; field++)
    if ((p = strchr(p, ' ')) != NULL)
      p++;
  return p != NULL ? atoi(p) : 0;
}

/* How often a spinning process looks at the machine's load: reading it
 * costs a few microseconds, so at most 1% of a spinning CPU. */
#define MACHINE_CHECK_NS 1000000

/* Per process (a worker is single-threaded; in the master only the pool
 * thread and pollers spin here): the machine's runnable count, the smaller
 * of the last two readings, and whether the pool thread was only spinning
 * then (it yields to pollers). One reading is an instant: one that caught
 * a kernel thread or a neighbour's short burst stopped every spinner of
 * the process for a millisecond, and the sleeps and wake-ups that
 * followed made one apply in twenty 10-50 times slower. A machine that is
 * busy stays busy for two readings; spinners then stop within about
 * 2 ms. These describe the machine, not a pool, so every pool of a
 * process shares them. */
static _Atomic int64_t machine_read_at;
static _Atomic int machine_nr;
static _Atomic int machine_nr_last;
static _Atomic int machine_spinner;

/* Runnable threads of the machine as last read (the smaller of the last
 * two readings, MACHINE_CHECK_NS apart); *spinner says whether one of
 * them was this pool's spinning pool thread. */
static int machine_load(fp__local_shm *shm, int *spinner) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  if (now - atomic_load_explicit(&machine_read_at, memory_order_relaxed) >=
      MACHINE_CHECK_NS) {
    atomic_store_explicit(&machine_read_at, now, memory_order_relaxed);
    atomic_store_explicit(
        &machine_spinner,
        atomic_load_explicit(&shm->pool_spinning, memory_order_relaxed),
        memory_order_relaxed);
    int nr = machine_running();
    int prev =
        atomic_exchange_explicit(&machine_nr_last, nr, memory_order_relaxed);
    atomic_store_explicit(&machine_nr, nr < prev ? nr : prev,
                          memory_order_relaxed);
  }
  *spinner = atomic_load_explicit(&machine_spinner, memory_order_relaxed);
  return atomic_load_explicit(&machine_nr, memory_order_relaxed);
}

int fp__budget_ok(fp__local_shm *shm) {
  if (atomic_load_explicit(&shm->active, memory_order_relaxed) > shm->ncpu)
    return 0;
  /* Threads of other programs count too: on a machine that is already
   * busy a spinner would only take CPU time from someone's work. */
  int spinner;
  return machine_load(shm, &spinner) <= shm->ncpu;
}

int fp__budget_ok_poller(fp__local_shm *shm, int extra) {
  int yielding =
      atomic_load_explicit(&shm->pool_spinning, memory_order_relaxed) != 0;
  if (atomic_load_explicit(&shm->active, memory_order_relaxed) + extra -
          yielding >
      shm->ncpu)
    return 0;
  int spinner, nr = machine_load(shm, &spinner);
  return nr - spinner <= shm->ncpu;
}
