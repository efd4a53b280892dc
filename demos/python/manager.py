#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""manager.py - the seed lecture's Manager example (twin of demos/manager.c).

A multiprocessing.Manager() shares a list, a dict, a Value('i', 0) and a
Lock with pool workers. Phases, one task per worker:

  1. plain get-then-set of d["plain"] and value.value, no lock: lost updates
     (reported, not checked: losing them is the point);
  2. the same inside `with lock:` -> exact (checked);
  3. there is no atomic add on a Manager dict, so the closest Python idiom
     is the lock again, for the counter (checked);
  4. results: workers store d["sq:<i>"] = i*i and append i*i to the list;
     also done by the master alone;
  5. scaling: each worker updates its own 1024 keys (d[k] = d[k] + 1 is
     safe when no other process writes k; the C demo uses 32768 keys per
     worker, which would take seconds just to create here), 2x the
     updates of the other phases; also done by the master alone (seq vs
     par in the RESULT line). Every update is two round trips to the one
     server process, so more workers do not make it faster: the C demo's
     phase 5 is where shared memory scales.

Every access is a round trip to the manager's server process (~30k ops/s),
so the default sizes are 100x smaller than the C demo's, and so are
--full's (10x the default here, as in C).

Usage: manager.py [--workers N] [--full] [--quiet] [--repeat N]
Phases 4 and 5 run --repeat times (3 by default); the medians are reported.
Ends with the RESULT line of demo_common.py.
"""
import multiprocessing as mp
import sys
import time

import demo_common as dc

PLAIN, LOCKED, ATOMIC, RESULTS, SCALE = range(5)
SCALE_KEYS = 1024


def scale_task(first, count, d):
    """Phase 5 for one worker: count updates over its own keys."""
    keys = ["u:%d" % (first + j) for j in range(SCALE_KEYS)]
    for i in range(count):
        k = keys[i % SCALE_KEYS]
        d[k] = d[k] + 1


def phase_task(phase, first, count, d, lst, value, lock):
    """One phase's work for one worker (mirrors phase_task in manager.c)."""
    if phase == SCALE:
        return scale_task(first, count, d)
    for i in range(count):
        if phase == PLAIN:  # racy on purpose
            d["plain"] = d["plain"] + 1
            value.value = value.value + 1
        elif phase == LOCKED:
            with lock:
                d["locked"] = d["locked"] + 1
        elif phase == ATOMIC:
            with lock:
                value.value += 1
        else:
            x = first + i
            d["sq:%d" % x] = x * x
            lst.append(x * x)
    return None


def run_phase(pool, workers, phase, total, shared):
    items = []
    for w in range(workers):
        first, last = total * w // workers, total * (w + 1) // workers
        items.append((phase, first, last - first) + shared)
    t0 = time.perf_counter()
    pool.starmap(phase_task, items, chunksize=1)
    return time.perf_counter() - t0


def check_results(d, lst, n):
    if len(lst) != n:
        return False
    if any(d["sq:%d" % i] != i * i for i in range(n)):
        return False
    return sorted(lst[:]) == [i * i for i in range(n)]


def scale_phase(pool, o, total, shared):
    """Phase 5, --repeat times each way; returns (seq, par, exact)."""
    d, w = shared[0], o.workers
    d.clear()
    d.update({"u:%d" % (total * k // w + j): 0
              for k in range(w) for j in range(SCALE_KEYS)})
    seq_t, par_t = [], []
    for _ in range(o.repeat):
        t0 = time.perf_counter()
        for k in range(w):
            first = total * k // w
            scale_task(first, total * (k + 1) // w - first, d)
        seq_t.append(time.perf_counter() - t0)
        par_t.append(run_phase(pool, w, SCALE, total, shared))
    good = True
    for k in range(w):
        first = total * k // w
        c = total * (k + 1) // w - first
        for j in range(SCALE_KEYS):
            want = 2 * o.repeat * (c // SCALE_KEYS + (j < c % SCALE_KEYS))
            good &= d["u:%d" % (first + j)] == want
    return dc.median(seq_t), dc.median(par_t), good


def main():
    o = dc.parser(__doc__.splitlines()[0]).parse_args()
    say = dc.say_fn(o)
    iters = 20000 if o.full else 2000
    total = iters * o.workers
    ok = True

    with mp.Manager() as mgr:
        d, lst = mgr.dict(), mgr.list()
        value, lock = mgr.Value("i", 0), mgr.Lock()
        shared = (d, lst, value, lock)
        with mp.Pool(o.workers) as pool:
            say("%d workers, %d updates each per phase" % (o.workers, iters))

            d["plain"] = 0
            t = run_phase(pool, o.workers, PLAIN, total, shared)
            say("plain get-then-set  : dict %d of %d, value %d of %d "
                "(%.1f%% lost: not atomic)  %.3f s"
                % (d["plain"], total, value.value, total,
                   100.0 * (total - d["plain"]) / total, t))

            d["locked"] = 0
            t = run_phase(pool, o.workers, LOCKED, total, shared)
            good = d["locked"] == total
            ok &= good
            say("with Lock           : dict %d of %d  %s  %.3f s  "
                "(%.3f M updates/s)" % (d["locked"], total,
                                        "exact" if good else "WRONG", t,
                                        total / t / 1e6))

            value.value = 0
            t = run_phase(pool, o.workers, ATOMIC, total, shared)
            good = value.value == total
            ok &= good
            say("value under Lock    : value %d of %d  %s  %.3f s  "
                "(%.3f M updates/s)" % (value.value, total,
                                        "exact" if good else "WRONG", t,
                                        total / t / 1e6))

            good, seq_t, par_t = True, [], []
            for _ in range(o.repeat):
                d.clear()
                del lst[:]
                seq_t.append(dc.timed(phase_task, RESULTS, 0, total,
                                      *shared)[0])
                good &= check_results(d, lst, total)
                d.clear()
                del lst[:]
                par_t.append(run_phase(pool, o.workers, RESULTS, total,
                                       shared))
                good &= check_results(d, lst, total)
            seq, par = dc.median(seq_t), dc.median(par_t)
            ok &= good
            say("results d[k]=v + append: %d items  seq %.3f s  par %.3f s  "
                "%s  (%.3f M items/s in parallel)"
                % (total, seq, par, "all present once" if good else "WRONG",
                   total / par / 1e6))

            seq, par, good = scale_phase(pool, o, 2 * total, shared)
            ok &= good
            say("scaling: own keys   : %d updates  seq %.3f s  par %.3f s  "
                "%s  (%.1fx: one server process serves them all)"
                % (2 * total, seq, par, "exact" if good else "WRONG",
                   seq / par))

    return dc.result(o, "manager", seq, par, ok, 2 * total)


if __name__ == "__main__":
    sys.exit(main())
