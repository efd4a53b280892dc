#!/usr/bin/python3
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
of times for 1 .. 2 x CPUs jobs.

Ends with: RESULT bogosort seq=<s> par=<s> speedup=<x> check=ok|FAIL
"""
import argparse
import os
import random
import sys
import time

import numpy as np
from joblib import Parallel, delayed

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


def run(jobs, n_jobs, verbose):
    parts = np.array_split(np.arange(len(jobs)), n_jobs)
    out = Parallel(n_jobs=n_jobs, verbose=verbose)(
        delayed(sort_partition)([jobs[i] for i in p]) for p in parts)
    return [r for part in out for r in part]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--full", action="store_true", help="the seed's 1000 arrays")
    ap.add_argument("--table", action="store_true",
                    help="time 1 .. 2 x CPUs jobs")
    ap.add_argument("--quiet", action="store_true")
    opt = ap.parse_args()
    say = (lambda *a: None) if opt.quiet else print
    n = 1000 if opt.full else 100
    gen = random.Random(42)
    jobs = [([gen.randrange(100) for _ in range(LEN)], gen.getrandbits(64))
            for _ in range(n)]
    say(f"bogosort: {n} arrays of {LEN} ints in [0, 100), {opt.workers} workers")

    t = time.perf_counter()
    seq_out = sort_partition(jobs)
    seq = time.perf_counter() - t
    total = sum(s for _, s in seq_out)
    say(f"  sequential: {seq:.3f} s, {total} shuffles in all "
        f"({total / n:.0f} per array)")

    say(f"  parallel, {opt.workers} partitions (np.array_split):")
    t = time.perf_counter()
    par_out = run(jobs, opt.workers, 10)
    par = time.perf_counter() - t
    ok = par_out == seq_out and all(is_sorted(a) for a, _ in par_out)

    if opt.table:
        cpus = len(os.sched_getaffinity(0))
        say("  workers  time (s)  speedup")
        for w in range(1, 2 * cpus + 1):
            t = time.perf_counter()
            ok &= run(jobs, w, 0) == seq_out
            tw = time.perf_counter() - t
            say(f"  {w:7d}  {tw:8.3f}  {seq / tw:6.2f}x"
                f"{'  <- CPUs' if w == cpus else ''}")
    say(f"  sequential {seq:8.3f} s\n  parallel   {par:8.3f} s  "
        f"({opt.workers} workers)\n  speedup    {seq / par:8.2f}x\n"
        f"  check      {'ok' if ok else 'FAIL'}")
    print(f"RESULT bogosort seq={seq:.3f} par={par:.3f} speedup={seq / par:.2f} "
          f"check={'ok' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
