/* SPDX-License-Identifier: MIT */
/* demo.h - helpers shared by the demo programs (demos/NAME.c).
 *
 * Every demo parses the same options (--workers N, --full, --quiet,
 * --repeat N, --transport local|mpi) with getopt_long, times a
 * sequential and a parallel version of one computation --repeat times (3
 * by default) and reports the median of each side, checks that both
 * agree, and ends with one machine-readable line that demos/run.sh and
 * demos/compare.sh grep:
 *
 *   RESULT <name> seq=<s> par=<s> speedup=<x> check=ok|FAIL workers=<n>
 *          repeat=<n> items=<n> ceiling=<x> [note=noisy]
 *
 * (one line). items counts the units of work each side did (integers
 * summed, arrays sorted ...), so that a run can be compared per item with
 * its Python twin when the sizes differ; ceiling is the best speedup the
 * demo can reach. A speedup above the ceiling, or an efficiency (speedup
 * per usable worker) above 100 %, cannot be real: it is printed as
 * "noisy, rerun" and marked note=noisy.
 *
 * This header gathers what they share: the option parser, a monotonic
 * clock, medians, the result line, a die-on-error helper for forkpool
 * calls and a small deterministic random number generator (splitmix64 to
 * seed, xoshiro256** to draw), so that sequential and parallel runs, and
 * runs on different machines, see exactly the same data.
 */
#ifndef DEMO_H
#define DEMO_H

#include <stdint.h>

#include "forkpool.h"

/* Most runs of one side --repeat accepts. */
#define DEMO_REPEAT_MAX 99

typedef struct demo_opts {
  int workers;    /* --workers N; default fp_cpu_count() */
  int full;       /* --full: the seed example's original sizes */
  int quiet;      /* --quiet: only the RESULT line and errors */
  int repeat;     /* --repeat N: runs per timed side, median shown; default 3 */
  double items;   /* units of work per side, for the RESULT line (0: none) */
  double ceiling; /* best possible speedup; 0: demo_ceiling() */
  /* --transport mpi: the pool spans the ranks of `mpirun -n N demo` (the
   * library finds libforkpool_mpi at run time, FP_MPI_LIBRARY; see
   * docs/mpi.md). Every rank runs main up to demo_pool(), which never
   * returns on worker ranks, so a demo makes its pool before it prints or
   * times anything. --workers N is then the workers of each worker rank
   * (default 0: that node's CPUs); after demo_pool(), o->workers is the
   * pool's total (demo_pool_size()). */
  fp_transport transport;
} demo_opts;

/* Parses argv into *o with getopt_long (--workers N, --full, --quiet,
 * --repeat N, --transport local|mpi, --help; "--workers=N" works too).
 * Unknown options and bad values print the usage (with `extra`, a line
 * describing the demo, may be NULL) to stderr and exit with status 2;
 * --help prints it to stdout and exits 0. */
void demo_parse(int argc, char **argv, demo_opts *o, const char *extra);

/* An integer option of one demo, e.g. bogosort's --table-repeat N. */
typedef struct demo_option {
  const char *name; /* without the dashes */
  int *value;       /* holds the default; set when the option is given */
  int min, max;     /* accepted range */
  const char *help; /* one usage line */
} demo_option;

/* demo_parse, plus the options in more[] (terminated by a NULL name, at
 * most 8): "--name N" or "--name=N", checked against [min, max]. */
void demo_parse_ex(int argc, char **argv, demo_opts *o, const char *extra,
                   const demo_option *more);

/* Records what the RESULT line reports besides the times: the units of
 * work each side did and the demo's own speedup ceiling (0: as many as
 * the usable workers, demo_ceiling()). */
void demo_set_work(demo_opts *o, double items, double ceiling);

/* Returns CLOCK_MONOTONIC in seconds. */
double demo_now(void);

/* Returns the median of the n > 0 values at v (sorting v in place). */
double demo_median(double *v, int n);

/* Returns the speedup `workers` workers can reach at best here: their
 * number, capped by the CPUs this process may use. */
double demo_ceiling_for(int workers);
double demo_ceiling(const demo_opts *o);

/* Returns "" when a speedup is plausible, else ", noisy, rerun": it is
 * above `ceiling` (0: demo_ceiling_for(workers)) or above the usable
 * workers (an efficiency above 100 %). For printing after a speedup. */
const char *demo_noise(int workers, double speedup, double ceiling);

/* printf to stdout unless --quiet was given. */
void demo_say(const demo_opts *o, const char *fmt, ...) FP_PRINTF(2, 3);

/* When rc < 0, prints "<what>: <error name>: <message> (<fp_last_error>)"
 * to stderr and exits with status 2. Returns rc otherwise. */
int demo_check(int rc, const char *what);

/* Prints the timing summary (medians of o->repeat runs, the speedup, its
 * efficiency, "noisy, rerun" when implausible) and the RESULT line;
 * returns the exit status the demo should end with: 0 when ok, 1
 * otherwise. */
int demo_result(const demo_opts *o, const char *name, double seq, double par,
                int ok);

/* Prints the OpenMP reference: the same kernel run by o->workers threads
 * in `omp` seconds, against the sequential and forkpool times. It tells a
 * slow pool from a busy machine: when OpenMP gains nothing either, the
 * cores were not free. */
void demo_openmp(const demo_opts *o, double seq, double par, double omp);

/* Creates a pool of o->workers workers with the given progress mode and
 * in-flight depth (0: the library default), on o->transport, or exits with
 * status 2. With FP_TRANSPORT_MPI it returns on rank 0 only. */
fp_pool *demo_pool(const demo_opts *o, fp_progress_mode progress, int inflight);

/* Sets o->workers to the pool's worker count (under MPI: the sum over the
 * worker ranks, which --workers does not say) and returns the pool. */
fp_pool *demo_pool_size(demo_opts *o, fp_pool *pool);

/* --- deterministic random numbers ------------------------------------- */

/* xoshiro256** state. Seed it with demo_rng_seed. */
typedef struct demo_rng {
  uint64_t s[4];
} demo_rng;

/* splitmix64: advances *x and returns the next value; also a good 64-bit
 * mixing function for deriving seeds (e.g. splitmix of seed ^ index). */
uint64_t demo_splitmix64(uint64_t *x);

/* Seeds r from one 64-bit value (through splitmix64, as recommended by
 * the xoshiro authors). */
void demo_rng_seed(demo_rng *r, uint64_t seed);

/* Returns the next 64 random bits. */
uint64_t demo_rng_next(demo_rng *r);

/* Returns a uniform double in [0, 1) with 53 random bits. */
double demo_rng_uniform(demo_rng *r);

/* Returns a uniform integer in [0, n), n > 0, without modulo bias. */
uint64_t demo_rng_below(demo_rng *r, uint64_t n);

/* Returns a standard normal deviate (Box-Muller, one value per call). */
double demo_rng_normal(demo_rng *r);

#endif
