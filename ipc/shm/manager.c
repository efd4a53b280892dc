/* SPDX-License-Identifier: MIT */
/* manager.c - a manager's life: fp_manager_new, fp_manager_free and
 * fp_manager_stats_get (the public calls that concern the whole arena).
 *
 * fp_manager_new maps one anonymous shared region, lays it out (arena.c)
 * and draws the manager's random identity, which every ref carries.
 * Fresh anonymous memory is zero, which is a valid empty state for every
 * table in it (free locks, free heap slots, empty lists), so only the
 * layout and the identity are written.
 */
#include "ipc/shm/arena.h"

#include <errno.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* A random, nonzero 64-bit identity for a new manager: the kernel's
 * random bytes, or, should getrandom fail, the clock, the pid and the
 * mapping's address mixed together. */
static uint64_t new_identity(const fp_manager *m) {
  uint64_t id = 0;
  struct timespec ts;

  if (getrandom(&id, sizeof(id), GRND_NONBLOCK) != (ssize_t)sizeof(id)) {
    clock_gettime(CLOCK_MONOTONIC, &ts);
    id = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
         ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)m;
    id *= 0x9e3779b97f4a7c15ULL;
  }
  return id != 0 ? id : 1;
}

int fp_manager_new(fp_manager **out, const fp_manager_opts *opts) {
  uint64_t size = FP__SHM_DEFAULT_SIZE;
  fp_manager *m;
  void *p;

  if (out == NULL)
    return fp__shm_refuse(FP_EINVAL, "NULL out pointer");
  *out = NULL;
  if (opts != NULL && opts->arena_size != 0)
    size = opts->arena_size;
  if (size < FP__SHM_MIN_SIZE || size > FP__SHM_MAX_SIZE)
    return fp__shm_refuse(
        FP_EINVAL, "arena_size %llu is out of range (%llu to %llu)",
        (unsigned long long)size, (unsigned long long)FP__SHM_MIN_SIZE,
        (unsigned long long)FP__SHM_MAX_SIZE);
  size = (size + FP__SHM_PAGE - 1) & ~(FP__SHM_PAGE - 1);
  p = mmap(NULL, size, PROT_READ | PROT_WRITE,
           MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    int rc = errno == ENOMEM ? FP_ENOMEM : -errno;
    return fp__shm_refuse(rc, "mmap of a %llu-byte arena: %s",
                          (unsigned long long)size, strerror(errno));
  }
  m = p;
  if (fp__shm_arena_init(m, size) != 0) {
    munmap(p, size);
    return fp__shm_refuse(FP_EINVAL,
                          "arena_size %llu leaves no room for "
                          "the arena's own tables",
                          (unsigned long long)size);
  }
  m->id = new_identity(m);
  m->magic = FP__SHM_MAGIC;
  fp__shm_mapped_add(m);
  *out = m;
  return 0;
}

void fp_manager_free(fp_manager *m) {
  if (m == NULL || m->magic != FP__SHM_MAGIC)
    return;
  if (fp__shm_walking(m)) {
    fp__shm_refuse(FP_EINVAL, "fp_manager_free from an fp_dict_foreach "
                              "callback on one of its dicts: nothing freed");
    return;
  }
  fp__shm_mapped_remove(m); /* gives this thread's heap back first */
  munmap(m, m->size);
}

int fp_manager_stats_get(fp_manager *m, fp_manager_stats *out) {
  fp__shm_heap *h;

  int rc;
  if ((rc = fp__shm_check_new(m, out)) != 0)
    return rc;
  if ((h = fp__shm_heap_get(m)) == NULL)
    return FP_ENOMEM;
  fp__shm_alock(m, h);
  out->arena_size = m->size;
  out->used = m->used;
  out->free = m->size - m->heap - m->used;
  out->objects = m->nobjects;
  out->repairs = atomic_load(&m->repairs);
  out->footprint = m->carved_high > fp__shm_carved_bytes(m)
                      ? m->carved_high
                      : fp__shm_carved_bytes(m);
  fp__shm_aunlock(m);
  return 0;
}
