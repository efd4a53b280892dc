/* SPDX-License-Identifier: MIT */
/* writable.c - whether the master may store into a caller's memory.
 *
 * A fixed-size map writes its results into the caller's `out` with plain
 * stores; an `out` that is read-only, unmapped or PROT_NONE would kill the
 * master with SIGSEGV. Before the results of a chunk are stored, its range
 * is checked here and a chunk that cannot be stored fails with -EFAULT.
 *
 * The fast check is MADV_POPULATE_WRITE (Linux 5.14): it faults the pages
 * in as a write would, without changing them, and fails where a write
 * would fault - so on writable memory it costs only the page faults the
 * stores would have taken anyway. It also fails (EINVAL) on memory that
 * is writable but that the kernel does not populate for others
 * (memfd_secret, device mappings), and on kernels that do not know it.
 * Then each page is probed through a pipe: write() of one byte of the
 * range reads it as the kernel reads user memory, read() puts the same
 * byte back as the kernel writes user memory; either fails with EFAULT
 * where the program's own load or store would fault.
 */
#include "pool/writable.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels say EINVAL */
#endif

/* Populates [lo, hi) for writing; 0 or -errno. */
static int populate(uintptr_t lo, uintptr_t hi) {
  for (int tries = 0;; tries++) {
    if (madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE) == 0)
      return 0;
    if (!((errno == EINTR || errno == EAGAIN) && tries < 100))
      return -errno;
  }
}

/* Reads the byte at p into the pipe and stores it back from there. */
static int probe_byte(const int fd[2], unsigned char *p) {
  ssize_t k;
  while ((k = write(fd[1], p, 1)) < 0 && errno == EINTR)
    ;
  if (k != 1)
    return k < 0 ? -errno : -EIO;
  while ((k = read(fd[0], p, 1)) < 0 && errno == EINTR)
    ;
  if (k != 1)
    return k < 0 ? -errno : -EIO;
  return 0;
}

/* Probes one byte of [p, p + n) in every page the range touches. */
static int probe_pages(unsigned char *p, size_t n, uintptr_t page) {
  int fd[2], rc = 0;
  if (pipe2(fd, O_CLOEXEC) != 0)
    return -errno;
  for (unsigned char *at = p; rc == 0 && at < p + n;) {
    rc = probe_byte(fd, at);
    uintptr_t next = ((uintptr_t)at & ~(page - 1)) + page;
    at = (unsigned char *)next;
  }
  close(fd[0]); /* with any byte whose store-back failed */
  close(fd[1]);
  return rc;
}

int fp__mem_writable(void *p, size_t n) {
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  if (n == 0)
    return 0;
  uintptr_t lo = (uintptr_t)p & ~(page - 1);
  uintptr_t end = (uintptr_t)p + n;
  if (end < (uintptr_t)p)
    return -EFAULT; /* wraps around the address space */
  uintptr_t hi = (end + page - 1) & ~(page - 1);
  if (populate(lo, hi) == 0)
    return 0;
  return probe_pages(p, n, page);
}
