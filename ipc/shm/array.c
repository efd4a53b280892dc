/* SPDX-License-Identifier: MIT */
/* array.c - the manager's raw shared arrays.
 *
 * An array is one arena object: the 64-byte object header, a 64-byte
 * descriptor (its size), then the zero-filled bytes, 64-byte aligned so
 * that tasks writing neighbouring slices do not share a cache line at the
 * start. Creation and destruction are single allocator steps, so they are
 * crash-safe like every object; the bytes themselves are the user's: the
 * library never locks or repairs them.
 */
#include "ipc/shm/arena.h"

#define ARRAY_HDR 128

struct fp_array {
  fp__shm_obj hdr;
  uint64_t size;
  uint64_t reserved[7];
  unsigned char data[];
};

_Static_assert(sizeof(struct fp_array) == ARRAY_HDR, "array header size");

/* Sets the size inside the allocator's step (obj.c): a process killed
 * around the step leaves no array or a whole one, never one of size 0. */
static int init_array(void *obj, void *arg) {
  ((fp_array *)obj)->size = *(const uint64_t *)arg;
  return 0;
}

int fp_array_new(fp_manager *m, size_t size, fp_array **out) {
  uint64_t want = size;
  void *o;
  int rc;

  if (out != NULL)
    *out = NULL;
  if ((rc = fp__shm_check_new(m, out)) != 0)
    return rc;
  if (size > FP__SHM_MAX_SIZE)
    return fp__shm_refuse(
        FP_EMSGSIZE, "an array of %zu bytes: more than any arena holds", size);
  /* fp__shm_obj_new zero-fills the whole chunk. */
  rc = fp__shm_obj_new(m, FP__SHM_ARRAY, ARRAY_HDR + (uint64_t)size,
                       init_array, &want, &o);
  if (rc != 0)
    return rc;
  *out = o;
  return 0;
}

int fp_array_destroy(fp_array *a) {
  return fp__shm_obj_destroy(a, FP__SHM_ARRAY);
}

void *fp_array_data(fp_array *a) {
  return fp__shm_obj_check(a, FP__SHM_ARRAY) == 0 ? a->data : NULL;
}

size_t fp_array_size(const fp_array *a) {
  return fp__shm_obj_check(a, FP__SHM_ARRAY) == 0 ? (size_t)a->size : 0;
}

uint64_t fp_array_ref(const fp_array *a) {
  if (fp__shm_obj_check(a, FP__SHM_ARRAY) != 0)
    return 0;
  return fp__shm_obj_ref(&a->hdr);
}

int fp_array_from_ref(fp_manager *m, uint64_t ref, fp_array **out) {
  int err;
  if (out == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL out pointer");
  *out = fp__shm_obj_from_ref(m, ref, FP__SHM_ARRAY, &err);
  return err;
}
