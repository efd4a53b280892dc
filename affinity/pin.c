/* SPDX-License-Identifier: MIT */
/* pin.c - pinning the calling thread to CPUs.
 *
 * All calls act on the calling thread through sched_{get,set}affinity(0).
 *
 * The allowed set. After a thread pins itself to one CPU its own mask is
 * that CPU, so validating a second pin against the current mask alone would
 * refuse to move a pinned worker anywhere else. We therefore also remember
 * the mask the process had when the library was loaded: a constructor reads
 * it before main() runs (before any pool or user code could pin), and a
 * forked worker inherits the variable with the rest of memory. A CPU is
 * allowed when it is in that start mask or in the current mask. The kernel
 * checks again (cgroup cpuset, offline CPUs) and its EINVAL becomes ours,
 * with the same kind of message.
 *
 * The error text is fp_affinity_error(), kept with the library's other
 * per-thread messages in ipc/wire/error.c (source FP__ERR_AFFINITY). In the
 * style of dlerror(), every affinity call clears it on entry and a failure
 * fills it, so it always describes the calling thread's last affinity call.
 */
#include "affinity/affinity.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

/* The process's mask at library load; start_ok is 0 when it could not be
 * read (then only the current mask counts). Written once by the constructor
 * before main(), read-only afterwards, so no locking is needed. */
static fp_cpuset start_mask;
static int start_ok;

__attribute__((constructor)) static void capture_start_mask(void) {
  start_ok = fp__affinity_getmask(&start_mask) == 0;
}

/* Our bitset and glibc's cpu_set_t cover the same 1024 CPUs, so a plain
 * cpu_set_t on the stack holds any fp_cpuset: the common paths allocate
 * nothing, which keeps them safe in a freshly forked worker. */
_Static_assert(FP_CPU_MAX <= CPU_SETSIZE, "fp_cpuset must fit a cpu_set_t");

/* Copies the first FP_CPU_MAX CPUs of a kernel mask of size bytes. */
static void from_kernel(const cpu_set_t *k, size_t size, fp_cpuset *out) {
  fp_cpuset_zero(out);
  for (int c = 0; c < FP_CPU_MAX; c++)
    if (CPU_ISSET_S((size_t)c, size, k))
      fp_cpuset_set(out, c);
}

/* sched_getaffinity fails with EINVAL when the buffer is smaller than the
 * kernel's cpumask (kernels built for more CPUs than glibc's 1024). Then
 * grow a heap buffer until it fits. CPUs at or beyond FP_CPU_MAX are
 * dropped: we cannot name them. */
int fp__affinity_getmask(fp_cpuset *out) {
  cpu_set_t k;
  if (sched_getaffinity(0, sizeof k, &k) == 0) {
    from_kernel(&k, sizeof k, out);
    return 0;
  }
  if (errno != EINVAL)
    return -errno;
  for (int ncpu = 2 * CPU_SETSIZE; ncpu <= (1 << 16); ncpu *= 2) {
    size_t size = CPU_ALLOC_SIZE(ncpu);
    cpu_set_t *big = CPU_ALLOC(ncpu);
    if (big == NULL)
      return FP_ENOMEM;
    if (sched_getaffinity(0, size, big) == 0) {
      from_kernel(big, size, out);
      CPU_FREE(big);
      return 0;
    }
    int err = errno;
    CPU_FREE(big);
    if (err != EINVAL)
      return -err;
  }
  return FP_EINVAL;
}

/* Computes the allowed set (start mask | current mask) into *out. Returns 0
 * or the error of reading the current mask. */
static int allowed_set(fp_cpuset *out) {
  int rc = fp__affinity_getmask(out);
  if (rc != 0)
    return rc;
  if (start_ok)
    for (size_t i = 0; i < FP_CPU_MAX / 64; i++)
      out->bits[i] |= start_mask.bits[i];
  return 0;
}

/* Cuts a formatted CPU list longer than LIST_SHOWN bytes after its last
 * whole entry that fits and marks the cut with ",...": two lists of up to
 * FP_CPULIST_MAX bytes would not fit in one message, and the end of a
 * message (which list was the allowed one) must not be what is lost. */
#define LIST_SHOWN 200
static void shorten_list(char *list) {
  if (strlen(list) <= LIST_SHOWN)
    return;
  char *cut = list + LIST_SHOWN;
  while (cut > list && *cut != ',')
    cut--;
  strcpy(cut, ",...");
}

/* Applies *set to the calling thread after validating it against the
 * allowed set. Returns 0, FP_EINVAL (empty set, a CPU not allowed, or the
 * kernel refused) or another -errno; the thread's affinity error says why.
 * A mask shorter than the kernel's is fine for sched_setaffinity: the
 * missing CPUs count as not set. */
static int set_mask(const fp_cpuset *set) {
  fp_cpuset allowed, bad;
  char a[FP_CPULIST_MAX], b[FP_CPULIST_MAX];
  cpu_set_t k;
  int rc;

  if (fp_cpuset_count(set) == 0) {
    fp__err_setf(FP__ERR_AFFINITY, "empty CPU set");
    return FP_EINVAL;
  }
  if ((rc = allowed_set(&allowed)) != 0) {
    fp__err_setf(FP__ERR_AFFINITY, "sched_getaffinity: %s", strerror(-rc));
    return rc;
  }
  for (size_t i = 0; i < FP_CPU_MAX / 64; i++)
    bad.bits[i] = set->bits[i] & ~allowed.bits[i];
  if (fp_cpuset_count(&bad) > 0) {
    fp_cpulist_format(&allowed, a, sizeof a);
    fp_cpulist_format(&bad, b, sizeof b);
    shorten_list(a);
    shorten_list(b);
    fp__err_setf(FP__ERR_AFFINITY, "CPU%s %s not in allowed set %s",
                 fp_cpuset_count(&bad) > 1 ? "s" : "", b, a);
    return FP_EINVAL;
  }

  CPU_ZERO(&k);
  for (int c = 0; c < FP_CPU_MAX; c++)
    if (fp_cpuset_isset(set, c))
      CPU_SET(c, &k);
  if (sched_setaffinity(0, sizeof k, &k) == 0)
    return 0;
  rc = -errno;
  fp_cpulist_format(set, b, sizeof b);
  fp_cpulist_format(&allowed, a, sizeof a);
  /* The kernel's own limits (a cpuset cgroup) may be narrower than the
   * allowed set, which only remembers the masks this process had. */
  fp__err_setf(FP__ERR_AFFINITY,
               "sched_setaffinity(%s): %s (the kernel refused it: a cpuset "
               "cgroup may allow fewer CPUs than this process's masks, %s)",
               b, strerror(-rc), a);
  return rc;
}

int fp_affinity_pin(int cpu) {
  fp_cpuset set;
  fp_cpuset allowed;
  char a[FP_CPULIST_MAX];

  fp__err_clear(FP__ERR_AFFINITY);
  if (cpu < 0 || cpu >= FP_CPU_MAX) {
    if (allowed_set(&allowed) == 0)
      fp_cpulist_format(&allowed, a, sizeof a);
    else
      snprintf(a, sizeof a, "unknown");
    fp__err_setf(FP__ERR_AFFINITY, "CPU %d not in allowed set %s", cpu, a);
    return FP_EINVAL;
  }
  fp_cpuset_zero(&set);
  fp_cpuset_set(&set, cpu);
  return set_mask(&set);
}

int fp_affinity_get(fp_cpuset *out) {
  int rc;
  fp__err_clear(FP__ERR_AFFINITY);
  if (out == NULL) {
    fp__err_setf(FP__ERR_AFFINITY, "fp_affinity_get: NULL argument");
    return FP_EINVAL;
  }
  rc = fp__affinity_getmask(out);
  if (rc != 0)
    fp__err_setf(FP__ERR_AFFINITY, "sched_getaffinity: %s", strerror(-rc));
  return rc;
}

int fp_affinity_set(const fp_cpuset *set) {
  fp__err_clear(FP__ERR_AFFINITY);
  if (set == NULL) {
    fp__err_setf(FP__ERR_AFFINITY, "fp_affinity_set: NULL argument");
    return FP_EINVAL;
  }
  return set_mask(set);
}

int fp_current_cpu(void) {
  int cpu = sched_getcpu();
  return cpu >= 0 ? cpu : -errno;
}

int fp__affinity_apply(int cpu) {
  if (cpu == -1) {
    fp__err_clear(FP__ERR_AFFINITY);
    return 0;
  }
  return fp_affinity_pin(cpu);
}
