#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""cumsum.py - the seed's first example, twin of demos/cumsum.c.

sum(range(1, n + 1)) for five n around 10**8 (default: around 4 * 10**7, the
same sizes as the C demo), first in a plain loop, then with Pool.map and
with joblib. Five tasks on two workers need three rounds where the loop
needs five, so the speedup cannot pass 5/3 = 1.67.

The loop and Pool.map run --repeat times (3 by default); the medians are
reported. joblib runs once, after its workers started.
Ends with the RESULT line of demo_common.py (par is Pool.map's time;
joblib's is printed too).
"""
import sys
from multiprocessing import Pool

from joblib import Parallel, delayed

import demo_common as dc


def cumsum(n):
    return sum(range(1, n + 1))


def main():
    opt = dc.parser(__doc__.splitlines()[0]).parse_args()
    say = dc.say_fn(opt)
    base = 10**8 if opt.full else 4 * 10**7
    values = [base + i for i in range(5)]
    rounds = -(-len(values) // opt.workers)
    ceiling = len(values) / rounds  # the slowest worker runs `rounds` sums
    say(f"cumsum: sum(range(1, n+1)) for n = {values[0]} .. {values[-1]}, "
        f"{opt.workers} workers, median of {opt.repeat} runs")

    seq_t, par_t = [], []
    with Pool(opt.workers) as pool:
        for _ in range(opt.repeat):
            t, seq_out = dc.timed(lambda: [cumsum(n) for n in values])
            seq_t.append(t)
            t, par_out = dc.timed(pool.map, cumsum, values)
            par_t.append(t)
    seq, par = dc.median(seq_t), dc.median(par_t)

    # joblib: one run, after its workers have started (loky keeps them), so
    # that its time, like Pool.map's, leaves start-up out.
    Parallel(n_jobs=opt.workers)(delayed(int)(0) for _ in range(opt.workers))
    jl, jl_out = dc.timed(
        lambda: Parallel(n_jobs=opt.workers)(delayed(cumsum)(n) for n in values))

    want = [n * (n + 1) // 2 for n in values]
    ok = seq_out == want and par_out == want and jl_out == want
    for n, s in zip(values, par_out):
        say(f"  n={n}  sum={s}  closed form {'ok' if s == n * (n + 1) // 2 else 'MISMATCH'}")
    say(f"  {len(values)} tasks on {opt.workers} workers take {rounds} rounds "
        f"instead of {len(values)}: speedup at most {ceiling:.2f}x")
    say(f"  joblib Parallel(n_jobs={opt.workers}): {jl:.3f} s, speedup "
        f"{seq / jl:.2f}x{dc.noise(opt.workers, seq / jl, ceiling)}")
    return dc.result(opt, "cumsum", seq, par, ok, sum(values), ceiling)


if __name__ == "__main__":
    sys.exit(main())
