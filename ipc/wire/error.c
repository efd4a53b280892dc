/* SPDX-License-Identifier: MIT */
/* error.c - error codes, their names and descriptions, and the per-thread
 * error messages of the whole library.
 *
 * Every code, its name and its message come from one X-macro table,
 * FP_ERRNO_MAP in include/forkpool.h, so the enum, fp_strerror() and
 * fp_err_name() cannot drift apart (a duplicated value would even fail to
 * compile: two identical case labels). 0 is not in the table, which lists
 * failures; it is FP_OK, "success". Codes outside the table that are a
 * negated system errno get glibc's description through strerrordesc_np(),
 * which, unlike strerror(), is thread-safe and returns a static string
 * (or NULL for an unknown errno). These functions return a static string
 * and never NULL.
 *
 * The messages behind fp_last_error() and fp_affinity_error() live here
 * too (see error.h for why there is one per source): a thread-local array
 * of fixed-size buffers, so recording a failure never allocates.
 */
#include "ipc/wire/error.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *fp_version(void) {
  return FP_VERSION_STRING;
}

/* Returns glibc's static description of the system errno -code, or NULL
 * when code is not a negated errno known to the C library. */
static const char *sys_desc(int code) {
  if (code >= 0 || code == INT_MIN)
    return NULL;
  return strerrordesc_np(-code);
}

const char *fp_strerror(int code) {
  const char *desc;

  switch (code) {
  case FP_OK:
    return "success";
#define FP__ERR_MSG(name, value, msg)                                          \
  case FP_##name:                                                              \
    return msg;
    FP_ERRNO_MAP(FP__ERR_MSG)
#undef FP__ERR_MSG
  default:
    break;
  }
  desc = sys_desc(code);
  return desc != NULL ? desc : "unknown error";
}

const char *fp_err_name(int code) {
  switch (code) {
  case FP_OK:
    return "FP_OK";
#define FP__ERR_NAME(name, value, msg)                                         \
  case FP_##name:                                                              \
    return "FP_" #name;
    FP_ERRNO_MAP(FP__ERR_NAME)
#undef FP__ERR_NAME
  default:
    break;
  }
  return sys_desc(code) != NULL ? "FP_SYSERR" : "FP_UNKNOWN";
}

/* ---- per-thread messages ------------------------------------------------- */

static __thread char tl_msg[FP__ERR_NSRC][FP__ERRMSG_LEN];
static __thread unsigned tl_sets[FP__ERR_NSRC]; /* messages set so far */

static int src_ok(fp__errsrc src) {
  return (unsigned)src < FP__ERR_NSRC;
}

void fp__err_setf(fp__errsrc src, const char *fmt, ...) {
  va_list ap;

  if (!src_ok(src))
    return;
  va_start(ap, fmt);
  vsnprintf(tl_msg[src], sizeof tl_msg[src], fmt, ap);
  va_end(ap);
  tl_sets[src]++;
}

unsigned fp__err_sets(fp__errsrc src) {
  return src_ok(src) ? tl_sets[src] : 0;
}

void fp__err_clear(fp__errsrc src) {
  if (src_ok(src))
    tl_msg[src][0] = '\0';
}

const char *fp__err_get(fp__errsrc src) {
  return src_ok(src) ? tl_msg[src] : "";
}

void fp__set_last_error(int code, const char *msg) {
  /* Re-setting the current message would be an overlapping copy. */
  if (msg == tl_msg[FP__ERR_POOL]) {
    tl_sets[FP__ERR_POOL]++;
    return;
  }
  fp__err_setf(FP__ERR_POOL, "%s",
               msg != NULL && msg[0] != '\0' ? msg : fp_strerror(code));
}

void fp__clear_last_error(void) {
  fp__err_clear(FP__ERR_POOL);
}

const char *fp_last_error(void) {
  return tl_msg[FP__ERR_POOL];
}

const char *fp_affinity_error(void) {
  return tl_msg[FP__ERR_AFFINITY];
}
