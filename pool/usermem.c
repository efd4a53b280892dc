/* SPDX-License-Identifier: MIT */
/* usermem.c - reading and writing the caller's memory without faulting.
 *
 * Reading: a map's items are borrowed from the caller's array until they
 * are sent, and the caller may have unmapped it by mistake. They are
 * copied by the kernel (process_vm_readv on ourselves, which fails with
 * EFAULT instead of raising SIGSEGV); where that is refused (a seccomp
 * filter) or cannot reach the memory (memfd_secret), through a pipe.
 *
 * Writing: a fixed-size map writes its results into the caller's `out` with plain
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
#include "pool/usermem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels say EINVAL */
#endif

/* Set once process_vm_readv was refused: a seccomp filter stays. */
static _Atomic int vm_refused;

int fp__mem_readv_direct(const struct iovec *to, const struct iovec *from,
                         int n) {
  size_t total = 0;
  for (int i = 0; i < n; i++)
    total += from[i].iov_len;
  if (total == 0)
    return 0;
  if (atomic_load_explicit(&vm_refused, memory_order_relaxed))
    return -EPERM;
  ssize_t got = process_vm_readv(getpid(), to, (unsigned long)n, from,
                                 (unsigned long)n, 0);
  if (got == (ssize_t)total)
    return 0;
  if (got < 0 && (errno == ENOSYS || errno == EPERM)) {
    atomic_store_explicit(&vm_refused, 1, memory_order_relaxed);
    return -errno;
  }
  return -EFAULT; /* an error, or short: a range ended in a hole */
}

/* Pieces that fit the pipe (non-blocking: a short write just makes a
 * shorter piece). */
static int pipe_copy(const int fd[2], void *dst, const void *src, size_t n) {
  for (size_t off = 0; off < n;) {
    size_t k = n - off < 65536 ? n - off : 65536;
    ssize_t w = write(fd[1], (const char *)src + off, k);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return w < 0 ? -errno : -EIO;
    for (size_t got = 0; got < (size_t)w;) {
      ssize_t r = read(fd[0], (char *)dst + off + got, (size_t)w - got);
      if (r > 0)
        got += (size_t)r;
      else if (!(r < 0 && errno == EINTR))
        return -EIO; /* the bytes just written are there: not reached */
    }
    off += (size_t)w;
  }
  return 0;
}

int fp__mem_read_piped(void *dst, const void *src, size_t n, const int *fd) {
  int tmp[2], rc;
  if (n == 0)
    return 0;
  if (fd != NULL)
    return pipe_copy(fd, dst, src, n);
  if (pipe2(tmp, O_CLOEXEC | O_NONBLOCK) != 0)
    return -errno;
  rc = pipe_copy(tmp, dst, src, n);
  close(tmp[0]);
  close(tmp[1]);
  return rc;
}

int fp__mem_read(void *dst, const void *src, size_t n) {
  struct iovec to = {dst, n}, from = {(void *)src, n};
  if (fp__mem_readv_direct(&to, &from, 1) == 0)
    return 0;
  return fp__mem_read_piped(dst, src, n, NULL);
}

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
