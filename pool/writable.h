/* SPDX-License-Identifier: MIT */
/* writable.h - whether the master may store into a caller's memory
 * (writable.c). */
#ifndef FP_POOL_WRITABLE_H
#define FP_POOL_WRITABLE_H

#include <stddef.h>

/* Returns 0 when every byte of [p, p + n) is memory this process can
 * write, -EFAULT when some byte is not (unmapped, read-only, PROT_NONE,
 * or a page whose store would raise SIGBUS), or another -errno when the
 * check itself failed (-EMFILE: no descriptor for its pipe). Contents are
 * unchanged. The pages end up faulted in, as the stores that follow would
 * have done. Call it with nobody else writing the range. */
int fp__mem_writable(void *p, size_t n);

#endif
