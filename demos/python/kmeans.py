#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""kmeans.py - choose k by the silhouette score, one k per task; twin of
demos/kmeans.c.

Blobs from sklearn's make_blobs (7 centers; 3,000 x 20 by default, the
seed's 10,000 x 100 with --full), built before the Pool so workers inherit
them. For k = 2..14: KMeans(n_init=3, k-means++) and silhouette_score over
a fixed sample of at most 3,000 points, first in a loop, then with
pool.map over k (largest k first, chunksize 1). sklearn's own threads are
turned off so that the loop is really sequential.

Each side runs --repeat times (3 by default); the medians are reported.
Ends with the RESULT line of demo_common.py.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys  # noqa: E402
from multiprocessing import Pool  # noqa: E402

from sklearn.cluster import KMeans  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.metrics import silhouette_score  # noqa: E402

import demo_common as dc  # noqa: E402

KS = list(range(14, 1, -1))  # largest first
X = None


def score_k(k):
    km = KMeans(n_clusters=k, n_init=3, random_state=k).fit(X)
    sil = silhouette_score(X, km.labels_, sample_size=min(3000, len(X)),
                           random_state=0)
    return k, km.inertia_, sil, km.n_iter_


def main():
    global X
    opt = dc.parser(__doc__.splitlines()[0]).parse_args()
    say = dc.say_fn(opt)
    n, d = (10000, 100) if opt.full else (3000, 20)
    X, _ = make_blobs(n_samples=n, n_features=d, centers=7, random_state=1234)
    say(f"kmeans: {n} points x {d} dims, 7 blobs; k = 2..14; "
        f"{opt.workers} workers, median of {opt.repeat} runs")

    seq_t, par_t = [], []
    for _ in range(opt.repeat):
        t, seq_out = dc.timed(lambda: sorted(score_k(k) for k in KS))
        seq_t.append(t)
    # The Pool after the loop: sklearn imports lazily at the first fit.
    with Pool(opt.workers) as pool:
        for _ in range(opt.repeat):
            t, par_out = dc.timed(
                lambda: sorted(pool.map(score_k, KS, chunksize=1)))
            par_t.append(t)
    seq, par = dc.median(seq_t), dc.median(par_t)

    say("   k   inertia        silhouette  iterations")
    for k, inertia, sil, it in par_out:
        say(f"  {k:2d}   {inertia:<13.1f}  {sil:.4f}      {it}")
    kseq = max(seq_out, key=lambda r: r[2])[0]
    kpar = max(par_out, key=lambda r: r[2])[0]
    same = seq_out == par_out
    say(f"  best k: sequential {kseq}, parallel {kpar} (blobs: 7); scores "
        f"{'identical' if same else 'DIFFER'}")
    ok = same and kseq == kpar == 7
    return dc.result(opt, "kmeans", seq, par, ok, len(KS))


if __name__ == "__main__":
    sys.exit(main())
