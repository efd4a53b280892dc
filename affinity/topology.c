/* SPDX-License-Identifier: MIT */
/* topology.c - what CPUs the process may use, what they are, and the
 * default worker count.
 *
 * Three sources, each optional except the first:
 *
 *   1. sched_getaffinity: the usable CPUs. It already reflects cgroup
 *      cpusets, taskset and numactl, so it is the primary answer, as in
 *      Python's os.process_cpu_count().
 *   2. The cgroup CPU quota, which limits CPU time rather than CPUs: a
 *      container given "--cpus=2" on a 64-CPU host still sees 64 usable
 *      CPUs, yet 64 busy workers would be throttled to 2 CPUs' worth of
 *      time. /proc/self/cgroup names the process's cgroup; we read cpu.max
 *      (v2, "<quota|max> <period>") or cpu.cfs_quota_us/cpu.cfs_period_us
 *      (v1, quota -1 = none) in that cgroup and in every ancestor up to the
 *      root, because a parent's limit binds its children too, and keep the
 *      smallest. The mounts are looked for at the conventional places
 *      (/sys/fs/cgroup, /sys/fs/cgroup/unified for hybrid hosts,
 *      /sys/fs/cgroup/cpu[,cpuacct] for v1); under a cgroup namespace the
 *      process's path is "/" and the namespace root's files hold the limit.
 *   3. /sys/devices/system/cpu/cpuN/topology/{core_id,physical_package_id}:
 *      which usable CPUs are SMT siblings of one core. If any of these files
 *      is missing, all CPUs are treated as separate cores, never a mix of
 *      real and guessed ids (a guessed id could collide with a real one).
 *
 * Every file is read below a "sysroot" prefix so the tests can point the
 * parser at fixture trees; the public calls use the real root.
 */
#include "affinity/affinity.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_PERIOD 100000.0

/* Reads at most len - 1 bytes of sysroot/path into buf, NUL-terminated.
 * Returns 0 or -errno (-ENAMETOOLONG when the joined path is too long). */
static int read_text(const char *sysroot, const char *path, char *buf,
                     size_t len) {
  char full[PATH_MAX];
  size_t got = 0;
  int n = snprintf(full, sizeof full, "%s%s", sysroot ? sysroot : "", path);
  if (n < 0 || (size_t)n >= sizeof full)
    return -ENAMETOOLONG;
  int fd = open(full, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  while (got + 1 < len) {
    ssize_t r = read(fd, buf + got, len - 1 - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      int err = errno;
      close(fd);
      return -err;
    }
    if (r == 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  buf[got] = '\0';
  return 0;
}

/* Parses one whole decimal integer (blanks around it allowed) from text.
 * Returns 0 or FP_EINVAL. */
static int parse_long(const char *text, long long *out) {
  char *end;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (end == text || errno != 0)
    return FP_EINVAL;
  while (*end == ' ' || *end == '\n' || *end == '\t')
    end++;
  if (*end != '\0')
    return FP_EINVAL;
  *out = v;
  return 0;
}

/* Reads a file holding one integer. Returns 0, -errno or FP_EINVAL. */
static int read_int(const char *sysroot, const char *path, long long *out) {
  char buf[64];
  int rc = read_text(sysroot, path, buf, sizeof buf);
  return rc != 0 ? rc : parse_long(buf, out);
}

int fp__cgroup_parse_cpu_max(const char *text, double *cpus) {
  char quota[32];
  double period = DEFAULT_PERIOD;
  long long q, p;
  int n;

  if (text == NULL || cpus == NULL)
    return FP_EINVAL;
  /* "%31s" stops at blanks; the period is optional (the kernel always
   * writes it, but a hand-written fixture or an old kernel may not). */
  char rest[32] = "";
  n = sscanf(text, " %31s %31s", quota, rest);
  if (n < 1)
    return FP_EINVAL;
  if (n == 2) {
    if (parse_long(rest, &p) != 0 || p <= 0)
      return FP_EINVAL;
    period = (double)p;
  }
  /* Nothing may follow the period. */
  const char *tail = text;
  for (int field = 0; field < n; field++) {
    while (*tail == ' ' || *tail == '\t' || *tail == '\n')
      tail++;
    while (*tail != '\0' && *tail != ' ' && *tail != '\t' && *tail != '\n')
      tail++;
  }
  while (*tail == ' ' || *tail == '\t' || *tail == '\n')
    tail++;
  if (*tail != '\0')
    return FP_EINVAL;

  if (strcmp(quota, "max") == 0) {
    *cpus = 0.0;
    return 0;
  }
  if (parse_long(quota, &q) != 0 || q <= 0)
    return FP_EINVAL;
  *cpus = (double)q / period;
  return 0;
}

/* Reads the v1 pair cpu.cfs_quota_us / cpu.cfs_period_us in dir (below
 * sysroot). Returns the quota in CPUs, or 0.0 for none or unreadable. */
static double v1_quota(const char *sysroot, const char *dir) {
  char path[PATH_MAX];
  long long q, p;
  snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir);
  if (read_int(sysroot, path, &q) != 0 || q <= 0)
    return 0.0;
  snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir);
  if (read_int(sysroot, path, &p) != 0 || p <= 0)
    return 0.0;
  return (double)q / (double)p;
}

/* Reads v2 cpu.max in dir (below sysroot): quota in CPUs or 0.0. */
static double v2_quota(const char *sysroot, const char *dir) {
  char path[PATH_MAX], buf[128];
  double cpus;
  snprintf(path, sizeof path, "%s/cpu.max", dir);
  if (read_text(sysroot, path, buf, sizeof buf) != 0)
    return 0.0;
  if (fp__cgroup_parse_cpu_max(buf, &cpus) != 0)
    return 0.0;
  return cpus;
}

/* Keeps the smaller positive quota (0.0 means none). */
static double min_quota(double a, double b) {
  if (a <= 0.0)
    return b;
  if (b <= 0.0)
    return a;
  return a < b ? a : b;
}

/* Walks cgroup path cg from itself up to "/" below mount base, reading the
 * quota of each level with fn; returns the smallest (0.0 = none). */
static double walk_quota(const char *sysroot, const char *base, const char *cg,
                         double (*fn)(const char *, const char *)) {
  char cur[PATH_MAX], dir[PATH_MAX];
  double best = 0.0;
  int n;

  /* A path with ".." means the cgroup lies outside our cgroup namespace;
   * only the namespace root is reachable then. */
  if (cg[0] != '/' || strstr(cg, "/..") != NULL)
    cg = "/";
  n = snprintf(cur, sizeof cur, "%s", cg);
  if (n < 0 || (size_t)n >= sizeof cur)
    return 0.0;
  for (;;) {
    size_t l = strlen(cur);
    while (l > 1 && cur[l - 1] == '/')
      cur[--l] = '\0';
    n = snprintf(dir, sizeof dir, "%s%s", base, strcmp(cur, "/") ? cur : "");
    if (n > 0 && (size_t)n < sizeof dir)
      best = min_quota(best, fn(sysroot, dir));
    if (strcmp(cur, "/") == 0)
      break;
    char *slash = strrchr(cur, '/');
    if (slash == cur)
      cur[1] = '\0';
    else
      *slash = '\0';
  }
  return best;
}

/* Returns 1 when the comma-separated controller list has "cpu". */
static int has_cpu_controller(const char *list, size_t len) {
  const char *p = list, *end = list + len;
  while (p < end) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    size_t l = comma ? (size_t)(comma - p) : (size_t)(end - p);
    if (l == 3 && memcmp(p, "cpu", 3) == 0)
      return 1;
    p += l + 1;
  }
  return 0;
}

double fp__cgroup_cpu_quota(const char *sysroot) {
  static const char *const v2_bases[] = {"/sys/fs/cgroup",
                                         "/sys/fs/cgroup/unified"};
  static const char *const v1_bases[] = {"/sys/fs/cgroup/cpu",
                                         "/sys/fs/cgroup/cpu,cpuacct",
                                         "/sys/fs/cgroup/cpuacct,cpu"};
  char text[8192];
  double best = 0.0;

  if (read_text(sysroot, "/proc/self/cgroup", text, sizeof text) != 0)
    return 0.0;
  /* Lines are "hierarchy-id:controllers:path". */
  for (char *line = text; *line != '\0';) {
    char *nl = strchr(line, '\n');
    if (nl != NULL)
      *nl = '\0';
    char *c1 = strchr(line, ':');
    char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (c2 != NULL) {
      const char *cg = c2 + 1;
      if (strncmp(line, "0:", 2) == 0 && c2 == c1 + 1) {
        for (size_t i = 0; i < sizeof v2_bases / sizeof *v2_bases; i++)
          best =
              min_quota(best, walk_quota(sysroot, v2_bases[i], cg, v2_quota));
      } else if (has_cpu_controller(c1 + 1, (size_t)(c2 - c1 - 1))) {
        for (size_t i = 0; i < sizeof v1_bases / sizeof *v1_bases; i++)
          best =
              min_quota(best, walk_quota(sysroot, v1_bases[i], cg, v1_quota));
      }
    }
    if (nl == NULL)
      break;
    line = nl + 1;
  }
  return best;
}

/* Rounds a quota up to whole CPUs; 0 stays 0 (no quota). The epsilon keeps
 * 2.0000000001 (from a division) at 2. */
static int quota_to_cpus(double q) {
  if (q <= 0.0)
    return 0;
  double c = ceil(q - 1e-9);
  if (c < 1.0)
    return 1;
  if (c > (double)FP_CPU_MAX)
    return FP_CPU_MAX;
  return (int)c;
}

/* min(nusable, quota), at least 1. */
static int effective_count(int nusable, int quota_cpus) {
  int n = nusable;
  if (quota_cpus > 0 && quota_cpus < n)
    n = quota_cpus;
  return n < 1 ? 1 : n;
}

int fp_cpu_count(void) {
  fp_cpuset set;
  int n = 0;
  if (fp__affinity_getmask(&set) == 0)
    n = fp_cpuset_count(&set);
  if (n < 1) {
    long on = sysconf(_SC_NPROCESSORS_ONLN);
    n = on > 0 ? (int)on : 1;
  }
  return effective_count(n, quota_to_cpus(fp__cgroup_cpu_quota(NULL)));
}

/* Fills core/package ids of the usable CPUs from sysfs, or guesses them
 * all (see the file comment). Sets has_smt_info. */
static void load_ids(const char *sysroot, fp_topology *t) {
  char path[128];
  long long core, pkg;
  int all = 1;

  for (size_t i = 0; i < t->ncpus; i++) {
    int cpu = t->cpus[i].cpu;
    snprintf(path, sizeof path,
             "/sys/devices/system/cpu/cpu%d/topology/"
             "core_id",
             cpu);
    if (read_int(sysroot, path, &core) != 0) {
      all = 0;
      break;
    }
    snprintf(path, sizeof path,
             "/sys/devices/system/cpu/cpu%d/topology/"
             "physical_package_id",
             cpu);
    if (read_int(sysroot, path, &pkg) != 0) {
      all = 0;
      break;
    }
    t->cpus[i].core_id = (int)core;
    t->cpus[i].package_id = (int)pkg;
  }
  t->has_smt_info = all;
  if (!all)
    for (size_t i = 0; i < t->ncpus; i++) {
      t->cpus[i].core_id = t->cpus[i].cpu;
      t->cpus[i].package_id = 0;
    }
}

/* Derives smt_index, ncores and npackages from the ids. Quadratic in the
 * number of usable CPUs, which is at most FP_CPU_MAX and done once. */
static void derive_counts(fp_topology *t) {
  t->ncores = 0;
  t->npackages = 0;
  for (size_t i = 0; i < t->ncpus; i++) {
    fp_cpu_info *c = &t->cpus[i];
    int sib = 0, pkg_seen = 0;
    for (size_t j = 0; j < i; j++) {
      if (t->cpus[j].package_id == c->package_id) {
        pkg_seen = 1;
        if (t->cpus[j].core_id == c->core_id)
          sib++;
      }
    }
    c->smt_index = sib;
    if (sib == 0)
      t->ncores++;
    if (!pkg_seen)
      t->npackages++;
  }
}

int fp__topology_load(const char *sysroot, const fp_cpuset *usable,
                      fp_topology **out) {
  fp_topology *t;
  char buf[FP_CPULIST_MAX];
  fp_cpuset online;
  int rc;

  if (out == NULL)
    return FP_EINVAL;
  *out = NULL;
  if (sysroot != NULL && sysroot[0] == '\0')
    sysroot = NULL;
  t = calloc(1, sizeof *t);
  if (t == NULL)
    return FP_ENOMEM;
  if (usable != NULL) {
    t->usable = *usable;
  } else if ((rc = fp__affinity_getmask(&t->usable)) != 0) {
    free(t);
    return rc;
  }
  t->nusable = fp_cpuset_count(&t->usable);
  if (t->nusable == 0) {
    free(t);
    return FP_EINVAL;
  }
  t->ncpus = (size_t)t->nusable;
  t->cpus = calloc(t->ncpus, sizeof *t->cpus);
  if (t->cpus == NULL) {
    free(t);
    return FP_ENOMEM;
  }
  for (int i = 0; i < t->nusable; i++)
    t->cpus[i].cpu = fp_cpuset_nth(&t->usable, i);

  /* fp_cpulist_parse sets (and clears) the thread's affinity message; a
   * malformed sysfs file is not the caller's error, and loading the
   * topology is not an affinity call: keep the caller's message. */
  char saved[FP__ERRMSG_LEN];
  snprintf(saved, sizeof saved, "%s", fp__err_get(FP__ERR_AFFINITY));
  if (read_text(sysroot, "/sys/devices/system/cpu/online", buf, sizeof buf) ==
          0 &&
      fp_cpulist_parse(buf, &online) == 0 && fp_cpuset_count(&online) > 0) {
    t->online = fp_cpuset_count(&online);
  } else {
    long on = sysconf(_SC_NPROCESSORS_ONLN);
    t->online = on > 0 ? (int)on : t->nusable;
  }
  fp__err_setf(FP__ERR_AFFINITY, "%s", saved);

  load_ids(sysroot, t);
  derive_counts(t);
  t->quota = fp__cgroup_cpu_quota(sysroot);
  t->quota_cpus = quota_to_cpus(t->quota);
  t->effective = effective_count(t->nusable, t->quota_cpus);
  *out = t;
  return 0;
}

int fp_topology_get(fp_topology **out) {
  return fp__topology_load(NULL, NULL, out);
}

void fp_topology_free(fp_topology *topo) {
  if (topo == NULL)
    return;
  free(topo->cpus);
  free(topo);
}

const fp_cpu_info *fp_topology_cpu(const fp_topology *topo, int cpu) {
  if (topo == NULL || !fp_cpuset_isset(&topo->usable, cpu))
    return NULL;
  for (size_t i = 0; i < topo->ncpus; i++)
    if (topo->cpus[i].cpu == cpu)
      return &topo->cpus[i];
  return NULL;
}
