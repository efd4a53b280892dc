/* SPDX-License-Identifier: MIT */
/* plan.c - which CPU each pool worker is pinned to.
 *
 * The master computes the plan once, in fp_pool_new, from its topology
 * snapshot; worker slot i then calls fp__affinity_apply(plan[i]) when it
 * starts, and so does any replacement for slot i, which therefore lands on
 * the same CPU. Computing it up front means a bad FP_PIN_LIST fails
 * fp_pool_new with a message instead of killing workers one by one.
 *
 * Orders (n usable CPUs, worker i gets order[i % n]):
 *   compact: usable CPUs ascending.
 *   scatter: the first usable thread of every (package, core) pair in CPU
 *            order, then every second thread, and so on (smt_index 0, 1,
 *            ...), so workers fill physical cores before sharing one.
 *            Without sysfs topology every CPU is its own core and scatter
 *            equals compact.
 *   list:    the caller's CPUs in the caller's order, each checked against
 *            the usable set.
 */
#include "affinity/affinity.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* Formats a message into err (when given) and the thread's affinity error,
 * returns FP_EINVAL. */
FP_PRINTF(3, 4)
static int plan_error(char *err, size_t errlen, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (err != NULL && errlen > 0)
    snprintf(err, errlen, "%s", msg);
  fp__err_setf(FP__ERR_AFFINITY, "%s", msg);
  return FP_EINVAL;
}

int fp__affinity_plan_topo(const fp_topology *topo, fp_pin_policy policy,
                           const int *cpus, size_t ncpus, int nworkers,
                           int *cpu_of_worker, char *err, size_t errlen) {
  size_t n;

  fp__err_clear(FP__ERR_AFFINITY);
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (topo == NULL || cpu_of_worker == NULL || nworkers < 1)
    return plan_error(err, errlen,
                      "affinity plan: bad arguments "
                      "(nworkers %d)",
                      nworkers);
  n = topo->ncpus;
  switch (policy) {
  case FP_PIN_NONE:
    for (int i = 0; i < nworkers; i++)
      cpu_of_worker[i] = -1;
    return 0;

  case FP_PIN_COMPACT:
    for (int i = 0; i < nworkers; i++)
      cpu_of_worker[i] = topo->cpus[(size_t)i % n].cpu;
    return 0;

  case FP_PIN_SCATTER: {
    int *order = malloc(n * sizeof *order);
    size_t k = 0;
    if (order == NULL)
      return FP_ENOMEM;
    /* Each pass takes the CPUs of one SMT level; levels are dense (a CPU
     * of level L+1 implies one of level L on its core), so stop at the
     * first empty level. */
    for (int level = 0; k < n; level++) {
      size_t before = k;
      for (size_t j = 0; j < n; j++)
        if (topo->cpus[j].smt_index == level)
          order[k++] = topo->cpus[j].cpu;
      if (k == before)
        break;
    }
    /* k == n always holds; the guard keeps a broken topology harmless. */
    for (int i = 0; i < nworkers; i++)
      cpu_of_worker[i] = k ? order[(size_t)i % k] : -1;
    free(order);
    return 0;
  }

  case FP_PIN_LIST:
    if (cpus == NULL || ncpus == 0)
      return plan_error(err, errlen,
                        "FP_PIN_LIST needs pin_cpus and "
                        "pin_ncpus > 0");
    for (size_t j = 0; j < ncpus; j++) {
      if (!fp_cpuset_isset(&topo->usable, cpus[j])) {
        char set[FP_CPULIST_MAX];
        fp_cpulist_format(&topo->usable, set, sizeof set);
        return plan_error(err, errlen,
                          "pin_cpus[%zu] = %d: CPU %d not in usable set %s", j,
                          cpus[j], cpus[j], set);
      }
    }
    for (int i = 0; i < nworkers; i++)
      cpu_of_worker[i] = cpus[(size_t)i % ncpus];
    return 0;
  }
  return plan_error(err, errlen, "unknown pin policy %d", (int)policy);
}

int fp__affinity_plan(fp_pin_policy policy, const int *cpus, size_t ncpus,
                      int nworkers, int *cpu_of_worker, char *err,
                      size_t errlen) {
  fp_topology *topo = NULL;
  int rc;

  /* FP_PIN_NONE needs no topology: skip the sysfs reads. */
  if (policy == FP_PIN_NONE && cpu_of_worker != NULL && nworkers >= 1) {
    fp__err_clear(FP__ERR_AFFINITY);
    if (err != NULL && errlen > 0)
      err[0] = '\0';
    for (int i = 0; i < nworkers; i++)
      cpu_of_worker[i] = -1;
    return 0;
  }
  rc = fp_topology_get(&topo);
  if (rc != 0) {
    if (err != NULL && errlen > 0)
      snprintf(err, errlen,
               "affinity plan: reading the topology failed "
               "(%d)",
               rc);
    return rc;
  }
  rc = fp__affinity_plan_topo(topo, policy, cpus, ncpus, nworkers,
                              cpu_of_worker, err, errlen);
  fp_topology_free(topo);
  return rc;
}
