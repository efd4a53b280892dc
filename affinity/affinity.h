/* SPDX-License-Identifier: MIT */
/* affinity.h - internal interface of the affinity module for the pool and
 * the tests.
 *
 * The affinity/ folder answers "which CPUs may this process use, and which
 * one runs each worker": cpuset.c (fp_cpuset and the cpu-list syntax),
 * topology.c (usable CPUs, SMT siblings, cgroup quota, default worker
 * count), pin.c (pinning the calling thread) and plan.c (the CPU of each
 * pool worker). It depends only on the public header and on
 * ipc/wire/error.h, where its per-thread message fp_affinity_error() lives.
 *
 * The public half (cpu sets, topology, pinning) is in include/forkpool.h.
 * This header adds what the pool needs to pin its workers - a plan computed
 * once in the master, applied by each worker at start - and the hooks the
 * tests use to load a topology from a fixture directory tree instead of the
 * real /sys and /proc.
 *
 * Pool usage:
 *
 *   int cpu_of[n];
 *   char err[256];
 *   rc = fp__affinity_plan(opts->pin, opts->pin_cpus, opts->pin_ncpus, n,
 *                          cpu_of, err, sizeof err);   // in fp_pool_new
 *   ...
 *   fp__affinity_apply(cpu_of[slot]);   // in worker `slot`, before the
 *                                       // initializer; also on replacement
 */
#ifndef FP_AFFINITY_H
#define FP_AFFINITY_H

#include "forkpool.h"
#include "ipc/wire/error.h"

#include <stddef.h>

/* Computes which CPU each of nworkers workers is pinned to under policy,
 * using the master's current topology (fp_topology_get). Fills
 * cpu_of_worker[0..nworkers-1]; -1 means "not pinned" (FP_PIN_NONE). For
 * FP_PIN_LIST, cpus[0..ncpus-1] are used in order, wrapping; the other
 * policies ignore cpus/ncpus. Returns 0; FP_EINVAL for nworkers < 1, a NULL
 * cpu_of_worker, an unknown policy, FP_PIN_LIST without CPUs, or a listed
 * CPU outside the usable set - then err (if not NULL, errlen bytes) holds a
 * message naming the bad CPU and the usable set ("pin_cpus[2] = 7: CPU 7 not
 * in usable set 0-1"), which is also fp_affinity_error(). FP_ENOMEM or a
 * sched_getaffinity error from the topology. On failure cpu_of_worker is
 * unspecified. */
int fp__affinity_plan(fp_pin_policy policy, const int *cpus, size_t ncpus,
                      int nworkers, int *cpu_of_worker, char *err,
                      size_t errlen);

/* fp__affinity_plan() against a given topology (tests use fixture trees). */
int fp__affinity_plan_topo(const fp_topology *topo, fp_pin_policy policy,
                           const int *cpus, size_t ncpus, int nworkers,
                           int *cpu_of_worker, char *err, size_t errlen);

/* Pins the calling worker to cpu; cpu == -1 is a no-op returning 0. Same
 * results and message as fp_affinity_pin(). Allocates nothing, so it is
 * safe first thing in a freshly forked worker. */
int fp__affinity_apply(int cpu);

/* Loads a topology as fp_topology_get() does, but reads every file under
 * sysroot instead of "/" (sysroot NULL or "" means the real root):
 *   <sysroot>/proc/self/cgroup
 *   <sysroot>/sys/fs/cgroup[/unified]<path>/cpu.max            (v2)
 *   <sysroot>/sys/fs/cgroup/cpu[,cpuacct]<path>/cpu.cfs_quota_us (v1)
 *   <sysroot>/sys/devices/system/cpu/online
 *   <sysroot>/sys/devices/system/cpu/cpuN/topology/{core_id,
 *                                                   physical_package_id}
 * usable, when not NULL, replaces sched_getaffinity's mask (it must not be
 * empty: FP_EINVAL). Returns 0 with a new *out (free with
 * fp_topology_free), or FP_EINVAL/FP_ENOMEM/-errno with *out NULL. */
int fp__topology_load(const char *sysroot, const fp_cpuset *usable,
                      fp_topology **out);

/* Parses the text of a cgroup v2 cpu.max file ("max 100000",
 * "200000 100000", "150000" with the default period 100000) into *cpus:
 * 0.0 for no quota, else quota / period. Returns 0 or FP_EINVAL. */
int fp__cgroup_parse_cpu_max(const char *text, double *cpus);

/* Returns the smallest CPU quota (in CPUs, 0.0 = none) of the process's
 * cgroup and its ancestors under sysroot (NULL = "/"), v2 or v1. Missing or
 * unreadable files count as "no quota". Never fails. */
double fp__cgroup_cpu_quota(const char *sysroot);

/* Reads the calling thread's affinity mask into *out. Returns 0 or -errno.
 * Copes with kernels configured for more than FP_CPU_MAX CPUs (the CPUs
 * beyond FP_CPU_MAX are dropped). */
int fp__affinity_getmask(fp_cpuset *out);

#endif /* FP_AFFINITY_H */
