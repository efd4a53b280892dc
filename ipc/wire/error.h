/* SPDX-License-Identifier: MIT */
/* error.h - the library's per-thread error messages (internal header).
 *
 * A failing call returns a code; some also leave a message for the calling
 * thread, read back like dlerror(). ipc/wire/error.c keeps those messages
 * for the whole library, one per source, so a module never owns an error
 * buffer of its own (and needs no other module to report a failure):
 *
 *   FP__ERR_POOL      fp_last_error(): pool calls (pool/job.c, pool/pool.c)
 *   FP__ERR_AFFINITY  fp_affinity_error(): cpu-lists, pinning, pool plans
 *
 * The sources are separate because include/forkpool.h promises each getter
 * describes the last failure of its own kind of call: an affinity call that
 * succeeds clears fp_affinity_error() but must not erase the message of a
 * failed fp_pool_map() made just before it.
 *
 * Every buffer is thread-local and statically sized, so setting a message
 * allocates nothing and is safe first thing in a freshly forked worker.
 * Longer messages are truncated.
 */
#ifndef FP_IPC_ERROR_H
#define FP_IPC_ERROR_H

#include "forkpool.h"

/* Bytes kept per message, NUL included: a task's own message (512 bytes
 * in the pool) plus the pool's "item N: " style prefix. */
#define FP__ERRMSG_LEN (512 + 64)

typedef enum fp__errsrc {
  FP__ERR_POOL,
  FP__ERR_AFFINITY,
  FP__ERR_NSRC
} fp__errsrc;

/* Sets the calling thread's message of source src from a printf format.
 * A src outside the enum is ignored. */
void fp__err_setf(fp__errsrc src, const char *fmt, ...) FP_PRINTF(2, 3);

/* How many messages of source src the calling thread has set so far (it
 * wraps): a caller compares two readings to learn whether a call it made
 * set a message of its own, which a generic one must not overwrite. */
unsigned fp__err_sets(fp__errsrc src);

/* Clears the calling thread's message of source src (it becomes ""). */
void fp__err_clear(fp__errsrc src);

/* Returns the calling thread's message of source src, "" when none (also
 * for a src outside the enum). Never NULL; valid until the thread's next
 * set or clear of that source; do not free. */
const char *fp__err_get(fp__errsrc src);

/* Sets fp_last_error() for the calling thread: msg when it is a non-empty
 * string, otherwise fp_strerror(code). */
void fp__set_last_error(int code, const char *msg);

/* Clears fp_last_error() for the calling thread. */
void fp__clear_last_error(void);

/* A pool call refused before anything starts: sets fp_last_error() to why
 * (so it never shows an earlier call's message) and returns FP_EINVAL. */
static inline int fp__refuse(const char *why) {
  fp__set_last_error(FP_EINVAL, why);
  return FP_EINVAL;
}

#endif /* FP_IPC_ERROR_H */
