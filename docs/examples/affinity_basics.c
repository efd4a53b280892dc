/* SPDX-License-Identifier: MIT */
/* affinity_basics.c - the affinity API in one page (docs/affinity.md).
 *
 * Prints the default worker count, the usable CPUs with their cores, pins
 * itself to one CPU and back, and shows the error message of a bad pin.
 * Built and run by `make check`; exits 0 when everything behaved.
 */
#include <forkpool.h>

#include <stdio.h>

int main(void) {
  fp_topology *topo;
  fp_cpuset saved, parsed;
  char list[FP_CPULIST_MAX];

  /* How many workers should a pool have? (processes = 0 does this.) */
  printf("fp_cpu_count() = %d\n", fp_cpu_count());

  /* What may we run on, and which CPUs share a core? */
  if (fp_topology_get(&topo) != 0)
    return 1;
  fp_cpulist_format(&topo->usable, list, sizeof list);
  printf("usable CPUs %s (%d of %d online), %d cores, %d packages, "
         "cgroup quota %.2f CPUs\n",
         list, topo->nusable, topo->online, topo->ncores, topo->npackages,
         topo->quota);
  for (size_t i = 0; i < topo->ncpus; i++)
    printf("  cpu %d: package %d core %d thread %d\n", topo->cpus[i].cpu,
           topo->cpus[i].package_id, topo->cpus[i].core_id,
           topo->cpus[i].smt_index);
  int first = topo->cpus[0].cpu;
  fp_topology_free(topo);

  /* Pin this (single-threaded) process to its first usable CPU, check,
   * and restore the saved mask. */
  if (fp_affinity_get(&saved) != 0 || fp_affinity_pin(first) != 0)
    return 1;
  printf("pinned: now running on CPU %d\n", fp_current_cpu());
  if (fp_current_cpu() != first || fp_affinity_set(&saved) != 0)
    return 1;

  /* A CPU we were never given is refused, with a message saying why. */
  if (fp_affinity_pin(FP_CPU_MAX - 1) == FP_EINVAL)
    printf("pin(%d) refused: %s\n", FP_CPU_MAX - 1, fp_affinity_error());

  /* cpu-list strings, as taskset -c and sysfs write them. */
  if (fp_cpulist_parse("0-3, 8, 10-11\n", &parsed) != 0)
    return 1;
  fp_cpulist_format(&parsed, list, sizeof list);
  printf("parsed \"0-3, 8, 10-11\" -> %d CPUs, formatted \"%s\"\n",
         fp_cpuset_count(&parsed), list);
  if (fp_cpulist_parse("5-3", &parsed) == FP_EINVAL)
    printf("\"5-3\" refused: %s\n", fp_affinity_error());
  return 0;
}
