/* SPDX-License-Identifier: MIT */
/* refuse.c - why a Manager call was refused, in fp_last_error().
 *
 * The Manager's calls return specific codes; a refusal (a bad handle or
 * argument, a full arena) also leaves a message, in the same per-thread
 * slot as the pool's calls (ipc/wire/error.c), saying what was wrong.
 * Only refusals format one: a successful call, or an ordinary outcome such
 * as a missing key, costs nothing here. A leaf of ipc/shm: every other
 * file may refuse, this one calls none of them.
 */
#include "ipc/shm/arena.h"
#include "ipc/wire/error.h"

#include <stdarg.h>
#include <stdio.h>

int fp__shm_refuse(int rc, const char *fmt, ...) {
  char msg[FP__ERRMSG_LEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  fp__set_last_error(rc, msg);
  return rc;
}

int fp__shm_out_refused(int rc, int err_before) {
  if (err_before != 0)
    return fp__shm_refuse(rc,
                          "the output writer is in an error state (%s): "
                          "reset it first",
                          fp_err_name(err_before));
  if (rc == FP_EDEPTH)
    return fp__shm_refuse(rc,
                          "the value does not fit in the output writer: "
                          "its lists would nest more than FP_MAX_DEPTH "
                          "(%d) deep",
                          FP_MAX_DEPTH);
  if (rc == FP_ENOMEM)
    return fp__shm_refuse(rc, "out of memory for the output writer");
  return fp__shm_refuse(rc, "the output writer refused the value (%s)",
                        fp_err_name(rc));
}

int fp__shm_write_out(fp_writer *out, const void *enc, size_t n) {
  int err_before = out->err;
  int rc = fp_write_raw(out, enc, n);
  return rc == 0 ? 0 : fp__shm_out_refused(rc, err_before);
}

int fp__shm_check_new(const fp_manager *m, const void *out) {
  if (m == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL manager");
  if (out == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL out pointer");
  if (m->magic != FP__SHM_MAGIC)
    return fp__shm_refuse(FP_EINVAL, "not a live manager (freed, or not "
                                     "a manager at all)");
  return 0;
}

const char *fp__shm_type_name(int type) {
  static const char *const names[] = {"object",  "dict", "list",
                                      "counter", "lock", "array"};
  return names[type >= FP__SHM_DICT && type <= FP__SHM_ARRAY ? type : 0];
}
