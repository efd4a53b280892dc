#!/usr/bin/python3
"""kmeans.py - choose k by the silhouette score, one k per task; twin of
demos/kmeans.c.

Blobs from sklearn's make_blobs (7 centers; 3,000 x 20 by default, the
seed's 10,000 x 100 with --full), built before the Pool so workers inherit
them. For k = 2..14: KMeans(n_init=3, k-means++) and silhouette_score over
a fixed sample of at most 3,000 points, first in a loop, then with
pool.map over k (largest k first, chunksize 1). sklearn's own threads are
turned off so that the loop is really sequential.

Ends with: RESULT kmeans seq=<s> par=<s> speedup=<x> check=ok|FAIL
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from multiprocessing import Pool  # noqa: E402

from sklearn.cluster import KMeans  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.metrics import silhouette_score  # noqa: E402

KS = list(range(14, 1, -1))  # largest first
X = None


def score_k(k):
    km = KMeans(n_clusters=k, n_init=3, random_state=k).fit(X)
    sil = silhouette_score(X, km.labels_, sample_size=min(3000, len(X)),
                           random_state=0)
    return k, km.inertia_, sil, km.n_iter_


def main():
    global X
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--full", action="store_true", help="the seed's sizes")
    ap.add_argument("--quiet", action="store_true")
    opt = ap.parse_args()
    say = (lambda *a: None) if opt.quiet else print
    n, d = (10000, 100) if opt.full else (3000, 20)
    X, _ = make_blobs(n_samples=n, n_features=d, centers=7, random_state=1234)
    say(f"kmeans: {n} points x {d} dims, 7 blobs; k = 2..14; "
        f"{opt.workers} workers")

    t = time.perf_counter()
    seq_out = sorted(score_k(k) for k in KS)
    seq = time.perf_counter() - t
    # The Pool after the loop: sklearn imports lazily at the first fit.
    with Pool(opt.workers) as pool:
        t = time.perf_counter()
        par_out = sorted(pool.map(score_k, KS, chunksize=1))
        par = time.perf_counter() - t

    say("   k   inertia        silhouette  iterations")
    for k, inertia, sil, it in par_out:
        say(f"  {k:2d}   {inertia:<13.1f}  {sil:.4f}      {it}")
    kseq = max(seq_out, key=lambda r: r[2])[0]
    kpar = max(par_out, key=lambda r: r[2])[0]
    same = seq_out == par_out
    say(f"  best k: sequential {kseq}, parallel {kpar} (blobs: 7); scores "
        f"{'identical' if same else 'DIFFER'}")
    ok = same and kseq == kpar == 7
    say(f"  sequential {seq:8.3f} s\n  parallel   {par:8.3f} s  "
        f"({opt.workers} workers)\n  speedup    {seq / par:8.2f}x\n"
        f"  check      {'ok' if ok else 'FAIL'}")
    print(f"RESULT kmeans seq={seq:.3f} par={par:.3f} speedup={seq / par:.2f} "
          f"check={'ok' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
