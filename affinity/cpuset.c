/* SPDX-License-Identifier: MIT */
/* cpuset.c - fp_cpuset, a bitset of CPUs, and the Linux cpu-list syntax.
 *
 * An fp_cpuset is FP_CPU_MAX bits in 64-bit words, CPU n being bit n % 64 of
 * word n / 64. Every helper range-checks the CPU number, so no call can
 * touch memory outside the struct.
 *
 * fp_cpulist_parse() is a small hand-written scanner over the grammar
 *
 *   list  := blank* [ item ( blank* ',' blank* item )* ] blank*
 *   item  := num [ blank* '-' blank* num ]
 *   num   := digit+
 *
 * (blank = any isspace character, so a trailing newline from a sysfs file is
 * fine). Numbers are accumulated with saturation, so an arbitrarily long
 * digit string is reported as FP_ERANGE instead of overflowing an int. The
 * kernel's stride form ("0-7:2/4") is not accepted.
 *
 * fp_cpulist_format() writes maximal runs of consecutive CPUs as "a-b" and
 * single CPUs as "a"; its output parses back to the same set.
 */
#include "affinity/affinity.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

/* NULL sets are refused like any bad argument: an empty set to read,
 * FP_EINVAL to write. */
void fp_cpuset_zero(fp_cpuset *set) {
  if (set != NULL)
    memset(set, 0, sizeof *set);
}

static int cpu_ok(int cpu) {
  return cpu >= 0 && cpu < FP_CPU_MAX;
}

int fp_cpuset_set(fp_cpuset *set, int cpu) {
  if (set == NULL)
    return FP_EINVAL;
  if (!cpu_ok(cpu))
    return FP_ERANGE;
  set->bits[cpu / 64] |= UINT64_C(1) << (cpu % 64);
  return 0;
}

int fp_cpuset_clear(fp_cpuset *set, int cpu) {
  if (set == NULL)
    return FP_EINVAL;
  if (!cpu_ok(cpu))
    return FP_ERANGE;
  set->bits[cpu / 64] &= ~(UINT64_C(1) << (cpu % 64));
  return 0;
}

int fp_cpuset_isset(const fp_cpuset *set, int cpu) {
  if (set == NULL || !cpu_ok(cpu))
    return 0;
  return (int)((set->bits[cpu / 64] >> (cpu % 64)) & 1);
}

int fp_cpuset_count(const fp_cpuset *set) {
  int n = 0;
  if (set == NULL)
    return 0;
  for (size_t i = 0; i < FP_CPU_MAX / 64; i++)
    n += __builtin_popcountll(set->bits[i]);
  return n;
}

/* Walks the words, skipping whole words by their population count, then
 * clears the lowest set bit of the target word n times. */
int fp_cpuset_nth(const fp_cpuset *set, int n) {
  if (set == NULL || n < 0)
    return -1;
  for (size_t i = 0; i < FP_CPU_MAX / 64; i++) {
    uint64_t w = set->bits[i];
    int c = __builtin_popcountll(w);
    if (n >= c) {
      n -= c;
      continue;
    }
    while (n-- > 0)
      w &= w - 1;
    return (int)(i * 64) + __builtin_ctzll(w);
  }
  return -1;
}

int fp_cpuset_equal(const fp_cpuset *a, const fp_cpuset *b) {
  if (a == NULL || b == NULL)
    return a == b;
  return memcmp(a->bits, b->bits, sizeof a->bits) == 0;
}

static const char *skip_blanks(const char *p) {
  while (*p != '\0' && isspace((unsigned char)*p))
    p++;
  return p;
}

/* Scans a decimal number at *pp into *val, saturating at FP_CPU_MAX so that
 * any value out of range stays out of range. Returns 0, FP_EINVAL when no
 * digit is there, FP_ERANGE when the number is >= FP_CPU_MAX. Advances *pp
 * past the digits. */
static int scan_num(const char **pp, const char *start, int *val) {
  const char *p = *pp;
  long v = 0;
  if (!isdigit((unsigned char)*p)) {
    if (*p == '\0')
      fp__err_setf(FP__ERR_AFFINITY, "cpu-list \"%s\": number expected at end",
                   start);
    else
      fp__err_setf(FP__ERR_AFFINITY,
                   "cpu-list \"%s\": number expected at offset %d "
                   "('%c')",
                   start, (int)(p - start), *p);
    return FP_EINVAL;
  }
  while (isdigit((unsigned char)*p)) {
    if (v < FP_CPU_MAX)
      v = v * 10 + (*p - '0');
    p++;
  }
  if (v >= FP_CPU_MAX) {
    fp__err_setf(FP__ERR_AFFINITY,
                 "cpu-list \"%s\": CPU number at offset %d is not "
                 "below FP_CPU_MAX (%d)",
                 start, (int)(*pp - start), FP_CPU_MAX);
    *pp = p;
    return FP_ERANGE;
  }
  *pp = p;
  *val = (int)v;
  return 0;
}

int fp_cpulist_parse(const char *s, fp_cpuset *out) {
  const char *p;
  int rc;

  fp__err_clear(FP__ERR_AFFINITY);
  if (out == NULL || s == NULL) {
    fp__err_setf(FP__ERR_AFFINITY, "fp_cpulist_parse: NULL argument");
    return FP_EINVAL;
  }
  fp_cpuset_zero(out);
  p = skip_blanks(s);
  if (*p == '\0')
    return 0;
  for (;;) {
    int lo, hi;
    if ((rc = scan_num(&p, s, &lo)) != 0)
      goto fail;
    hi = lo;
    p = skip_blanks(p);
    if (*p == '-') {
      p = skip_blanks(p + 1);
      if ((rc = scan_num(&p, s, &hi)) != 0)
        goto fail;
      if (hi < lo) {
        fp__err_setf(FP__ERR_AFFINITY, "cpu-list \"%s\": reversed range %d-%d",
                     s, lo, hi);
        rc = FP_EINVAL;
        goto fail;
      }
      p = skip_blanks(p);
    }
    for (int c = lo; c <= hi; c++)
      fp_cpuset_set(out, c);
    if (*p == '\0')
      return 0;
    if (*p != ',') {
      fp__err_setf(FP__ERR_AFFINITY,
                   "cpu-list \"%s\": unexpected '%c' at offset %d", s, *p,
                   (int)(p - s));
      rc = FP_EINVAL;
      goto fail;
    }
    p = skip_blanks(p + 1);
  }
fail:
  fp_cpuset_zero(out);
  return rc;
}

/* Appends with bounds: returns 0, or FP_ERANGE when the text (plus its NUL)
 * would not fit in len bytes. */
static int append(char *buf, size_t len, size_t *pos, const char *fmt, int a,
                  int b) {
  int n = snprintf(buf + *pos, len - *pos, fmt, a, b);
  if (n < 0 || (size_t)n >= len - *pos)
    return FP_ERANGE;
  *pos += (size_t)n;
  return 0;
}

int fp_cpulist_format(const fp_cpuset *set, char *buf, size_t len) {
  size_t pos = 0;
  int cpu = 0;

  if (set == NULL || buf == NULL)
    return FP_EINVAL;
  if (len == 0)
    return FP_ERANGE;
  buf[0] = '\0';
  while (cpu < FP_CPU_MAX) {
    int lo, rc;
    if (!fp_cpuset_isset(set, cpu)) {
      cpu++;
      continue;
    }
    lo = cpu;
    while (cpu + 1 < FP_CPU_MAX && fp_cpuset_isset(set, cpu + 1))
      cpu++;
    if (lo == cpu)
      rc = append(buf, len, &pos, pos ? ",%d" : "%d", lo, 0);
    else
      rc = append(buf, len, &pos, pos ? ",%d-%d" : "%d-%d", lo, cpu);
    if (rc != 0) {
      buf[0] = '\0';
      return rc;
    }
    cpu++;
  }
  return (int)pos;
}
