#!/usr/bin/python3
"""cumsum.py - the seed's first example, twin of demos/cumsum.c.

sum(range(1, n + 1)) for five n around 10**8 (default: around 4 * 10**7, the
same sizes as the C demo), first in a plain loop, then with Pool.map and
with joblib. Five tasks on two workers need three rounds where the loop
needs five, so the speedup cannot pass 5/3 = 1.67.

Ends with: RESULT cumsum seq=<s> par=<s> speedup=<x> check=ok|FAIL
(par is Pool.map's time; joblib's is printed too).
"""
import argparse
import os
import sys
import time
from multiprocessing import Pool

from joblib import Parallel, delayed


def cumsum(n):
    return sum(range(1, n + 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--full", action="store_true", help="the seed's sizes")
    ap.add_argument("--quiet", action="store_true")
    opt = ap.parse_args()
    say = (lambda *a: None) if opt.quiet else print
    base = 10**8 if opt.full else 4 * 10**7
    values = [base + i for i in range(5)]
    say(f"cumsum: sum(range(1, n+1)) for n = {values[0]} .. {values[-1]}, "
        f"{opt.workers} workers")

    t = time.perf_counter()
    seq_out = [cumsum(n) for n in values]
    seq = time.perf_counter() - t

    with Pool(opt.workers) as pool:
        t = time.perf_counter()
        par_out = pool.map(cumsum, values)
        par = time.perf_counter() - t

    t = time.perf_counter()
    jl_out = Parallel(n_jobs=opt.workers)(delayed(cumsum)(n) for n in values)
    jl = time.perf_counter() - t

    want = [n * (n + 1) // 2 for n in values]
    ok = seq_out == want and par_out == want and jl_out == want
    for n, s in zip(values, par_out):
        say(f"  n={n}  sum={s}  closed form {'ok' if s == n * (n + 1) // 2 else 'MISMATCH'}")
    say(f"  joblib Parallel(n_jobs={opt.workers}): {jl:.3f} s, speedup {seq / jl:.2f}x")
    say(f"  sequential {seq:8.3f} s\n  parallel   {par:8.3f} s  (Pool.map, "
        f"{opt.workers} workers)\n  speedup    {seq / par:8.2f}x\n"
        f"  check      {'ok' if ok else 'FAIL'}")
    print(f"RESULT cumsum seq={seq:.3f} par={par:.3f} speedup={seq / par:.2f} "
          f"check={'ok' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
