/* SPDX-License-Identifier: MIT */
/* lock.c - the manager's internal lock, and how a survivor tells that a
 * lock's holder died.
 *
 * An fp__shm_mutex is one 32-bit word in the arena: 0 when free, else the
 * holder heap's identity (FP__SHM_OWNER: heap index and generation), with
 * FP__SHM_WAITERS set while a waiter may be asleep on it. Taking it is one
 * compare-and-swap; releasing it one exchange, plus a futex wake only when
 * the waiters bit was set. A waiter spins for a few microseconds (holders
 * keep it for well under one), then sleeps on the futex in slices of a few
 * milliseconds.
 *
 * Robustness without the kernel's robust futex list: the word names the
 * holder, so a waiter that has waited can look the holder up. The holder
 * is gone when its heap slot is free or belongs to a later generation (the
 * heap was reclaimed after its thread died), or when its thread is dead:
 * fp__shm_owner_dead() asks procfs whether a thread of that id exists, is
 * not a zombie, and started when the heap's owner did (ids are reused).
 * The waiter that wins the compare-and-swap from the dead holder's word to
 * its own owns the lock and is told so, to repair what the lock protects.
 * A live holder is never taken over: the heap's generation changes only
 * once its owner is dead and reclaimed.
 *
 * Why not a robust pthread mutex: glibc's robust mutexes cost about 70 ns
 * per lock and unlock on the machines we measured (this costs two atomic
 * operations), and the kernel's robust list walks pointers into the arena,
 * which must then never be unmapped while a thread holds such a mutex.
 */
#include "ipc/shm/arena.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Pauses (about 20-40 ns each) of polling before the first look at the
 * holder. */
#define SPIN 20000
#define SLEEP_NS 2000000L /* futex sleep slice: 2 ms */
#define BACKOFF_MAX 256   /* pauses between polls, at most */

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Reads /proc/<tid>/stat. Returns 1 and the state letter and start time,
 * 0 when the thread does not exist, -1 when procfs could not tell. */
static int proc_stat(uint32_t tid, char *state, uint64_t *start) {
  char path[64], buf[1024], *p;
  ssize_t n;
  int fd;

  snprintf(path, sizeof(path), "/proc/%u/stat", tid);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT || errno == ESRCH ? 0 : -1;
  n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0)
    return n == 0 || errno == ESRCH ? 0 : -1;
  buf[n] = '\0';
  /* "tid (comm) S ppid ...": comm may hold spaces and parentheses, so
   * parse from the last ')'. The start time is field 22. */
  if ((p = strrchr(buf, ')')) == NULL || p[1] != ' ')
    return -1;
  *state = p[2];
  p += 3;
  for (int field = 4; field < 22; field++) {
    p = strchr(p, ' ');
    if (p == NULL)
      return -1;
    p++;
  }
  *start = strtoull(p, NULL, 10);
  return 1;
}

/* 1 when procfs answers for this process (it may be missing in a
 * container): only then does "no /proc/<tid>" mean "no such thread". */
static int procfs_ok(void) {
  static _Atomic int ok = -1;
  int v = atomic_load_explicit(&ok, memory_order_relaxed);
  if (v < 0) {
    v = access("/proc/self/stat", R_OK) == 0;
    atomic_store_explicit(&ok, v, memory_order_relaxed);
  }
  return v;
}

int fp__shm_owner_dead(const fp__shm_heap *h, uint64_t s) {
  uint32_t tid = FP__HS_TID(s);
  uint64_t start = 0;
  char state = '?';
  int rc;

  if (tid == 0)
    return 1;
  if (kill((pid_t)tid, 0) != 0 && errno == ESRCH)
    return 1;
  /* Without procfs, an existing id is all we know: a zombie or a reused
   * id counts as alive until it is reaped or exits (docs/manager.md). */
  if (!procfs_ok())
    return 0;
  rc = proc_stat(tid, &state, &start);
  if (rc == 0)
    return 1;
  if (rc < 0)
    return 0; /* cannot tell: assume alive, never take a live lock */
  if (state == 'Z' || state == 'X' || state == 'x')
    return 1;
  /* A start time of 0 means the owner has not recorded its own yet (or a
   * reclaimer holds the heap): the id's existence is all we go by then. */
  uint64_t own = (s & FP__HS_RECLAIM) ? 0 : atomic_load(&h->start);
  return own != 0 && start != own;
}

uint64_t fp__shm_start_time(uint32_t tid) {
  uint64_t start = 0;
  char state;
  return proc_stat(tid, &state, &start) == 1 ? start : 0;
}

/* Looks at the holder named by lock word w. Returns 1 when it is gone
 * (dead, or its heap reclaimed or reused since), else 0. A word naming
 * the caller itself is a dead previous owner of the caller's heap: a
 * thread never takes a lock it holds. While a survivor reclaims a dead
 * thread's heap, the heap's state names the survivor: others keep waiting
 * on the dead thread's locks until the repair is done. */
static int holder_gone(fp_manager *m, uint32_t w, uint32_t me) {
  int i = FP__SHM_OWNER_IDX(w & ~FP__SHM_WAITERS);
  fp__shm_heap *h;
  uint64_t s;

  if ((w & ~FP__SHM_WAITERS) == me)
    return 1;
  if (i < 0 || (uint64_t)i >= m->nheaps)
    return 1; /* no heap ever had this identity */
  h = fp__shm_heap_at(m, i);
  s = atomic_load(&h->state);
  if (FP__HS_TID(s) == 0 || FP__HS_GEN(s) != FP__SHM_OWNER_GEN(w))
    return 1;
  /* A heap being reclaimed by the caller: the caller is repairing what its
   * dead owner left, which includes taking this lock over. */
  if ((s & FP__HS_RECLAIM) && FP__HS_TID(s) == (uint32_t)syscall(SYS_gettid))
    return 1;
  return fp__shm_owner_dead(h, s);
}

static void futex_wait(fp__shm_mutex *mu, uint32_t val, long ns) {
  struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
  /* Shared futex (no FUTEX_PRIVATE_FLAG): waiters are in other processes. */
  syscall(SYS_futex, (uint32_t *)mu, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void futex_wake(fp__shm_mutex *mu) {
  syscall(SYS_futex, (uint32_t *)mu, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* The waiting half of fp__shm_mutex_lock: w is the word last seen. */
static uint32_t lock_slow(fp_manager *m, fp__shm_mutex *mu, uint32_t me,
                          uint32_t w, uint32_t first_poll) {
  uint32_t mine = me; /* becomes me | WAITERS once we have slept */
  uint32_t pauses = first_poll ? first_poll : 1;

  /* Poll with exponential backoff from first_poll pauses, up to SPIN
   * pauses in all. A poll pulls the lock's cache line away from the
   * holder, which may take the lock again for its next call: fewer polls
   * let it run from its own cache (arena.h, FP__SHM_POLL_LATE). */
  for (uint32_t spent = 0; spent < SPIN; spent += pauses) {
    if (w == 0 && atomic_compare_exchange_weak(mu, &w, me))
      return 0;
    for (uint32_t k = 0; k < pauses; k++)
      cpu_relax();
    if (pauses < BACKOFF_MAX)
      pauses *= 2;
    w = atomic_load_explicit(mu, memory_order_relaxed);
  }
  for (;;) {
    if (w == 0) {
      if (atomic_compare_exchange_strong(mu, &w, mine))
        return 0;
      continue;
    }
    if (holder_gone(m, w, me)) {
      uint32_t dead = w;
      if (atomic_compare_exchange_strong(mu, &w, mine | (w & FP__SHM_WAITERS)))
        return dead & ~FP__SHM_WAITERS;
      continue; /* someone else moved first: look again */
    }
    /* Sleep only on a word that says so, so that the holder wakes us. */
    if (!(w & FP__SHM_WAITERS) &&
        !atomic_compare_exchange_strong(mu, &w, w | FP__SHM_WAITERS))
      continue;
    futex_wait(mu, w | FP__SHM_WAITERS, SLEEP_NS);
    mine = me | FP__SHM_WAITERS;
    w = atomic_load(mu);
  }
}

uint32_t fp__shm_mutex_lock(fp_manager *m, fp__shm_mutex *mu, uint32_t me,
                            uint32_t first_poll) {
  uint32_t w = 0;
  if (atomic_compare_exchange_strong(mu, &w, me))
    return 0;
  return lock_slow(m, mu, me, w, first_poll);
}

void fp__shm_mutex_unlock(fp__shm_mutex *mu) {
  if (atomic_exchange(mu, 0) & FP__SHM_WAITERS)
    futex_wake(mu);
}
