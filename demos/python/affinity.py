#!/usr/bin/python3
"""affinity.py - the seed's CPU-affinity example, twin of demos/affinity.c.

Each task pins its worker process to one CPU with
psutil.Process().cpu_affinity([cpu]) and then runs the seed's loop, which
computes n*(n+1)/2 n times. The ranges [1e8, 2e8, 3e8] run once
sequentially and once as pool tasks, task k pinned to the k-th usable CPU
(wrapping when there are fewer CPUs than tasks). Prints the CPU each task
ran on, the times, the speedup and a correctness check; exits 1 if the
check fails.

Default sizes are the seed's divided by 10 so the demo takes seconds, not
minutes; --full runs the seed's sizes. --workers N sets the pool size.
"""
import argparse
import os
import sys
import time
from multiprocessing import Pool

import psutil


def compute(args):
    n, cpu = args
    psutil.Process().cpu_affinity([cpu])
    t0 = time.perf_counter()
    result = 0
    for i in range(n):
        result = n * (n + 1) / 2
    ran_on = psutil.Process().cpu_num()
    return n, cpu, ran_on, result, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="the seed's sizes")
    ap.add_argument("--workers", type=int, default=0)
    opt = ap.parse_args()

    sizes = [100_000_000, 200_000_000, 300_000_000]
    if not opt.full:
        sizes = [s // 10 for s in sizes]
    usable = sorted(os.sched_getaffinity(0))
    cpus = [usable[k % len(usable)] for k in range(len(sizes))]
    workers = opt.workers or len(usable)

    t0 = time.perf_counter()
    seq = [compute((n, cpu)) for n, cpu in zip(sizes, cpus)]
    os.sched_setaffinity(0, usable)  # the sequential run pinned us; undo
    t_seq = time.perf_counter() - t0

    t0 = time.perf_counter()
    with Pool(workers) as pool:
        par = pool.map(compute, list(zip(sizes, cpus)), chunksize=1)
    t_par = time.perf_counter() - t0

    ok = True
    for (n, cpu, ran, result, secs), s in zip(par, seq):
        good = result == n * (n + 1) / 2 and result == s[3] and ran == cpu
        ok = ok and good
        print(f"task n={n}: pinned to CPU {cpu}, ran on CPU {ran}, "
              f"result={result:.0f}, {secs:.3f}s {'ok' if good else 'FAIL'}")
    print(f"RESULT affinity seq={t_seq:.3f} par={t_par:.3f} "
          f"speedup={t_seq / t_par:.2f} check={'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
