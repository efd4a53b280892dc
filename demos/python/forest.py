#!/usr/bin/python3
# SPDX-License-Identifier: MIT
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

Each side runs --repeat times (3 by default); the medians are reported.
Ends with the RESULT line of demo_common.py.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys  # noqa: E402
from multiprocessing import Pool  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.datasets import make_friedman1  # noqa: E402
from sklearn.ensemble import RandomForestRegressor  # noqa: E402
from sklearn.metrics import r2_score  # noqa: E402
from sklearn.tree import DecisionTreeRegressor  # noqa: E402

import demo_common as dc  # noqa: E402

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
    opt = dc.parser(__doc__.splitlines()[0]).parse_args()
    say = dc.say_fn(opt)
    grid = [200, 100, 50, 20, 10]
    ntrees = 200 if opt.full else 100
    load(10000 if opt.full else 2000)  # before the Pool: fork inheritance
    say(f"forest: Friedman #1, {len(X_train)} training rows x 10 features, "
        f"{len(X_test)} held out; {opt.workers} workers, median of "
        f"{opt.repeat} runs")
    ok = True
    sa, sb, pa, pb = [], [], [], []
    for _ in range(opt.repeat):
        t, r2_seq = dc.timed(lambda: [fit_score(n, 7) for n in grid])
        sa.append(t)
        t, r2_b_seq = dc.timed(
            lambda: forest_r2([train_tree(i) for i in range(ntrees)]))
        sb.append(t)
    # The Pool comes after the sequential runs on purpose: sklearn imports
    # some modules lazily at the first fit, and a worker forked before that
    # would pay for those imports again inside the timed parallel run.
    with Pool(opt.workers) as pool:
        for _ in range(opt.repeat):
            t, r2_par = dc.timed(pool.starmap, fit_score,
                                 [(n, 7) for n in grid], 1)
            pa.append(t)
            t, r2_b_par = dc.timed(
                lambda: forest_r2(pool.map(train_tree, range(ntrees))))
            pb.append(t)
            ok &= r2_seq == r2_par and r2_b_seq == r2_b_par
    seq_a, seq_b = dc.median(sa), dc.median(sb)
    par_a, par_b = dc.median(pa), dc.median(pb)
    say("(a) one model per task, starmap over n_estimators:")
    for n, a, b in zip(grid, r2_seq, r2_par):
        say(f"    n_estimators={n:3d}  R^2={b:.6f}  "
            f"{'(identical to sequential)' if a == b else 'DIFFERS'}")
    say(f"    sequential {seq_a:.3f} s, parallel {par_a:.3f} s, "
        f"speedup {seq_a / par_a:.2f}x"
        f"{dc.noise(opt.workers, seq_a / par_a)}")
    say("(b) one tree per task (train_in_parallel), forest assembled in "
        "the master:")
    say(f"    {ntrees} trees, R^2 sequential {r2_b_seq:.6f}, parallel "
        f"{r2_b_par:.6f} {'(identical)' if r2_b_seq == r2_b_par else 'DIFFERS'}")
    say(f"    sequential {seq_b:.3f} s, parallel {par_b:.3f} s, "
        f"speedup {seq_b / par_b:.2f}x"
        f"{dc.noise(opt.workers, seq_b / par_b)}")
    seq = dc.median([a + b for a, b in zip(sa, sb)])
    par = dc.median([a + b for a, b in zip(pa, pb)])
    say("total (a) + (b):")
    return dc.result(opt, "forest", seq, par, ok, sum(grid) + ntrees)


if __name__ == "__main__":
    sys.exit(main())
