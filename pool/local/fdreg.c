/* SPDX-License-Identifier: MIT */
/* fdreg.c - the registry of library-owned descriptors, and keeping
 * library descriptors off the standard streams.
 *
 * (The pool/local/ folder is the local link of link.h: the master's side
 * in link_local.c, the fork server, the worker loop, the result rings and
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
 * The registry is a fixed array of atomics, lock-free on purpose: a fork
 * server reads it right after fork(), when a mutex could be held by a
 * thread that no longer exists in the child. A slot holds fd + 1, so the
 * zero-filled array starts empty.
 */
#include "pool/local/local.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <unistd.h>

#define FDREG_MAX 4096
static _Atomic int fdreg[FDREG_MAX]; /* fd + 1, 0 = free */

/* Registers fd. When the registry is full the descriptor is simply not
 * registered: it then stays open in fork servers started later, which
 * costs a descriptor there but breaks nothing in the pool that owns it. */
void fp__fdreg_add(int fd) {
  if (fd < 0)
    return;
  for (int i = 0; i < FDREG_MAX; i++) {
    int expect = 0;
    if (atomic_compare_exchange_strong(&fdreg[i], &expect, fd + 1))
      return;
  }
}

/* Unregisters fd (a no-op when it is not registered). Call it before
 * close(), so that a number reused by another thread's open() is never
 * in the registry under its old owner. */
void fp__fdreg_del(int fd) {
  if (fd < 0)
    return;
  for (int i = 0; i < FDREG_MAX; i++) {
    int expect = fd + 1;
    if (atomic_compare_exchange_strong(&fdreg[i], &expect, 0))
      return;
  }
}

/* Closes every registered descriptor except keep, in a freshly forked
 * fork server. The entries are cleared as they are closed: the numbers
 * mean nothing in this process any more, and a worker that inherits the
 * registry and starts a pool of its own must not close whatever has
 * reused them by then. */
void fp__fdreg_close_all(int keep) {
  for (int i = 0; i < FDREG_MAX; i++) {
    int v = atomic_load(&fdreg[i]);
    if (v == 0 || v - 1 == keep)
      continue;
    close(v - 1);
    atomic_store(&fdreg[i], 0);
  }
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
