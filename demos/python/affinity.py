#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""affinity.py - the seed's CPU-affinity example, twin of demos/affinity.c.

Each task pins its worker process to one CPU with
psutil.Process().cpu_affinity([cpu]) and then runs the seed's loop, which
computes n*(n+1)/2 n times. The ranges [1e8, 2e8, 3e8] run once
sequentially and once as pool tasks, task k pinned to the k-th usable CPU
(wrapping when there are fewer CPUs than tasks). Prints the CPU each task
ran on, the times, the speedup and a correctness check; exits 1 if the
check fails.

Default sizes are the seed's divided by 10 so the demo takes seconds, not
minutes (the C demo runs 3 times the seed's: compare them per iteration);
--full runs the seed's sizes. --workers N sets the pool size. Each side
runs --repeat times (3 by default); the medians are reported. Ends with the
RESULT line of demo_common.py.
"""
import os
import sys
import time
from multiprocessing import Pool

import psutil

import demo_common as dc


def compute(args):
    n, cpu = args
    psutil.Process().cpu_affinity([cpu])
    t0 = time.perf_counter()
    result = 0
    for i in range(n):
        result = n * (n + 1) / 2
    ran_on = psutil.Process().cpu_num()
    return n, cpu, ran_on, result, time.perf_counter() - t0


def list_ceiling(sizes, workers):
    """The best speedup when each task goes, in order, to the first free
    worker (at most one per usable CPU): 1.5x for these sizes on two."""
    busy = [0] * min(dc.ceiling_for(workers), len(sizes))
    for n in sizes:
        busy[busy.index(min(busy))] += n
    return sum(sizes) / max(busy)


def main():
    opt = dc.parser(__doc__.splitlines()[0]).parse_args()
    say = dc.say_fn(opt)
    sizes = [100_000_000, 200_000_000, 300_000_000]
    if not opt.full:
        sizes = [s // 10 for s in sizes]
    usable = sorted(os.sched_getaffinity(0))
    cpus = [usable[k % len(usable)] for k in range(len(sizes))]
    ceiling = list_ceiling(sizes, opt.workers)
    say(f"usable CPUs: {len(usable)}, workers: {opt.workers}, sizes: "
        f"{' '.join(map(str, sizes))}; median of {opt.repeat} runs")
    say(f"  tasks go to the first free worker in order: speedup at most "
        f"{ceiling:.2f}x")

    seq_t, par_t = [], []
    for _ in range(opt.repeat):
        t0 = time.perf_counter()
        seq = [compute((n, cpu)) for n, cpu in zip(sizes, cpus)]
        os.sched_setaffinity(0, usable)  # the sequential run pinned us; undo
        seq_t.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        with Pool(opt.workers) as pool:
            par = pool.map(compute, list(zip(sizes, cpus)), chunksize=1)
        par_t.append(time.perf_counter() - t0)

    ok = True
    for (n, cpu, ran, result, secs), s in zip(par, seq):
        good = result == n * (n + 1) / 2 and result == s[3] and ran == cpu
        ok = ok and good
        say(f"task n={n}: pinned to CPU {cpu}, ran on CPU {ran}, "
            f"result={result:.0f}, {secs:.3f}s {'ok' if good else 'FAIL'}")
    return dc.result(opt, "affinity", dc.median(seq_t), dc.median(par_t), ok,
                     sum(sizes), ceiling)


if __name__ == "__main__":
    sys.exit(main())
