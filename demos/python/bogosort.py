#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""bogosort.py - the seed's joblib Parallel(verbose) example, twin of
demos/bogosort.c.

Arrays of 8 random ints in [0, 100) are sorted by bogosort (shuffle until
sorted), each with its own seeded random.Random, so the sequential and
parallel runs go through the same shuffles. The arrays are split into one
partition per job with np.array_split, as in the seed, and joblib's verbose
output reports progress.

Sizes: the C demo sorts the seed's 1000 arrays by default; at about 50 ms
per array in CPython that is close to a minute, so the default here is 100
arrays and --full gives the seed's 1000. --table adds the C demo's table
of times for 1 .. 2 x CPUs jobs, each row printed with --quiet as
"WORKERS bogosort w=<n> time=<s> items=<arrays>" for demos/compare.sh.

Each side runs --repeat times (3 by default); the medians are reported.
The table's other rows are medians of --table-repeat runs (1 by default,
as in the C demo). Ends with the RESULT line of demo_common.py.
"""
import os
import random
import sys

import numpy as np
from joblib import Parallel, delayed

import demo_common as dc

LEN = 8


def is_sorted(a):
    return all(a[i - 1] <= a[i] for i in range(1, len(a)))


def bogosort(a, seed):
    rng = random.Random(seed)
    a = list(a)
    shuffles = 0
    while not is_sorted(a):
        rng.shuffle(a)
        shuffles += 1
    return a, shuffles


def sort_partition(part):
    return [bogosort(a, seed) for a, seed in part]


def warm(n_jobs):
    """Starts joblib's n_jobs workers (loky keeps them between calls), so
    that the timed runs do not include their start-up: the C demo times
    its pool after starting it too."""
    Parallel(n_jobs=n_jobs)(delayed(int)(0) for _ in range(n_jobs))


def run(jobs, n_jobs, verbose):
    parts = np.array_split(np.arange(len(jobs)), n_jobs)
    out = Parallel(n_jobs=n_jobs, verbose=verbose)(
        delayed(sort_partition)([jobs[i] for i in p]) for p in parts)
    return [r for part in out for r in part]


def main():
    ap = dc.parser(__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true",
                    help="time 1 .. 2 x CPUs jobs")
    ap.add_argument("--table-repeat", type=dc.int_in(1, 99),
                    default=1, metavar="N",
                    help="runs per row of the table (1 to 99, default 1)")
    opt = ap.parse_args()
    say = dc.say_fn(opt)
    n = 1000 if opt.full else 100
    gen = random.Random(42)
    jobs = [([gen.randrange(100) for _ in range(LEN)], gen.getrandbits(64))
            for _ in range(n)]
    say(f"bogosort: {n} arrays of {LEN} ints in [0, 100), {opt.workers} "
        f"workers, median of {opt.repeat} runs")

    seq_t = []
    for _ in range(opt.repeat):
        t, seq_out = dc.timed(sort_partition, jobs)
        seq_t.append(t)
    seq = dc.median(seq_t)
    total = sum(s for _, s in seq_out)
    say(f"  sequential: {seq:.3f} s, {total} shuffles in all "
        f"({total / n:.0f} per array)")

    say(f"  parallel, {opt.workers} partitions (np.array_split):")
    ok = True
    par_t = []
    warm(opt.workers)
    for rep in range(opt.repeat):  # joblib's verbose lines on the first
        t, par_out = dc.timed(run, jobs, opt.workers, 10 if rep == 0 else 0)
        par_t.append(t)
        ok &= par_out == seq_out and all(is_sorted(a) for a, _ in par_out)
    par = dc.median(par_t)

    if opt.table:
        cpus = dc.usable_cpus()
        say("  workers  time (s)  speedup")
        for w in range(1, 2 * cpus + 1):
            if w == opt.workers:  # the parallel run above
                tw = par
            else:
                times = []
                warm(w)
                for _ in range(opt.table_repeat):
                    t, out = dc.timed(run, jobs, w, 0)
                    times.append(t)
                    ok &= out == seq_out
                tw = dc.median(times)
            say(f"  {w:7d}  {tw:8.3f}  {seq / tw:6.2f}x"
                f"{'  <- CPUs' if w == cpus else ''}{dc.noise(w, seq / tw)}")
            if opt.quiet:  # machine-readable, for demos/compare.sh
                print(f"WORKERS bogosort w={w} time={tw:.4f} items={n}",
                      flush=True)
    return dc.result(opt, "bogosort", seq, par, ok, n)


if __name__ == "__main__":
    sys.exit(main())
