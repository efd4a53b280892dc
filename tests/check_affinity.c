/* SPDX-License-Identifier: MIT */
/* check_affinity.c - tests of cpu sets, cpu-list strings, topology, cgroup
 * quotas, pinning and the pool's pinning plan.
 *
 * Topology parsing is tested on fixture trees the tests write into a temp
 * directory (fake /sys and /proc below a sysroot), and against this
 * machine. Anything that changes the affinity mask runs in a forked child,
 * so the runner itself is never pinned; the child reports through its exit
 * code (0 = pass, n = step n failed) and the parent waits for it.
 */
#include "affinity/affinity.h"
#include "testutil.h"

#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------ */

/* Creates every directory of path (like mkdir -p). */
static void mkdirs(const char *path) {
  char tmp[1024];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1; *p; p++) {
    if (*p == '/') {
      *p = '\0';
      mkdir(tmp, 0755);
      *p = '/';
    }
  }
  mkdir(tmp, 0755);
}

/* Writes text into root/rel, creating the directories on the way. */
static void put(const char *root, const char *rel, const char *text) {
  char path[1024];
  snprintf(path, sizeof path, "%s%s", root, rel);
  char *slash = strrchr(path, '/');
  *slash = '\0';
  mkdirs(path);
  *slash = '/';
  FILE *f = fopen(path, "w");
  ck_assert_msg(f != NULL, "cannot create %s", path);
  fputs(text, f);
  fclose(f);
}

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw) {
  return remove(path);
}

static char fixture[256];

static void fixture_setup(void) {
  snprintf(fixture, sizeof fixture, "/tmp/fp_affinity_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(fixture));
}

static void fixture_teardown(void) {
  nftw(fixture, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  fp_test_no_children();
}

/* Writes the sysfs topology of one CPU. */
static void put_cpu(const char *root, int cpu, int core, int pkg) {
  char rel[128], val[32];
  snprintf(rel, sizeof rel, "/sys/devices/system/cpu/cpu%d/topology/core_id",
           cpu);
  snprintf(val, sizeof val, "%d\n", core);
  put(root, rel, val);
  snprintf(rel, sizeof rel,
           "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
  snprintf(val, sizeof val, "%d\n", pkg);
  put(root, rel, val);
}

/* 2 packages x 2 cores x 2 SMT threads, siblings numbered next to each
 * other (cpu = pkg*4 + core*2 + thread, as on many AMD machines). Core ids
 * restart in each package, so only (package, core) identifies a core. */
static void put_adjacent_smt(const char *root) {
  for (int cpu = 0; cpu < 8; cpu++)
    put_cpu(root, cpu, (cpu / 2) % 2, cpu / 4);
  put(root, "/sys/devices/system/cpu/online", "0-7\n");
}

static fp_cpuset range(int lo, int hi) {
  fp_cpuset s;
  fp_cpuset_zero(&s);
  for (int c = lo; c <= hi; c++)
    fp_cpuset_set(&s, c);
  return s;
}

/* Waits for a child and returns its exit code (-1 if it did not exit). */
static int wait_child(pid_t pid) {
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static fp_cpuset current_mask(void) {
  fp_cpuset s;
  ck_assert_int_eq(fp_affinity_get(&s), 0);
  return s;
}

/* ---- cpu sets ----------------------------------------------------------- */

START_TEST(cpuset_helpers_work_and_range_check) {
  fp_cpuset s;
  fp_cpuset_zero(&s);
  ck_assert_int_eq(fp_cpuset_count(&s), 0);
  ck_assert_int_eq(fp_cpuset_nth(&s, 0), -1);
  ck_assert_int_eq(fp_cpuset_set(&s, 3), 0);
  ck_assert_int_eq(fp_cpuset_set(&s, 64), 0);
  ck_assert_int_eq(fp_cpuset_set(&s, 1023), 0);
  ck_assert_int_eq(fp_cpuset_set(&s, 1024), FP_ERANGE);
  ck_assert_int_eq(fp_cpuset_set(&s, -1), FP_ERANGE);
  ck_assert_int_eq(fp_cpuset_clear(&s, 1024), FP_ERANGE);
  ck_assert_int_eq(fp_cpuset_count(&s), 3);
  ck_assert(fp_cpuset_isset(&s, 64));
  ck_assert(!fp_cpuset_isset(&s, 65));
  ck_assert(!fp_cpuset_isset(&s, -5));
  ck_assert(!fp_cpuset_isset(&s, 5000));
  ck_assert_int_eq(fp_cpuset_nth(&s, 0), 3);
  ck_assert_int_eq(fp_cpuset_nth(&s, 1), 64);
  ck_assert_int_eq(fp_cpuset_nth(&s, 2), 1023);
  ck_assert_int_eq(fp_cpuset_nth(&s, 3), -1);
  ck_assert_int_eq(fp_cpuset_nth(&s, -1), -1);
  ck_assert_int_eq(fp_cpuset_clear(&s, 64), 0);
  ck_assert_int_eq(fp_cpuset_nth(&s, 1), 1023);
  fp_cpuset t = s;
  ck_assert(fp_cpuset_equal(&s, &t));
  fp_cpuset_set(&t, 0);
  ck_assert(!fp_cpuset_equal(&s, &t));
}
END_TEST

/* A NULL set is a bad argument: never a crash. */
START_TEST(cpuset_helpers_refuse_null) {
  fp_cpuset s;
  fp_cpuset_zero(&s);
  fp_cpuset_zero(NULL);
  ck_assert_int_eq(fp_cpuset_set(NULL, 0), FP_EINVAL);
  ck_assert_int_eq(fp_cpuset_clear(NULL, 0), FP_EINVAL);
  ck_assert_int_eq(fp_cpuset_isset(NULL, 0), 0);
  ck_assert_int_eq(fp_cpuset_count(NULL), 0);
  ck_assert_int_eq(fp_cpuset_nth(NULL, 0), -1);
  ck_assert_int_eq(fp_cpuset_equal(NULL, &s), 0);
  ck_assert_int_eq(fp_cpuset_equal(NULL, NULL), 1);
}
END_TEST

/* A pin list count no array can have is refused, not overflowed. */
START_TEST(pin_list_count_overflow_is_einval) {
  static const int cpus[4] = {0};
  fp_pool_opts o = {0};
  fp_pool *p = (fp_pool *)1;
  o.processes = 1;
  o.pin = FP_PIN_LIST;
  o.pin_cpus = cpus;
  o.pin_ncpus = SIZE_MAX / 4 + 2;
  ck_assert_int_eq(fp_pool_new(&p, &o), FP_EINVAL);
  ck_assert_ptr_null(p);
  ck_assert_ptr_nonnull(strstr(fp_last_error(), "pin_ncpus"));
}
END_TEST

/* ---- cpu-list parsing --------------------------------------------------- */

START_TEST(cpulist_parse_valid_list) {
  fp_cpuset s;
  ck_assert_int_eq(fp_cpulist_parse("0-3,8,10-11", &s), 0);
  ck_assert_int_eq(fp_cpuset_count(&s), 7);
  for (int c = 0; c <= 3; c++)
    ck_assert(fp_cpuset_isset(&s, c));
  ck_assert(!fp_cpuset_isset(&s, 4));
  ck_assert(fp_cpuset_isset(&s, 8));
  ck_assert(!fp_cpuset_isset(&s, 9));
  ck_assert(fp_cpuset_isset(&s, 10));
  ck_assert(fp_cpuset_isset(&s, 11));
  ck_assert_str_eq(fp_affinity_error(), "");
}
END_TEST

START_TEST(cpulist_parse_single_cpu) {
  fp_cpuset s;
  ck_assert_int_eq(fp_cpulist_parse("5", &s), 0);
  ck_assert_int_eq(fp_cpuset_count(&s), 1);
  ck_assert_int_eq(fp_cpuset_nth(&s, 0), 5);
  ck_assert_int_eq(fp_cpulist_parse("7-7", &s), 0);
  ck_assert_int_eq(fp_cpuset_nth(&s, 0), 7);
  ck_assert_int_eq(fp_cpuset_count(&s), 1);
}
END_TEST

START_TEST(cpulist_parse_overlapping_and_blanks) {
  fp_cpuset s, want = range(0, 5);
  ck_assert_int_eq(fp_cpulist_parse("0-3,2-5,4,1", &s), 0);
  ck_assert(fp_cpuset_equal(&s, &want));
  ck_assert_int_eq(fp_cpulist_parse(" 0 - 2 ,\n3-5\n", &s), 0);
  ck_assert(fp_cpuset_equal(&s, &want));
  ck_assert_int_eq(fp_cpulist_parse("\t5,4,3,2,1,0\n", &s), 0);
  ck_assert(fp_cpuset_equal(&s, &want));
}
END_TEST

START_TEST(cpulist_parse_reversed_range_fails) {
  fp_cpuset s;
  fp_cpuset_zero(&s);
  ck_assert_int_eq(fp_cpulist_parse("5-3", &s), FP_EINVAL);
  ck_assert_ptr_nonnull(strstr(fp_affinity_error(), "reversed range 5-3"));
  ck_assert_int_eq(fp_cpuset_count(&s), 0);
  /* A failure leaves the output empty even after a good prefix. */
  ck_assert_int_eq(fp_cpulist_parse("0-2,9-8", &s), FP_EINVAL);
  ck_assert_int_eq(fp_cpuset_count(&s), 0);
}
END_TEST

START_TEST(cpulist_parse_garbage_fails) {
  static const char *const bad[] = {"a",   "1-",    "-1",    "1;2",   "1,,2",
                                    "0x3", "1 2",   "1-2-3", ",",     "1.5",
                                    "+1",  "0-3,a", "3 -",   "1,\n,2"};
  fp_cpuset s;
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ck_assert_msg(fp_cpulist_parse(bad[i], &s) == FP_EINVAL,
                  "\"%s\" should be FP_EINVAL", bad[i]);
    ck_assert_msg(fp_affinity_error()[0] != '\0', "no message for \"%s\"",
                  bad[i]);
    ck_assert_int_eq(fp_cpuset_count(&s), 0);
  }
  ck_assert_int_eq(fp_cpulist_parse(NULL, &s), FP_EINVAL);
  ck_assert_int_eq(fp_cpulist_parse("1", NULL), FP_EINVAL);
}
END_TEST

START_TEST(cpulist_parse_empty_is_empty_set) {
  fp_cpuset s;
  fp_cpuset_set(&s, 3);
  ck_assert_int_eq(fp_cpulist_parse("", &s), 0);
  ck_assert_int_eq(fp_cpuset_count(&s), 0);
  ck_assert_int_eq(fp_cpulist_parse(" \n\t", &s), 0);
  ck_assert_int_eq(fp_cpuset_count(&s), 0);
}
END_TEST

START_TEST(cpulist_parse_trailing_comma_fails) {
  fp_cpuset s;
  ck_assert_int_eq(fp_cpulist_parse("1,", &s), FP_EINVAL);
  ck_assert_int_eq(fp_cpulist_parse("0-3,\n", &s), FP_EINVAL);
  ck_assert_ptr_nonnull(strstr(fp_affinity_error(), "number expected"));
}
END_TEST

START_TEST(cpulist_parse_huge_numbers_fail_with_erange) {
  fp_cpuset s;
  ck_assert_int_eq(fp_cpulist_parse("1023", &s), 0);
  ck_assert(fp_cpuset_isset(&s, 1023));
  ck_assert_int_eq(fp_cpulist_parse("1024", &s), FP_ERANGE);
  ck_assert_ptr_nonnull(strstr(fp_affinity_error(), "FP_CPU_MAX"));
  ck_assert_ptr_nonnull(strstr(fp_affinity_error(), "at offset 0 "));
  ck_assert_int_eq(fp_cpulist_parse("1,3-2048", &s), FP_ERANGE);
  ck_assert_ptr_nonnull(strstr(fp_affinity_error(), "at offset 4 "));
  ck_assert_int_eq(fp_cpulist_parse("0-5000", &s), FP_ERANGE);
  ck_assert_int_eq(fp_cpulist_parse("99999999999999999999999999", &s),
                   FP_ERANGE);
  ck_assert_int_eq(fp_cpulist_parse("2147483648", &s), FP_ERANGE);
  ck_assert_int_eq(fp_cpuset_count(&s), 0);
}
END_TEST

/* ---- cpu-list formatting ------------------------------------------------ */

START_TEST(cpulist_format_canonical_and_round_trips) {
  char buf[FP_CPULIST_MAX];
  fp_cpuset s, back;
  static const char *const canon[] = {"",     "0",     "0-1",   "0-3,8,10-11",
                                      "1023", "1,3,5", "0-1023"};
  for (size_t i = 0; i < sizeof canon / sizeof *canon; i++) {
    ck_assert_int_eq(fp_cpulist_parse(canon[i], &s), 0);
    int n = fp_cpulist_format(&s, buf, sizeof buf);
    ck_assert_int_eq(n, (int)strlen(canon[i]));
    ck_assert_str_eq(buf, canon[i]);
  }
  /* Non-canonical input comes back canonical. */
  ck_assert_int_eq(fp_cpulist_parse("3,2,1, 0,5-5,7-9", &s), 0);
  fp_cpulist_format(&s, buf, sizeof buf);
  ck_assert_str_eq(buf, "0-3,5,7-9");
  /* The worst case (every other CPU) fits FP_CPULIST_MAX and round trips. */
  fp_cpuset_zero(&s);
  for (int c = 0; c < FP_CPU_MAX; c += 2)
    fp_cpuset_set(&s, c);
  ck_assert_int_gt(fp_cpulist_format(&s, buf, sizeof buf), 0);
  ck_assert_int_eq(fp_cpulist_parse(buf, &back), 0);
  ck_assert(fp_cpuset_equal(&s, &back));
}
END_TEST

START_TEST(cpulist_format_small_buffer_fails) {
  char buf[8];
  fp_cpuset s = range(0, 3);
  fp_cpuset_set(&s, 100);
  fp_cpuset_set(&s, 200);
  ck_assert_int_eq(fp_cpulist_format(&s, buf, 8), FP_ERANGE);
  ck_assert_str_eq(buf, "");
  ck_assert_int_eq(fp_cpulist_format(&s, buf, 0), FP_ERANGE);
  /* "0-3,100" is 7 chars: exactly fits 8 bytes. */
  fp_cpuset_clear(&s, 200);
  ck_assert_int_eq(fp_cpulist_format(&s, buf, 8), 7);
  ck_assert_str_eq(buf, "0-3,100");
  ck_assert_int_eq(fp_cpulist_format(NULL, buf, 8), FP_EINVAL);
  ck_assert_int_eq(fp_cpulist_format(&s, NULL, 8), FP_EINVAL);
}
END_TEST

/* ---- topology of this machine ------------------------------------------- */

START_TEST(topology_matches_this_machine) {
  fp_topology *t = NULL;
  cpu_set_t k;
  char line[512];
  int processors = 0;

  ck_assert_int_eq(fp_topology_get(&t), 0);
  ck_assert_ptr_nonnull(t);
  ck_assert_int_eq(sched_getaffinity(0, sizeof k, &k), 0);
  ck_assert_int_eq(t->nusable, CPU_COUNT(&k));
  ck_assert_int_eq((int)t->ncpus, t->nusable);
  for (int c = 0; c < CPU_SETSIZE; c++)
    ck_assert_int_eq(fp_cpuset_isset(&t->usable, c), CPU_ISSET(c, &k) != 0);

  FILE *f = fopen("/proc/cpuinfo", "r");
  ck_assert_ptr_nonnull(f);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "processor", 9) == 0)
      processors++;
  fclose(f);
  ck_assert_int_eq(t->online, (int)sysconf(_SC_NPROCESSORS_ONLN));
  ck_assert_int_eq(t->online, processors);
  ck_assert_int_le(t->nusable, t->online);

  /* Entries ascending, ids as in sysfs when it is there. */
  for (size_t i = 0; i < t->ncpus; i++) {
    const fp_cpu_info *ci = &t->cpus[i];
    ck_assert_ptr_eq(fp_topology_cpu(t, ci->cpu), ci);
    if (i > 0)
      ck_assert_int_gt(ci->cpu, t->cpus[i - 1].cpu);
    if (t->has_smt_info) {
      char path[128];
      int core = -1;
      snprintf(path, sizeof path,
               "/sys/devices/system/cpu/cpu%d/topology/core_id", ci->cpu);
      FILE *cf = fopen(path, "r");
      ck_assert_ptr_nonnull(cf);
      ck_assert_int_eq(fscanf(cf, "%d", &core), 1);
      fclose(cf);
      ck_assert_int_eq(ci->core_id, core);
    }
  }
  ck_assert_int_ge(t->ncores, 1);
  ck_assert_int_le(t->ncores, t->nusable);
  ck_assert_int_ge(t->npackages, 1);
  ck_assert_int_ge(t->effective, 1);
  ck_assert_int_le(t->effective, t->nusable);
  ck_assert_int_eq(t->effective, fp_cpu_count());
  ck_assert_ptr_null(fp_topology_cpu(t, -1));
  ck_assert_ptr_null(fp_topology_cpu(t, FP_CPU_MAX));
  fp_topology_free(t);
  fp_topology_free(NULL);
  ck_assert_int_eq(fp_topology_get(NULL), FP_EINVAL);
}
END_TEST

START_TEST(cpu_count_is_usable_capped_at_least_one) {
  fp_cpuset s = current_mask();
  int n = fp_cpu_count();
  ck_assert_int_ge(n, 1);
  ck_assert_int_le(n, fp_cpuset_count(&s));
  double q = fp__cgroup_cpu_quota(NULL);
  if (q <= 0.0)
    ck_assert_int_eq(n, fp_cpuset_count(&s));
}
END_TEST

START_TEST(cpu_count_sees_narrowed_mask_in_child) {
  /* CPU 0 unless this process was started without it. */
  fp_cpuset start = current_mask();
  int cpu = fp_cpuset_nth(&start, 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    cpu_set_t k;
    CPU_ZERO(&k);
    CPU_SET(cpu, &k);
    if (sched_setaffinity(0, sizeof k, &k) != 0)
      _exit(1);
    if (fp_cpu_count() != 1)
      _exit(2);
    fp_topology *t = NULL;
    if (fp_topology_get(&t) != 0 || t->nusable != 1 || t->effective != 1 ||
        !fp_cpuset_isset(&t->usable, cpu))
      _exit(3);
    fp_topology_free(t);
    _exit(0);
  }
  ck_assert_int_eq(wait_child(pid), 0);
}
END_TEST

/* ---- fixture trees ------------------------------------------------------- */

START_TEST(fixture_smt_siblings_found) {
  fp_topology *t = NULL;
  fp_cpuset all = range(0, 7);
  put_adjacent_smt(fixture);
  ck_assert_int_eq(fp__topology_load(fixture, &all, &t), 0);
  ck_assert_int_eq(t->has_smt_info, 1);
  ck_assert_int_eq(t->nusable, 8);
  ck_assert_int_eq(t->online, 8);
  ck_assert_int_eq(t->ncores, 4);
  ck_assert_int_eq(t->npackages, 2);
  for (int cpu = 0; cpu < 8; cpu++) {
    const fp_cpu_info *ci = fp_topology_cpu(t, cpu);
    ck_assert_ptr_nonnull(ci);
    ck_assert_int_eq(ci->core_id, (cpu / 2) % 2);
    ck_assert_int_eq(ci->package_id, cpu / 4);
    ck_assert_int_eq(ci->smt_index, cpu % 2);
  }
  /* No cgroup files in the tree: no quota, effective = usable. */
  ck_assert(t->quota == 0.0);
  ck_assert_int_eq(t->quota_cpus, 0);
  ck_assert_int_eq(t->effective, 8);
  fp_topology_free(t);
}
END_TEST

START_TEST(fixture_scatter_order_fills_cores_first) {
  fp_topology *t = NULL;
  fp_cpuset all = range(0, 7);
  int plan[10];
  static const int want[10] = {0, 2, 4, 6, 1, 3, 5, 7, 0, 2};
  put_adjacent_smt(fixture);
  ck_assert_int_eq(fp__topology_load(fixture, &all, &t), 0);
  ck_assert_int_eq(
      fp__affinity_plan_topo(t, FP_PIN_SCATTER, NULL, 0, 10, plan, NULL, 0), 0);
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(plan[i], want[i]);
  /* Compact ignores SMT: CPU order, wrapping. */
  ck_assert_int_eq(
      fp__affinity_plan_topo(t, FP_PIN_COMPACT, NULL, 0, 10, plan, NULL, 0), 0);
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(plan[i], i % 8);
  fp_topology_free(t);

  /* A usable subset: CPUs 1,2,3,5 -> cores (0,0) (0,1) (0,1) (1,0). */
  fp_cpuset sub;
  ck_assert_int_eq(fp_cpulist_parse("1-3,5", &sub), 0);
  ck_assert_int_eq(fp__topology_load(fixture, &sub, &t), 0);
  ck_assert_int_eq(t->ncores, 3);
  ck_assert_int_eq(
      fp__affinity_plan_topo(t, FP_PIN_SCATTER, NULL, 0, 5, plan, NULL, 0), 0);
  static const int want_sub[5] = {1, 2, 5, 3, 1};
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(plan[i], want_sub[i]);
  fp_topology_free(t);
}
END_TEST

START_TEST(fixture_split_numbering_scatter_is_cpu_order) {
  /* Intel-style numbering: CPUs 0-3 are the first threads of cores 0-3,
   * CPUs 4-7 their siblings. */
  fp_topology *t = NULL;
  fp_cpuset all = range(0, 7);
  int plan[8];
  for (int cpu = 0; cpu < 8; cpu++)
    put_cpu(fixture, cpu, cpu % 4, 0);
  ck_assert_int_eq(fp__topology_load(fixture, &all, &t), 0);
  ck_assert_int_eq(t->ncores, 4);
  ck_assert_int_eq(t->npackages, 1);
  ck_assert_int_eq(fp_topology_cpu(t, 5)->smt_index, 1);
  ck_assert_int_eq(
      fp__affinity_plan_topo(t, FP_PIN_SCATTER, NULL, 0, 8, plan, NULL, 0), 0);
  for (int i = 0; i < 8; i++)
    ck_assert_int_eq(plan[i], i);
  fp_topology_free(t);
}
END_TEST

START_TEST(fixture_missing_files_degrade) {
  fp_topology *t = NULL;
  fp_cpuset all = range(0, 3);
  int plan[4];

  /* An empty tree: no sysfs, no cgroup, no error. */
  ck_assert_int_eq(fp__topology_load(fixture, &all, &t), 0);
  ck_assert_int_eq(t->has_smt_info, 0);
  ck_assert_int_eq(t->nusable, 4);
  ck_assert_int_eq(t->ncores, 4);
  ck_assert_int_eq(t->npackages, 1);
  ck_assert(t->quota == 0.0);
  ck_assert_int_eq(t->effective, 4);
  ck_assert_int_ge(t->online, 1);
  for (int cpu = 0; cpu < 4; cpu++) {
    ck_assert_int_eq(fp_topology_cpu(t, cpu)->core_id, cpu);
    ck_assert_int_eq(fp_topology_cpu(t, cpu)->smt_index, 0);
  }
  /* Scatter degrades to compact. */
  ck_assert_int_eq(
      fp__affinity_plan_topo(t, FP_PIN_SCATTER, NULL, 0, 4, plan, NULL, 0), 0);
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(plan[i], i);
  fp_topology_free(t);

  /* One CPU's files missing: every id is guessed, none mixed in. */
  for (int cpu = 0; cpu < 3; cpu++)
    put_cpu(fixture, cpu, 0, 0);
  ck_assert_int_eq(fp__topology_load(fixture, &all, &t), 0);
  ck_assert_int_eq(t->has_smt_info, 0);
  ck_assert_int_eq(t->ncores, 4);
  fp_topology_free(t);

  /* Garbage in a sysfs file and in cgroup files is ignored too. */
  put(fixture, "/sys/devices/system/cpu/cpu3/topology/core_id", "x\n");
  put(fixture, "/sys/devices/system/cpu/cpu3/topology/physical_package_id",
      "0\n");
  put(fixture, "/sys/devices/system/cpu/online", "zz\n");
  put(fixture, "/proc/self/cgroup", "0::/g\n");
  put(fixture, "/sys/fs/cgroup/g/cpu.max", "lots\n");
  ck_assert_int_eq(fp__topology_load(fixture, &all, &t), 0);
  ck_assert_int_eq(t->has_smt_info, 0);
  ck_assert(t->quota == 0.0);
  ck_assert_str_eq(fp_affinity_error(), "");
  fp_topology_free(t);

  /* Bad arguments. */
  fp_cpuset none;
  fp_cpuset_zero(&none);
  ck_assert_int_eq(fp__topology_load(fixture, &none, &t), FP_EINVAL);
  ck_assert_ptr_null(t);
  ck_assert_int_eq(fp__topology_load(fixture, &all, NULL), FP_EINVAL);
}
END_TEST

START_TEST(fixture_cgroup_v2_quota_caps_effective) {
  fp_topology *t = NULL;
  fp_cpuset all = range(0, 7);
  put_adjacent_smt(fixture);
  put(fixture, "/proc/self/cgroup", "0::/a/b\n");
  put(fixture, "/sys/fs/cgroup/a/b/cpu.max", "max 100000\n");
  /* The parent's limit binds the child. */
  put(fixture, "/sys/fs/cgroup/a/cpu.max", "150000 100000\n");
  ck_assert_int_eq(fp__topology_load(fixture, &all, &t), 0);
  ck_assert_double_eq_tol(t->quota, 1.5, 1e-9);
  ck_assert_int_eq(t->quota_cpus, 2);
  ck_assert_int_eq(t->effective, 2);
  fp_topology_free(t);

  /* A smaller own limit wins; an exact quota is not rounded up. */
  put(fixture, "/sys/fs/cgroup/a/b/cpu.max", "100000 100000\n");
  ck_assert_double_eq_tol(fp__cgroup_cpu_quota(fixture), 1.0, 1e-9);
  ck_assert_int_eq(fp__topology_load(fixture, &all, &t), 0);
  ck_assert_int_eq(t->effective, 1);
  fp_topology_free(t);

  /* A quota above the usable CPUs does not raise the count. */
  put(fixture, "/sys/fs/cgroup/a/b/cpu.max", "max 100000\n");
  put(fixture, "/sys/fs/cgroup/a/cpu.max", "3200000 100000\n");
  ck_assert_int_eq(fp__topology_load(fixture, &all, &t), 0);
  ck_assert_int_eq(t->quota_cpus, 32);
  ck_assert_int_eq(t->effective, 8);
  fp_topology_free(t);

  /* Hybrid hosts mount v2 at /sys/fs/cgroup/unified. */
  put(fixture, "/sys/fs/cgroup/a/cpu.max", "max 100000\n");
  put(fixture, "/sys/fs/cgroup/unified/a/b/cpu.max", "250000 100000\n");
  ck_assert_double_eq_tol(fp__cgroup_cpu_quota(fixture), 2.5, 1e-9);
}
END_TEST

START_TEST(fixture_cgroup_v1_quota) {
  fp_topology *t = NULL;
  fp_cpuset all = range(0, 7);
  put(fixture, "/proc/self/cgroup",
      "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n0::/\n");
  put(fixture, "/sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_quota_us",
      "300000\n");
  put(fixture, "/sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_period_us",
      "100000\n");
  put(fixture, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  put(fixture, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  ck_assert_int_eq(fp__topology_load(fixture, &all, &t), 0);
  ck_assert_double_eq_tol(t->quota, 3.0, 1e-9);
  ck_assert_int_eq(t->effective, 3);
  fp_topology_free(t);

  /* quota -1 everywhere: none. */
  put(fixture, "/sys/fs/cgroup/cpu,cpuacct/docker/x/cpu.cfs_quota_us", "-1\n");
  ck_assert(fp__cgroup_cpu_quota(fixture) == 0.0);
}
END_TEST

START_TEST(cgroup_cpu_max_parsing) {
  double c = -1;
  ck_assert_int_eq(fp__cgroup_parse_cpu_max("max 100000\n", &c), 0);
  ck_assert(c == 0.0);
  ck_assert_int_eq(fp__cgroup_parse_cpu_max("max", &c), 0);
  ck_assert(c == 0.0);
  ck_assert_int_eq(fp__cgroup_parse_cpu_max("200000 100000\n", &c), 0);
  ck_assert_double_eq_tol(c, 2.0, 1e-12);
  ck_assert_int_eq(fp__cgroup_parse_cpu_max("150000 100000", &c), 0);
  ck_assert_double_eq_tol(c, 1.5, 1e-12);
  ck_assert_int_eq(fp__cgroup_parse_cpu_max("50000 100000", &c), 0);
  ck_assert_double_eq_tol(c, 0.5, 1e-12);
  ck_assert_int_eq(fp__cgroup_parse_cpu_max("150000", &c), 0);
  ck_assert_double_eq_tol(c, 1.5, 1e-12);
  ck_assert_int_eq(fp__cgroup_parse_cpu_max("  300000   50000 \n", &c), 0);
  ck_assert_double_eq_tol(c, 6.0, 1e-12);
  static const char *const bad[] = {
      "",          "\n",          "lots",      "max 0",    "0 100000",
      "-5 100000", "100 200 300", "100000 -1", "100000 x", "1e5 100000"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    ck_assert_msg(fp__cgroup_parse_cpu_max(bad[i], &c) == FP_EINVAL,
                  "\"%s\" should be FP_EINVAL", bad[i]);
  ck_assert_int_eq(fp__cgroup_parse_cpu_max(NULL, &c), FP_EINVAL);
}
END_TEST

/* ---- pinning --------------------------------------------------------------
 */

START_TEST(pin_allowed_cpu_gives_exactly_it) {
  fp_cpuset start = current_mask();
  int last = fp_cpuset_nth(&start, fp_cpuset_count(&start) - 1);
  int first = fp_cpuset_nth(&start, 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    cpu_set_t k;
    if (fp_affinity_pin(last) != 0)
      _exit(1);
    if (sched_getaffinity(0, sizeof k, &k) != 0 || CPU_COUNT(&k) != 1 ||
        !CPU_ISSET(last, &k))
      _exit(2);
    if (fp_current_cpu() != last)
      _exit(3);
    if (fp_affinity_error()[0] != '\0')
      _exit(4);
    /* Re-pinning elsewhere works although the current mask is {last}:
     * the start mask still allows it. */
    if (fp_affinity_pin(first) != 0)
      _exit(5);
    if (sched_getaffinity(0, sizeof k, &k) != 0 || CPU_COUNT(&k) != 1 ||
        !CPU_ISSET(first, &k))
      _exit(6);
    /* fp_affinity_set restores the whole set. */
    if (fp_affinity_set(&start) != 0)
      _exit(7);
    fp_cpuset now;
    if (fp_affinity_get(&now) != 0 || !fp_cpuset_equal(&now, &start))
      _exit(8);
    _exit(0);
  }
  ck_assert_int_eq(wait_child(pid), 0);
  /* The runner itself was not touched. */
  fp_cpuset after = current_mask();
  ck_assert(fp_cpuset_equal(&after, &start));
}
END_TEST

START_TEST(pin_outside_allowed_set_fails_with_message) {
  fp_cpuset start = current_mask();
  char allowed[FP_CPULIST_MAX], want[FP_CPULIST_MAX + 64];
  int bad = FP_CPU_MAX - 1;
  /* Find a CPU outside the set (any real machine has one below 1024). */
  while (bad >= 0 && fp_cpuset_isset(&start, bad))
    bad--;
  ck_assert_int_ge(bad, 0);
  fp_cpulist_format(&start, allowed, sizeof allowed);

  ck_assert_int_eq(fp_affinity_pin(bad), FP_EINVAL);
  snprintf(want, sizeof want, "CPU %d not in allowed set %s", bad, allowed);
  ck_assert_str_eq(fp_affinity_error(), want);

  ck_assert_int_eq(fp_affinity_pin(-1), FP_EINVAL);
  ck_assert_ptr_nonnull(strstr(fp_affinity_error(), "CPU -1 not in allowed"));
  ck_assert_int_eq(fp_affinity_pin(5000), FP_EINVAL);
  ck_assert_ptr_nonnull(strstr(fp_affinity_error(), "CPU 5000 not in"));

  /* Nothing changed. */
  fp_cpuset after = current_mask();
  ck_assert(fp_cpuset_equal(&after, &start));
  ck_assert_str_eq(fp_affinity_error(), "");
}
END_TEST

START_TEST(affinity_set_and_get_error_paths) {
  fp_cpuset start = current_mask(), s;
  int bad = FP_CPU_MAX - 1;
  while (bad >= 0 && fp_cpuset_isset(&start, bad))
    bad--;

  ck_assert_int_eq(fp_affinity_set(NULL), FP_EINVAL);
  ck_assert_ptr_nonnull(strstr(fp_affinity_error(), "NULL"));
  fp_cpuset_zero(&s);
  ck_assert_int_eq(fp_affinity_set(&s), FP_EINVAL);
  ck_assert_ptr_nonnull(strstr(fp_affinity_error(), "empty"));
  s = start;
  fp_cpuset_set(&s, bad);
  ck_assert_int_eq(fp_affinity_set(&s), FP_EINVAL);
  char want[FP_CPULIST_MAX + 64];
  snprintf(want, sizeof want, "CPU %d not in allowed set", bad);
  ck_assert_ptr_nonnull(strstr(fp_affinity_error(), want));
  /* A long list of bad CPUs is shortened: the allowed set, at the end of
   * the message, is never what gets cut. */
  fp_cpuset_zero(&s);
  for (int c = 0; c < FP_CPU_MAX; c += 2)
    if (!fp_cpuset_isset(&start, c))
      fp_cpuset_set(&s, c);
  if (fp_cpuset_count(&s) > 100) {
    char allowed[FP_CPULIST_MAX];
    fp_cpulist_format(&start, allowed, sizeof allowed);
    snprintf(want, sizeof want, ",... not in allowed set %s", allowed);
    ck_assert_int_eq(fp_affinity_set(&s), FP_EINVAL);
    ck_assert_msg(strstr(fp_affinity_error(), want) != NULL, "'%s' lacks '%s'",
                  fp_affinity_error(), want);
  }
  ck_assert_int_eq(fp_affinity_get(NULL), FP_EINVAL);
  /* Setting the current mask is a no-op that succeeds. */
  ck_assert_int_eq(fp_affinity_set(&start), 0);
  ck_assert_str_eq(fp_affinity_error(), "");
  s = current_mask();
  ck_assert(fp_cpuset_equal(&s, &start));
}
END_TEST

START_TEST(current_cpu_is_usable) {
  fp_cpuset s = current_mask();
  int cpu = fp_current_cpu();
  ck_assert_int_ge(cpu, 0);
  ck_assert(fp_cpuset_isset(&s, cpu));
}
END_TEST

/* ---- the pool's plan ------------------------------------------------------
 */

START_TEST(plan_compact_list_none_on_fixture) {
  fp_topology *t = NULL;
  fp_cpuset all = range(0, 7);
  int plan[10];
  char err[128];
  put_adjacent_smt(fixture);
  ck_assert_int_eq(fp__topology_load(fixture, &all, &t), 0);

  ck_assert_int_eq(
      fp__affinity_plan_topo(t, FP_PIN_NONE, NULL, 0, 3, plan, err, sizeof err),
      0);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(plan[i], -1);

  static const int list[2] = {3, 1};
  ck_assert_int_eq(
      fp__affinity_plan_topo(t, FP_PIN_LIST, list, 2, 5, plan, err, sizeof err),
      0);
  static const int want[5] = {3, 1, 3, 1, 3};
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(plan[i], want[i]);
  ck_assert_str_eq(err, "");

  static const int bad[3] = {1, 2, 9};
  ck_assert_int_eq(
      fp__affinity_plan_topo(t, FP_PIN_LIST, bad, 3, 2, plan, err, sizeof err),
      FP_EINVAL);
  ck_assert_str_eq(err, "pin_cpus[2] = 9: CPU 9 not in usable set 0-7");
  ck_assert_str_eq(fp_affinity_error(), err);

  static const int neg[1] = {-1};
  ck_assert_int_eq(
      fp__affinity_plan_topo(t, FP_PIN_LIST, neg, 1, 2, plan, err, sizeof err),
      FP_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "CPU -1 not in usable set 0-7"));

  ck_assert_int_eq(
      fp__affinity_plan_topo(t, FP_PIN_LIST, NULL, 0, 2, plan, err, sizeof err),
      FP_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "FP_PIN_LIST"));
  ck_assert_int_eq(fp__affinity_plan_topo(t, FP_PIN_COMPACT, NULL, 0, 0, plan,
                                          err, sizeof err),
                   FP_EINVAL);
  ck_assert_int_eq(fp__affinity_plan_topo(t, FP_PIN_COMPACT, NULL, 0, 2, NULL,
                                          err, sizeof err),
                   FP_EINVAL);
  ck_assert_int_eq(fp__affinity_plan_topo(t, (fp_pin_policy)99, NULL, 0, 2,
                                          plan, err, sizeof err),
                   FP_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "unknown pin policy 99"));
  /* A tiny err buffer truncates, never overflows; NULL err is fine. */
  char tiny[4];
  ck_assert_int_eq(fp__affinity_plan_topo(t, FP_PIN_LIST, bad, 3, 2, plan, tiny,
                                          sizeof tiny),
                   FP_EINVAL);
  ck_assert_str_eq(tiny, "pin");
  ck_assert_int_eq(
      fp__affinity_plan_topo(t, FP_PIN_LIST, bad, 3, 2, plan, NULL, 0),
      FP_EINVAL);
  fp_topology_free(t);
}
END_TEST

/* Loading the topology is not an affinity call: the message a failed
 * affinity call left stays until the thread's next affinity call. */
START_TEST(topology_get_keeps_the_affinity_message) {
  fp_topology *t = NULL;
  char before[600];
  ck_assert_int_lt(fp_affinity_pin(4000), 0);
  snprintf(before, sizeof before, "%s", fp_affinity_error());
  ck_assert_uint_gt(strlen(before), 0);
  ck_assert_int_eq(fp_topology_get(&t), 0);
  ck_assert_str_eq(fp_affinity_error(), before);
  fp_topology_free(t);
}
END_TEST

START_TEST(plan_on_this_machine) {
  fp_cpuset s = current_mask();
  int n = fp_cpuset_count(&s), nw = 2 * n + 1;
  int plan[2 * FP_CPU_MAX + 1];
  char err[256];

  ck_assert_int_eq(
      fp__affinity_plan(FP_PIN_COMPACT, NULL, 0, nw, plan, err, sizeof err), 0);
  for (int i = 0; i < nw; i++)
    ck_assert_int_eq(plan[i], fp_cpuset_nth(&s, i % n));
  ck_assert_int_eq(
      fp__affinity_plan(FP_PIN_SCATTER, NULL, 0, nw, plan, err, sizeof err), 0);
  for (int i = 0; i < nw; i++)
    ck_assert(fp_cpuset_isset(&s, plan[i]));
  ck_assert_int_eq(
      fp__affinity_plan(FP_PIN_NONE, NULL, 0, nw, plan, err, sizeof err), 0);
  ck_assert_int_eq(plan[0], -1);

  int bad = FP_CPU_MAX - 1;
  while (bad >= 0 && fp_cpuset_isset(&s, bad))
    bad--;
  int list[2] = {fp_cpuset_nth(&s, 0), bad};
  ck_assert_int_eq(
      fp__affinity_plan(FP_PIN_LIST, list, 2, 2, plan, err, sizeof err),
      FP_EINVAL);
  char allowed[FP_CPULIST_MAX], want[FP_CPULIST_MAX + 64];
  fp_cpulist_format(&s, allowed, sizeof allowed);
  snprintf(want, sizeof want, "pin_cpus[1] = %d: CPU %d not in usable set %s",
           bad, bad, allowed);
  ck_assert_str_eq(err, want);
  ck_assert_int_eq(
      fp__affinity_plan(FP_PIN_NONE, NULL, 0, 0, plan, err, sizeof err),
      FP_EINVAL);
}
END_TEST

START_TEST(apply_pins_worker_and_minus_one_is_noop) {
  fp_cpuset start = current_mask();
  ck_assert_int_eq(fp__affinity_apply(-1), 0);
  fp_cpuset after = current_mask();
  ck_assert(fp_cpuset_equal(&after, &start));

  int last = fp_cpuset_nth(&start, fp_cpuset_count(&start) - 1);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    cpu_set_t k;
    if (fp__affinity_apply(last) != 0)
      _exit(1);
    if (sched_getaffinity(0, sizeof k, &k) != 0 || CPU_COUNT(&k) != 1 ||
        !CPU_ISSET(last, &k))
      _exit(2);
    if (fp__affinity_apply(FP_CPU_MAX) != FP_EINVAL)
      _exit(3);
    _exit(0);
  }
  ck_assert_int_eq(wait_child(pid), 0);
}
END_TEST

/* ---- suite ----------------------------------------------------------------
 */

Suite *affinity_suite(void) {
  Suite *s = suite_create("affinity");
  TCase *tc;

  tc = tcase_create("cpulist");
  tcase_set_timeout(tc, 10);
  tcase_add_checked_fixture(tc, NULL, fp_test_no_children);
  tcase_add_test(tc, cpuset_helpers_work_and_range_check);
  tcase_add_test(tc, cpuset_helpers_refuse_null);
  tcase_add_test(tc, pin_list_count_overflow_is_einval);
  tcase_add_test(tc, cpulist_parse_valid_list);
  tcase_add_test(tc, cpulist_parse_single_cpu);
  tcase_add_test(tc, cpulist_parse_overlapping_and_blanks);
  tcase_add_test(tc, cpulist_parse_reversed_range_fails);
  tcase_add_test(tc, cpulist_parse_garbage_fails);
  tcase_add_test(tc, cpulist_parse_empty_is_empty_set);
  tcase_add_test(tc, cpulist_parse_trailing_comma_fails);
  tcase_add_test(tc, cpulist_parse_huge_numbers_fail_with_erange);
  tcase_add_test(tc, cpulist_format_canonical_and_round_trips);
  tcase_add_test(tc, cpulist_format_small_buffer_fails);
  suite_add_tcase(s, tc);

  tc = tcase_create("topology");
  tcase_set_timeout(tc, 10);
  tcase_add_checked_fixture(tc, fixture_setup, fixture_teardown);
  tcase_add_test(tc, topology_matches_this_machine);
  tcase_add_test(tc, cpu_count_is_usable_capped_at_least_one);
  tcase_add_test(tc, cpu_count_sees_narrowed_mask_in_child);
  tcase_add_test(tc, fixture_smt_siblings_found);
  tcase_add_test(tc, fixture_scatter_order_fills_cores_first);
  tcase_add_test(tc, fixture_split_numbering_scatter_is_cpu_order);
  tcase_add_test(tc, fixture_missing_files_degrade);
  tcase_add_test(tc, fixture_cgroup_v2_quota_caps_effective);
  tcase_add_test(tc, fixture_cgroup_v1_quota);
  tcase_add_test(tc, cgroup_cpu_max_parsing);
  suite_add_tcase(s, tc);

  tc = tcase_create("pin");
  tcase_set_timeout(tc, 10);
  tcase_add_checked_fixture(tc, fixture_setup, fixture_teardown);
  tcase_add_test(tc, pin_allowed_cpu_gives_exactly_it);
  tcase_add_test(tc, pin_outside_allowed_set_fails_with_message);
  tcase_add_test(tc, affinity_set_and_get_error_paths);
  tcase_add_test(tc, current_cpu_is_usable);
  tcase_add_test(tc, plan_compact_list_none_on_fixture);
  tcase_add_test(tc, plan_on_this_machine);
  tcase_add_test(tc, topology_get_keeps_the_affinity_message);
  tcase_add_test(tc, apply_pins_worker_and_minus_one_is_noop);
  suite_add_tcase(s, tc);
  return s;
}
