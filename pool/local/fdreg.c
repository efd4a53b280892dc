/* SPDX-License-Identifier: MIT */
/* fdreg.c - the registry of library-owned descriptors, and keeping
 * library descriptors off the standard streams.
 *
 * (The pool/local/ folder is the local link of link.h: the master's side
 * in link_local.c and the files of llink.h, the fork server, the worker loop, the result rings and
 * this registry; local.h is what those processes share.)
 *
 * The registry lists the master ends of every pool's control socket and
 * worker sockets. A fork server must not keep another pool's descriptors
 * open: its workers would hold them too, and a worker of that other pool
 * would then never see EOF when its master closes its end. So a fork
 * server closes every registered descriptor when it starts
 * (fp__fdreg_close_all).
 *
 * Why not simply close every close-on-exec descriptor? Because libuv's
 * pthread_atfork child handler closes and re-creates its own signal pipe by
 * the numbers it remembers: if we had closed that pipe and a worker socket
 * had taken its number, the handler would close our socket in the worker.
 *
 * A registry that a fork can catch half-updated is worse than none. Two
 * races would make the snapshot a child gets differ from its descriptor
 * table: another thread may have opened a descriptor and not yet
 * registered it (or unregistered one and not yet closed it), and the
 * kernel copies the descriptor table before the memory, so a number
 * registered between the two copies names, in the child, a descriptor
 * the child does not have. A fork server would then close whatever took
 * that number after the fork - its own pidfd, which it then reads as
 * "the master died", and quits before its first worker. So every "open
 * and register" and every "unregister and close" happens under one
 * mutex, and fork() takes that mutex (pthread_atfork) around the copy:
 * a child's registry then names exactly the library descriptors it
 * holds. The sections under the mutex make system calls only (no
 * allocation, no blocking call), so a fork waits for them briefly.
 *
 * A slot holds fd + 1, so the zero-filled array starts empty.
 */
#include "pool/local/local.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#define FDREG_MAX 4096
static int fdreg[FDREG_MAX]; /* fd + 1, 0 = free; under fdreg_mu */
static pthread_mutex_t fdreg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t fdreg_once = PTHREAD_ONCE_INIT;

static void fdreg_prefork(void) {
  pthread_mutex_lock(&fdreg_mu);
}

/* In the parent and in the child alike, the forking thread holds it. */
static void fdreg_postfork(void) {
  pthread_mutex_unlock(&fdreg_mu);
}

static int fdreg_installed; /* 0 or the error of pthread_atfork */

static void fdreg_install(void) {
  fdreg_installed = -pthread_atfork(fdreg_prefork, fdreg_postfork,
                                    fdreg_postfork);
}

int fp__fdreg_init(void) {
  pthread_once(&fdreg_once, fdreg_install);
  return fdreg_installed;
}

void fp__fdreg_lock(void) {
  pthread_mutex_lock(&fdreg_mu);
}

void fp__fdreg_unlock(void) {
  pthread_mutex_unlock(&fdreg_mu);
}

/* Registers fd. When the registry is full the descriptor is simply not
 * registered: it then stays open in fork servers started later, which
 * costs a descriptor there but breaks nothing in the pool that owns it. */
void fp__fdreg_add_locked(int fd) {
  if (fd < 0)
    return;
  for (int i = 0; i < FDREG_MAX; i++)
    if (fdreg[i] == 0) {
      fdreg[i] = fd + 1;
      return;
    }
}

/* Unregisters fd; 0 when it was not registered. */
static int fdreg_del_locked(int fd) {
  for (int i = 0; i < FDREG_MAX; i++)
    if (fdreg[i] == fd + 1) {
      fdreg[i] = 0;
      return 1;
    }
  return 0;
}

void fp__fdreg_close(int fd) {
  if (fd < 0)
    return;
  fp__fdreg_lock();
  fdreg_del_locked(fd);
  close(fd);
  fp__fdreg_unlock();
}

int fp__fdreg_close_if_registered(int fd) {
  if (fd < 0)
    return 0;
  fp__fdreg_lock();
  int ours = fdreg_del_locked(fd);
  if (ours)
    close(fd);
  fp__fdreg_unlock();
  return ours;
}

/* Closes every registered descriptor except keep, in a freshly forked
 * fork server (single-threaded: no lock), and empties the registry: the
 * numbers mean nothing in this process any more (keep included, which
 * the server closes in each worker it forks), and a worker that inherits
 * the registry and starts a pool of its own must not close whatever has
 * reused them by then. Returns how many entries named no open
 * descriptor: 0 unless the registry and the descriptor table disagreed
 * at the fork (the race above). */
int fp__fdreg_close_all(int keep) {
  int stale = 0;
  for (int i = 0; i < FDREG_MAX; i++) {
    int v = fdreg[i];
    fdreg[i] = 0;
    if (v == 0 || v - 1 == keep)
      continue;
    if (close(v - 1) != 0 && errno == EBADF)
      stale++;
  }
  return stale;
}

/* A daemon may run with fds 0-2 closed; the next socket then takes one of
 * those numbers. A worker socket on fd 1 would receive whatever a task
 * prints, as if it were a frame, and libuv asserts when asked to close a
 * descriptor <= 2. F_DUPFD_CLOEXEC gives the lowest free number >= 3.
 * On failure fd is left as it was, still open and still the caller's. */
int fp__fd_above_stdio(int fd) {
  if (fd < 0)
    return -EBADF;
  if (fd > STDERR_FILENO)
    return fd;
  int nfd = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
  if (nfd < 0)
    return -errno;
  close(fd);
  return nfd;
}

/* A pair of descriptors just made under the registry's lock (rc: how
 * making them went): both moved above stdio and registered, so that a
 * fork server another thread forks meanwhile closes them. Returns 0, or
 * -errno with both closed. */
int fp__fdreg_add_pair_locked(int fds[2], int rc) {
  for (int k = 0; rc == 0 && k < 2; k++) {
    int fd = fp__fd_above_stdio(fds[k]);
    if (fd < 0) { /* fds[k] is still open then */
      rc = fd;
      close(fds[0]);
      close(fds[1]);
    }
    fds[k] = fd;
  }
  if (rc == 0) {
    fp__fdreg_add_locked(fds[0]);
    fp__fdreg_add_locked(fds[1]);
  }
  return rc;
}
