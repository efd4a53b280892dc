/* error.c - version string and error code descriptions.
 *
 * Every code, its name and its message come from one X-macro table,
 * FP_ERRNO_MAP in include/forkpool.h, so the enum, fp_strerror() and
 * fp_err_name() cannot drift apart (a duplicated value would even fail to
 * compile: two identical case labels). Codes outside the table that are a
 * negated system errno get glibc's description through strerrordesc_np(),
 * which, unlike strerror(), is thread-safe and returns a static string
 * (or NULL for an unknown errno). Every function here returns a static
 * string and never NULL.
 */
#include "forkpool.h"

#include <limits.h>
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
