/* SPDX-License-Identifier: MIT */
/* usermem.h - reading and writing the caller's memory without faulting
 * (usermem.c): a map's borrowed `in` and its `out`, which the caller may
 * have unmapped or protected by mistake. */
#ifndef FP_POOL_USERMEM_H
#define FP_POOL_USERMEM_H

#include <stddef.h>
#include <sys/uio.h>

/* Copies the bytes of from[0..n) into to[0..n) (the same total on each
 * side) with one process_vm_readv. Returns 0, or -errno: -EFAULT when some
 * byte cannot be read that way, -EPERM (or -ENOSYS) when the call is not
 * allowed here (a seccomp filter): it is then never tried again by this
 * process. Memory the program can read but process_vm_readv refuses
 * (memfd_secret, device mappings) gives -EFAULT: use fp__mem_read_piped. */
int fp__mem_readv_direct(const struct iovec *to, const struct iovec *from,
                         int n);

/* Copies n bytes from src to dst through a pipe: write() reads src as the
 * kernel reads any user memory, and fails with EFAULT, not a crash, where
 * the program's own load would fault. fd is a non-blocking pipe to use,
 * or NULL for a temporary one. Returns 0 or -errno. */
int fp__mem_read_piped(void *dst, const void *src, size_t n, const int *fd);

/* fp__mem_readv_direct of one range, else fp__mem_read_piped through a
 * temporary pipe. Returns 0, or -EFAULT (unreadable) or another -errno. */
int fp__mem_read(void *dst, const void *src, size_t n);

/* Returns 0 when every byte of [p, p + n) is memory this process can
 * write, -EFAULT when some byte is not (unmapped, read-only, PROT_NONE,
 * or a page whose store would raise SIGBUS), or another -errno when the
 * check itself failed (-EMFILE: no descriptor for its pipe). Contents are
 * unchanged. The pages end up faulted in, as the stores that follow would
 * have done. Call it with nobody else writing the range. */
int fp__mem_writable(void *p, size_t n);

#endif
