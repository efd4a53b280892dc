#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""py_bench.py - the Python side of forkpool's benchmarks.

CPython's multiprocessing (fork start method, 2 workers) and joblib doing
the same work as demos/bench/fpbench.c, printed in the same line format:

    metric=<id> side=python|joblib value=<number> unit=<unit>

Usage: /usr/bin/python3 py_bench.py GROUP   (one run of one group; run.sh
repeats and interleaves runs, report.py takes medians). BENCH_QUICK=1 picks
the smoke-test sizes. The item counts below MUST match fpbench.c's
(sizes()); both sides build their input before the clock starts, except
map, imap and the chunk-size rows, which pass range() to the pool as a
Python user would.

Every timed section runs on a pool that is already started and warmed up
by a small job, as the C side does.
"""

import multiprocessing as mp
import os
import sys
import time

QUICK = os.environ.get("BENCH_QUICK", "0") not in ("", "0")
MiB = 1 << 20


def sizes():
    """Item counts per group; fpbench.c's sizes() holds the same numbers."""
    if QUICK:
        return dict(startstop=5, apply=1000, async_=10000, map=200_000,
                    starmap=100_000, imap=5000, mgr=3000, mgr_lock=1000,
                    shm_lock=50_000, chunks_items=16384)
    return dict(startstop=20, apply=5000, async_=50_000, map=2_000_000,
                starmap=1_000_000, imap=50_000, mgr=20_000, mgr_lock=5000,
                shm_lock=200_000, chunks_items=65536)


def payload_sizes():
    """(size, count) pairs; fpbench.c's payload_plan() is the same."""
    if QUICK:
        sz = [8, 4096, 1 << 20, 16 << 20]
        return [(s, max(4, min(500, (16 * MiB) // s))) for s in sz]
    sz = [8, 64, 512, 4096, 32768, 262144, 1 << 20, 4 << 20, 16 << 20]
    return [(s, max(8, min(4000, (128 * MiB) // s))) for s in sz]


def chunk_sizes():
    """Chunk sizes of the per-item overhead sweep (fpbench.c: same)."""
    return [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536]


def emit(metric, side, value, unit):
    print(f"metric={metric} side={side} value={value:.6g} unit={unit}",
          flush=True)


def ident(x):
    return x


def add(a, b):
    return a + b


def new_pool():
    ctx = mp.get_context("fork")
    pool = ctx.Pool(2)
    pool.map(ident, range(1000))  # warm-up: workers started and running
    return pool


def g_startstop(n):
    ctx = mp.get_context("fork")
    reps = n["startstop"]
    t0 = time.perf_counter()
    for _ in range(reps):
        p = ctx.Pool(2)
        p.close()
        p.join()
    emit("start_stop", "python", (time.perf_counter() - t0) / reps * 1e3, "ms")


def g_apply(n):
    with new_pool() as pool:
        k = n["apply"]
        t0 = time.perf_counter()
        for i in range(k):
            if pool.apply(ident, (i,)) != i:
                raise SystemExit("apply: wrong result")
        emit("apply_rtt", "python", (time.perf_counter() - t0) / k * 1e6, "us")


def g_async(n):
    k = n["async_"]
    with new_pool() as pool:
        t0 = time.perf_counter()
        rs = [pool.apply_async(ident, (i,)) for i in range(k)]
        s = sum(r.get() for r in rs)
        dt = time.perf_counter() - t0
        if s != k * (k - 1) // 2:
            raise SystemExit("apply_async: wrong sum")
        emit("apply_async", "python", k / dt, "tasks/s")
    from joblib import Parallel, delayed
    with Parallel(n_jobs=2) as par:
        par(delayed(ident)(i) for i in range(1000))  # warm-up
        t0 = time.perf_counter()
        out = par(delayed(ident)(i) for i in range(k))
        dt = time.perf_counter() - t0
    if sum(out) != k * (k - 1) // 2:
        raise SystemExit("joblib: wrong sum")
    emit("apply_async", "joblib", k / dt, "tasks/s")


def g_map(n):
    k = n["map"]
    with new_pool() as pool:
        t0 = time.perf_counter()
        out = pool.map(ident, range(k))
        dt = time.perf_counter() - t0
        if len(out) != k or out[-1] != k - 1:
            raise SystemExit("map: wrong result")
        emit("map_int", "python", k / dt, "items/s")


def g_starmap(n):
    k = n["starmap"]
    items = [(i, i) for i in range(k)]
    with new_pool() as pool:
        t0 = time.perf_counter()
        out = pool.starmap(add, items)
        dt = time.perf_counter() - t0
        if len(out) != k or out[-1] != 2 * (k - 1):
            raise SystemExit("starmap: wrong result")
        emit("starmap", "python", k / dt, "items/s")


def g_imap(n):
    k = n["imap"]
    with new_pool() as pool:
        t0 = time.perf_counter()
        s = 0
        for v in pool.imap(ident, range(k), chunksize=1):
            s += v
        dt = time.perf_counter() - t0
        if s != k * (k - 1) // 2:
            raise SystemExit("imap: wrong sum")
        emit("imap1", "python", k / dt, "items/s")


def g_payload(n):
    with new_pool() as pool:
        for size, k in payload_sizes():
            blob = os.urandom(size)
            items = [blob] * k
            t0 = time.perf_counter()
            out = pool.map(ident, items, chunksize=1)
            dt = time.perf_counter() - t0
            if len(out) != k or out[-1] != blob:
                raise SystemExit("payload: wrong result")
            del out
            emit(f"payload.{size}", "python", 2 * size * k / dt / MiB,
                 "MiB/s")


def g_chunks(n):
    k = n["chunks_items"]
    with new_pool() as pool:
        for cs in chunk_sizes():
            items = max(k, min(cs * 64, 1 << 21))
            t0 = time.perf_counter()
            out = pool.map(ident, range(items), chunksize=cs)
            dt = time.perf_counter() - t0
            if len(out) != items:
                raise SystemExit("chunks: wrong result")
            emit(f"chunk.{cs}", "python", dt / items * 1e9, "ns/item")


# The two-process rows: each target prepares its work (keys built, as the
# C side builds them before its clock) and returns it as a callable; the
# clock starts once both processes are ready, as in fpbench's run_procs,
# so neither side times process start-up.
def _dict_worker(d, base, k):
    keys = [f"{base}{i}" for i in range(k)]

    def work():
        for i, key in enumerate(keys):
            d[key] = i
    return work


def _mgr_incr(v, lock, k):
    def work():
        for _ in range(k):
            with lock:
                v.value += 1
    return work


def _shm_incr(v, k):
    def work():
        for _ in range(k):
            with v.get_lock():
                v.value += 1
    return work


def _child(target, args, ready_w, go_r, go_w):
    os.close(go_w)  # or the read below would never see EOF
    work = target(*args)
    os.write(ready_w, b"r")
    os.read(go_r, 1)  # EOF: go
    work()


def _two(target, args_a, args_b):
    ctx = mp.get_context("fork")
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    ps = [ctx.Process(target=_child, args=(target, a, ready_w, go_r, go_w))
          for a in (args_a, args_b)]
    for p in ps:
        p.start()
    for _ in ps:
        if os.read(ready_r, 1) != b"r":
            raise SystemExit("a two-process child did not start")
    t0 = time.perf_counter()
    os.close(go_w)
    for p in ps:
        p.join()
    dt = time.perf_counter() - t0
    for fd in (ready_r, ready_w, go_r):
        os.close(fd)
    if any(p.exitcode != 0 for p in ps):
        raise SystemExit("a two-process child failed")
    return dt


def g_manager(n):
    k = n["mgr"]
    ctx = mp.get_context("fork")
    with ctx.Manager() as m:
        d = m.dict()
        keys = [f"key{i}" for i in range(k)]
        t0 = time.perf_counter()
        for i, key in enumerate(keys):
            d[key] = i
        emit("mgr_dict_set", "python", k / (time.perf_counter() - t0), "ops/s")
        t0 = time.perf_counter()
        s = 0
        for key in keys:
            s += d[key]
        emit("mgr_dict_get", "python", k / (time.perf_counter() - t0), "ops/s")
        if s != k * (k - 1) // 2:
            raise SystemExit("manager dict: wrong sum")
        d2 = m.dict()
        dt = _two(_dict_worker, (d2, "a", k // 2), (d2, "b", k // 2))
        if len(d2) != 2 * (k // 2):
            raise SystemExit("manager dict from workers: wrong size")
        emit("mgr_dict_set_2w", "python", 2 * (k // 2) / dt, "ops/s")
        lst = m.list()
        t0 = time.perf_counter()
        for i in range(k):
            lst.append(i)
        emit("mgr_list_append", "python", k / (time.perf_counter() - t0),
             "ops/s")
        kl = n["mgr_lock"]
        v = m.Value("q", 0)
        lock = m.Lock()
        dt = _two(_mgr_incr, (v, lock, kl), (v, lock, kl))
        if v.value != 2 * kl:
            raise SystemExit("manager counter: lost increments")
        emit("counter_2proc", "python", 2 * kl / dt, "ops/s")
    ks = n["shm_lock"]
    v = ctx.Value("q", 0)
    dt = _two(_shm_incr, (v, ks), (v, ks))
    if v.value != 2 * ks:
        raise SystemExit("shared Value: lost increments")
    emit("mutex_2proc", "python", 2 * ks / dt, "ops/s")


GROUPS = {
    "startstop": g_startstop, "apply": g_apply, "async": g_async,
    "map": g_map, "starmap": g_starmap, "imap": g_imap,
    "payload": g_payload, "chunks": g_chunks, "manager": g_manager,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in GROUPS:
        raise SystemExit("usage: py_bench.py " + "|".join(GROUPS))
    GROUPS[sys.argv[1]](sizes())


if __name__ == "__main__":
    main()
