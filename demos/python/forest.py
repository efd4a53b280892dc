#!/usr/bin/python3
"""forest.py - random forests trained in parallel, twin of demos/forest.c.

Data: sklearn's make_friedman1 (2,000 x 10 by default, 10,000 x 10 with
--full), the last 20 % held out. The arrays are module globals built
before the Pool exists, so forked workers inherit them (the seed relies on
this too).

(a) one model per task: pool.starmap(fit_score, [(n, seed), ...]) over the
    n_estimators grid (largest first), each returning the held-out R^2.
(b) one tree per task (the lecture's train_in_parallel): each task fits a
    DecisionTreeRegressor on its own bootstrap sample and returns the fitted
    tree (pickled back to the master), which averages their predictions.

Same tree settings as the C demo: max_depth=10, min_samples_leaf=5,
max_features=0.5. sklearn's own threads are turned off (one thread per
process) so the sequential baseline really is sequential.

Ends with: RESULT forest seq=<s> par=<s> speedup=<x> check=ok|FAIL
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from multiprocessing import Pool  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.datasets import make_friedman1  # noqa: E402
from sklearn.ensemble import RandomForestRegressor  # noqa: E402
from sklearn.metrics import r2_score  # noqa: E402
from sklearn.tree import DecisionTreeRegressor  # noqa: E402

PARAMS = dict(max_depth=10, min_samples_leaf=5, max_features=0.5)
X_train = y_train = X_test = y_test = None


def load(nrows):
    global X_train, y_train, X_test, y_test
    X, y = make_friedman1(n_samples=nrows, n_features=10, noise=1.0,
                          random_state=0)
    ntest = nrows // 5
    X_train, y_train = X[:-ntest], y[:-ntest]
    X_test, y_test = X[-ntest:], y[-ntest:]


def fit_score(n_estimators, seed):
    model = RandomForestRegressor(n_estimators=n_estimators,
                                  random_state=seed, n_jobs=1, **PARAMS)
    model.fit(X_train, y_train)
    return r2_score(y_test, model.predict(X_test))


def train_tree(index):
    rng = np.random.default_rng(index)
    rows = rng.integers(0, len(X_train), len(X_train))
    tree = DecisionTreeRegressor(random_state=index, **PARAMS)
    return tree.fit(X_train[rows], y_train[rows])


def forest_r2(trees):
    pred = np.mean([t.predict(X_test) for t in trees], axis=0)
    return r2_score(y_test, pred)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--full", action="store_true", help="the seed's sizes")
    ap.add_argument("--quiet", action="store_true")
    opt = ap.parse_args()
    say = (lambda *a: None) if opt.quiet else print
    grid = [200, 100, 50, 20, 10]
    ntrees = 200 if opt.full else 100
    load(10000 if opt.full else 2000)  # before the Pool: fork inheritance
    say(f"forest: Friedman #1, {len(X_train)} training rows x 10 features, "
        f"{len(X_test)} held out; {opt.workers} workers")
    ok = True
    t = time.perf_counter()
    r2_seq = [fit_score(n, 7) for n in grid]
    seq_a = time.perf_counter() - t
    t = time.perf_counter()
    r2_b_seq = forest_r2([train_tree(i) for i in range(ntrees)])
    seq_b = time.perf_counter() - t
    # The Pool comes after the sequential runs on purpose: sklearn imports
    # some modules lazily at the first fit, and a worker forked before that
    # would pay for those imports again inside the timed parallel run.
    with Pool(opt.workers) as pool:
        t = time.perf_counter()
        r2_par = pool.starmap(fit_score, [(n, 7) for n in grid], chunksize=1)
        par_a = time.perf_counter() - t
        t = time.perf_counter()
        r2_b_par = forest_r2(pool.map(train_tree, range(ntrees)))
        par_b = time.perf_counter() - t
    say("(a) one model per task, starmap over n_estimators:")
    for n, a, b in zip(grid, r2_seq, r2_par):
        say(f"    n_estimators={n:3d}  R^2={b:.6f}  "
            f"{'(identical to sequential)' if a == b else 'DIFFERS'}")
    ok &= r2_seq == r2_par
    say(f"    sequential {seq_a:.3f} s, parallel {par_a:.3f} s, "
        f"speedup {seq_a / par_a:.2f}x")
    ok &= r2_b_seq == r2_b_par
    say("(b) one tree per task (train_in_parallel), forest assembled in "
        "the master:")
    say(f"    {ntrees} trees, R^2 sequential {r2_b_seq:.6f}, parallel "
        f"{r2_b_par:.6f} {'(identical)' if r2_b_seq == r2_b_par else 'DIFFERS'}")
    say(f"    sequential {seq_b:.3f} s, parallel {par_b:.3f} s, "
        f"speedup {seq_b / par_b:.2f}x")
    seq, par = seq_a + seq_b, par_a + par_b
    say(f"total (a) + (b):\n  sequential {seq:8.3f} s\n  parallel   {par:8.3f} s"
        f"  ({opt.workers} workers)\n  speedup    {seq / par:8.2f}x\n"
        f"  check      {'ok' if ok else 'FAIL'}")
    print(f"RESULT forest seq={seq:.3f} par={par:.3f} speedup={seq / par:.2f} "
          f"check={'ok' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
