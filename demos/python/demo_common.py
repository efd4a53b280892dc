# SPDX-License-Identifier: MIT
"""demo_common.py - what the Python twins share, as demos/lib/demo.c does
for the C demos: the common options, medians of repeated runs, the speedup
ceiling and its noise check, and the RESULT line.

Every twin accepts --workers N, --full, --quiet and --repeat N (each timed
side runs N times, 3 by default, and its median is reported) and ends with

  RESULT <name> seq=<s> par=<s> speedup=<x> check=ok|FAIL workers=<n>
         repeat=<n> items=<n> ceiling=<x> [note=noisy]

on one line, the same fields as the C demo's, so that demos/run.sh,
demos/python/run.sh and demos/compare.sh read both alike. items counts the
units of work of one side (arrays sorted, lines cleaned ...), which lets
demos/compare.sh compare a twin that runs fewer items per item. A speedup
above the demo's ceiling, or above the usable workers (an efficiency over
100 %), cannot be real: it is printed as "noisy, rerun".
"""
import argparse
import os
import statistics
import time


def int_in(lo, hi):
    """An argparse type: a whole number in [lo, hi], else a one-line usage
    error naming the range (as the C demos' messages do), not a traceback
    from deep inside the twin or a list of every allowed value."""
    def parse(text):
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                "'%s' is not a whole number" % text)
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(
                "%d is out of range (%d to %d)" % (n, lo, hi))
        return n
    return parse


def parser(description=None):
    """Returns an ArgumentParser with the common options; a twin adds its
    own and calls parse_args()."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--workers", type=int_in(1, 1024), default=usable_cpus(),
                    metavar="N",
                    help="worker processes, 1 to 1024 (default: usable "
                    "CPUs)")
    ap.add_argument("--full", action="store_true", help="the seed's sizes")
    ap.add_argument("--quiet", action="store_true",
                    help="print only the RESULT line")
    ap.add_argument("--repeat", type=int_in(1, 99), default=3, metavar="N",
                    help="time each side N times, report the median "
                    "(1 to 99, default 3)")
    return ap


def say_fn(opt):
    """print, or nothing with --quiet."""
    return (lambda *a, **k: None) if opt.quiet else print


def usable_cpus():
    return len(os.sched_getaffinity(0))


def ceiling_for(workers):
    """The best speedup `workers` processes can reach here."""
    return min(workers, usable_cpus())


def noise(workers, speedup, ceiling=0):
    """"" for a plausible speedup, else ", noisy, rerun" (compared as
    printed, to two decimals)."""
    usable = ceiling_for(workers)
    if ceiling <= 0 or ceiling > usable:
        ceiling = usable
    return ", noisy, rerun" if round(speedup * 100) > round(ceiling * 100) \
        else ""


def timed(fn, *args):
    """Runs fn(*args); returns (seconds, its return value)."""
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def median(times):
    return statistics.median(times)


def result(opt, name, seq, par, ok, items, ceiling=0):
    """Prints the summary and the RESULT line; returns the exit status."""
    say = say_fn(opt)
    speedup = seq / par if par > 0 else 0
    usable = ceiling_for(opt.workers)
    ceiling = ceiling if 0 < ceiling < usable else usable
    note = noise(opt.workers, speedup, ceiling)
    say(f"  sequential {seq:8.3f} s  (median of {opt.repeat})\n"
        f"  parallel   {par:8.3f} s  ({opt.workers} workers, median of "
        f"{opt.repeat})\n"
        f"  speedup    {speedup:8.2f}x  (efficiency "
        f"{100 * speedup / usable:.0f}%, ceiling {ceiling:.2f}x{note})\n"
        f"  check      {'ok' if ok else 'FAIL'}")
    print(f"RESULT {name} seq={seq:.4f} par={par:.4f} speedup={speedup:.2f} "
          f"check={'ok' if ok else 'FAIL'} workers={opt.workers} "
          f"repeat={opt.repeat} items={items} ceiling={ceiling:.2f}"
          f"{' note=noisy' if note else ''}", flush=True)
    return 0 if ok else 1
