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

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Prints the usage text to f. */
static void usage(FILE *f, const char *prog, const char *extra) {
  fprintf(f,
          "usage: %s [--workers N] [--full] [--quiet]\n"
          "  --workers N  worker processes (default: usable CPUs, %d here)\n"
          "  --full       the seed example's original sizes (slower)\n"
          "  --quiet      print only the RESULT line\n",
          prog, fp_cpu_count());
  if (extra != NULL)
    fprintf(f, "%s\n", extra);
}

void demo_parse(int argc, char **argv, demo_opts *o, const char *extra) {
  memset(o, 0, sizeof *o);
  o->workers = fp_cpu_count();
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--full") == 0) {
      o->full = 1;
    } else if (strcmp(a, "--quiet") == 0) {
      o->quiet = 1;
    } else if (strcmp(a, "--workers") == 0 && i + 1 < argc) {
      char *end;
      long n = strtol(argv[++i], &end, 10);
      if (*end != '\0' || n < 1 || n > 1024) {
        fprintf(stderr, "%s: bad worker count '%s'\n", argv[0], argv[i]);
        exit(2);
      }
      o->workers = (int)n;
    } else if (strncmp(a, "--workers=", 10) == 0) {
      char *end;
      long n = strtol(a + 10, &end, 10);
      if (*end != '\0' || n < 1 || n > 1024) {
        fprintf(stderr, "%s: bad worker count '%s'\n", argv[0], a + 10);
        exit(2);
      }
      o->workers = (int)n;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout, argv[0], extra);
      exit(0);
    } else {
      usage(stderr, argv[0], extra);
      exit(2);
    }
  }
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
  demo_say(o,
           "  sequential %8.3f s\n"
           "  parallel   %8.3f s  (%d workers)\n"
           "  speedup    %8.2fx\n"
           "  check      %s\n",
           seq, par, o->workers, speedup, ok ? "ok" : "FAIL");
  printf("RESULT %s seq=%.3f par=%.3f speedup=%.2f check=%s\n", name, seq, par,
         speedup, ok ? "ok" : "FAIL");
  fflush(stdout);
  return ok ? 0 : 1;
}

void demo_openmp(const demo_opts *o, double seq, double par, double omp) {
  demo_say(o,
           "  OpenMP, same kernel, %d threads: %.3f s, speedup %.2fx; "
           "forkpool reaches %.0f%% of it\n",
           o->workers, omp, seq / omp, 100 * omp / par);
}

fp_pool *demo_pool(const demo_opts *o, fp_progress_mode progress,
                   int inflight) {
  fp_pool_opts po;
  fp_pool *pool = NULL;
  memset(&po, 0, sizeof po);
  po.processes = o->workers;
  po.progress = progress;
  po.inflight = inflight;
  demo_check(fp_pool_new(&pool, &po), "fp_pool_new");
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
