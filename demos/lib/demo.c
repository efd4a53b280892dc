/* SPDX-License-Identifier: MIT */
/* demo.c - helpers shared by the demo programs (see demo.h).
 *
 * Nothing here is specific to one demo: option parsing, timing, the
 * RESULT line, error exits and the random number generator. The generator
 * is xoshiro256** (Blackman and Vigna, public domain reference code at
 * prng.di.unimi.it) seeded through splitmix64; it is fast, has a 2^256
 * period and, unlike rand(), gives the same stream on every libc, so the
 * datasets the demos build are the same everywhere.
 */
#include "lib/demo.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Prints the usage text to f: the common options, the demo's own (more,
 * may be NULL) and the demo's description line (extra, may be NULL). */
static void usage(FILE *f, const char *prog, const char *extra,
                  const demo_option *more) {
  fprintf(f,
          "usage: %s [--workers N] [--full] [--quiet] [--repeat N] "
          "[--transport local|mpi]%s\n"
          "  --workers N  worker processes (default: usable CPUs, %d here)\n"
          "  --full       the seed example's original sizes\n"
          "  --quiet      print only the RESULT line\n"
          "  --repeat N   time each side N times, report the median "
          "(default 3)\n"
          "  --transport mpi  workers on the ranks of `mpirun -n N`; then\n"
          "               --workers is per worker rank (default: its CPUs)\n",
          prog, more != NULL && more[0].name != NULL ? " [options]" : "",
          fp_cpu_count());
  for (int i = 0; more != NULL && more[i].name != NULL; i++)
    fprintf(f, "  --%s N  %s (default %d)\n", more[i].name, more[i].help,
            *more[i].value);
  if (extra != NULL)
    fprintf(f, "%s\n", extra);
}

/* Parses a whole decimal integer in [lo, hi] from s into *out; returns 0,
 * or -1 when s is not one. */
static int parse_int(const char *s, long lo, long hi, int *out) {
  char *end;
  long n;
  errno = 0;
  n = strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || n < lo || n > hi)
    return -1;
  *out = (int)n;
  return 0;
}

enum { OPT_MORE = 256 }; /* getopt_long value of more[i]: OPT_MORE + i */
#define MORE_MAX 8

void demo_parse_ex(int argc, char **argv, demo_opts *o, const char *extra,
                   const demo_option *more) {
  static const struct option common[] = {
      {"workers", required_argument, NULL, 'w'},
      {"full", no_argument, NULL, 'f'},
      {"quiet", no_argument, NULL, 'q'},
      {"repeat", required_argument, NULL, 'r'},
      {"transport", required_argument, NULL, 't'},
      {"help", no_argument, NULL, 'h'}};
  struct option longopts[sizeof common / sizeof common[0] + MORE_MAX + 1];
  size_t n = sizeof common / sizeof common[0];
  int c, workers_given = 0;

  memcpy(longopts, common, sizeof common);
  for (int i = 0; more != NULL && more[i].name != NULL && i < MORE_MAX; i++)
    longopts[n++] =
        (struct option){more[i].name, required_argument, NULL, OPT_MORE + i};
  memset(&longopts[n], 0, sizeof longopts[n]);
  memset(o, 0, sizeof *o);
  o->workers = fp_cpu_count();
  o->repeat = 3;
  opterr = 0; /* our own messages */
  /* ":" first: a missing argument is ':', an unknown option '?'. */
  while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
    if (c >= OPT_MORE && c < OPT_MORE + MORE_MAX) {
      const demo_option *d = &more[c - OPT_MORE];
      if (parse_int(optarg, d->min, d->max, d->value) != 0) {
        fprintf(stderr, "%s: bad --%s '%s' (%d to %d)\n", argv[0], d->name,
                optarg, d->min, d->max);
        exit(2);
      }
      continue;
    }
    switch (c) {
    case 'w':
      if (parse_int(optarg, 1, 1024, &o->workers) != 0) {
        fprintf(stderr, "%s: bad worker count '%s' (1 to 1024)\n", argv[0],
                optarg);
        exit(2);
      }
      workers_given = 1;
      break;
    case 't':
      if (strcmp(optarg, "local") != 0 && strcmp(optarg, "mpi") != 0) {
        fprintf(stderr, "%s: bad transport '%s' (local or mpi)\n", argv[0],
                optarg);
        exit(2);
      }
      o->transport = optarg[0] == 'm' ? FP_TRANSPORT_MPI : FP_TRANSPORT_LOCAL;
      break;
    case 'r':
      if (parse_int(optarg, 1, DEMO_REPEAT_MAX, &o->repeat) != 0) {
        fprintf(stderr, "%s: bad repeat count '%s' (1 to %d)\n", argv[0],
                optarg, DEMO_REPEAT_MAX);
        exit(2);
      }
      break;
    case 'f':
      o->full = 1;
      break;
    case 'q':
      o->quiet = 1;
      break;
    case 'h':
      usage(stdout, argv[0], extra, more);
      exit(0);
    default:
      fprintf(stderr, "%s: %s '%s'\n", argv[0],
              c == ':' ? "option needs an argument:" : "unknown option",
              argv[optind - 1]);
      usage(stderr, argv[0], extra, more);
      exit(2);
    }
  }
  if (optind < argc) { /* no positional arguments */
    fprintf(stderr, "%s: unexpected argument '%s'\n", argv[0], argv[optind]);
    usage(stderr, argv[0], extra, more);
    exit(2);
  }
  /* Under MPI this machine's CPU count says nothing about the others'. */
  if (o->transport == FP_TRANSPORT_MPI && !workers_given)
    o->workers = 0;
}

void demo_parse(int argc, char **argv, demo_opts *o, const char *extra) {
  demo_parse_ex(argc, argv, o, extra, NULL);
}

void demo_set_work(demo_opts *o, double items, double ceiling) {
  o->items = items;
  o->ceiling = ceiling;
}

double demo_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void demo_say(const demo_opts *o, const char *fmt, ...) {
  va_list ap;
  if (o->quiet)
    return;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  fflush(stdout);
}

/* qsort order of doubles. */
static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double demo_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double demo_ceiling_for(int workers) {
  int cpus = fp_cpu_count();
  return workers < cpus ? workers : cpus;
}

double demo_ceiling(const demo_opts *o) {
  return o->ceiling > 0 ? o->ceiling : demo_ceiling_for(o->workers);
}

const char *demo_noise(int workers, double speedup, double ceiling) {
  double usable = demo_ceiling_for(workers);
  if (ceiling <= 0 || ceiling > usable)
    ceiling = usable;
  /* Compared as printed (two decimals): 2.004x on two workers prints as
   * 2.00x and is not flagged, 2.01x is. */
  return lround(speedup * 100) > lround(ceiling * 100) ? ", noisy, rerun" : "";
}

int demo_check(int rc, const char *what) {
  if (rc >= 0)
    return rc;
  fflush(stdout);
  fprintf(stderr, "%s: %s: %s", what, fp_err_name(rc), fp_strerror(rc));
  if (fp_last_error()[0] != '\0')
    fprintf(stderr, " (%s)", fp_last_error());
  fprintf(stderr, "\n");
  exit(2);
}

int demo_result(const demo_opts *o, const char *name, double seq, double par,
                int ok) {
  double speedup = par > 0 ? seq / par : 0;
  double ceiling = demo_ceiling(o);
  const char *noise = demo_noise(o->workers, speedup, ceiling);
  demo_say(o,
           "  sequential %8.3f s  (median of %d)\n"
           "  parallel   %8.3f s  (%d workers, median of %d)\n"
           "  speedup    %8.2fx  (efficiency %.0f%%, ceiling %.2fx%s)\n"
           "  check      %s\n",
           seq, o->repeat, par, o->workers, o->repeat, speedup,
           100 * speedup / demo_ceiling_for(o->workers), ceiling, noise,
           ok ? "ok" : "FAIL");
  printf("RESULT %s seq=%.4f par=%.4f speedup=%.2f check=%s workers=%d "
         "repeat=%d items=%.0f ceiling=%.2f%s\n",
         name, seq, par, speedup, ok ? "ok" : "FAIL", o->workers, o->repeat,
         o->items, ceiling, noise[0] ? " note=noisy" : "");
  fflush(stdout);
  return ok ? 0 : 1;
}

/* The OpenMP reference runs once (a reference, not a side with a median):
 * when forkpool's median beats it by more than 10 %, that one run was
 * most likely slowed by other work on the machine, and the line says so
 * rather than let a noisy figure pass for a result. */
void demo_openmp(const demo_opts *o, double seq, double par, double omp) {
  double reach = 100 * omp / par;
  demo_say(o,
           "  OpenMP, same kernel, %d threads: %.3f s, speedup %.2fx; "
           "forkpool reaches %.0f%% of it%s\n",
           o->workers, omp, seq / omp, reach,
           reach > 110 ? " (one OpenMP run, not a median: other load on "
                         "the machine likely slowed it)"
                       : "");
}

fp_pool *demo_pool(const demo_opts *o, fp_progress_mode progress,
                   int inflight) {
  fp_pool_opts po;
  fp_pool *pool = NULL;
  memset(&po, 0, sizeof po);
  po.processes = o->workers;
  po.progress = progress;
  po.inflight = inflight;
  po.transport = o->transport;
  demo_check(fp_pool_new(&pool, &po), "fp_pool_new");
  return pool;
}

fp_pool *demo_pool_size(demo_opts *o, fp_pool *pool) {
  o->workers = fp_pool_size(pool);
  return pool;
}

uint64_t demo_splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void demo_rng_seed(demo_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++)
    r->s[i] = demo_splitmix64(&seed);
}

/* Rotates x left by k bits (0 < k < 64). */
static inline uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

uint64_t demo_rng_next(demo_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double demo_rng_uniform(demo_rng *r) {
  return (double)(demo_rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t demo_rng_below(demo_rng *r, uint64_t n) {
  /* Lemire's multiply-shift with rejection of the biased low range. */
  uint64_t x = demo_rng_next(r);
  __uint128_t m = (__uint128_t)x * n;
  uint64_t low = (uint64_t)m;
  if (low < n) {
    uint64_t floor = -n % n;
    while (low < floor) {
      x = demo_rng_next(r);
      m = (__uint128_t)x * n;
      low = (uint64_t)m;
    }
  }
  return (uint64_t)(m >> 64);
}

double demo_rng_normal(demo_rng *r) {
  double u1 = demo_rng_uniform(r), u2 = demo_rng_uniform(r);
  if (u1 < 1e-300)
    u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
