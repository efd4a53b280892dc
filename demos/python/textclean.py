#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""textclean.py - clean a corpus line by line with pool.imap; twin of
demos/textclean.c.

Corpus: the licence texts of /usr/share/common-licenses (sorted by name),
else /usr/share/dict/words, else generated words, repeated to 200,000 lines
(1,000,000 with --full). Cleaning: lowercase, punctuation to blanks,
blanks collapsed, stop words dropped. pool.imap(clean, lines,
chunksize=64) must give exactly what the sequential loop gives. A tqdm bar
is shown when tqdm is installed and stderr is a terminal.

The pitfall: pool.map(clean, text) with text a str runs clean on every
CHARACTER; pass text.splitlines() to get one task per line.

Each side runs --repeat times (3 by default); the medians are reported.
Ends with the RESULT line of demo_common.py.
"""
import os
import random
import re
import sys
from multiprocessing import Pool

import demo_common as dc

STOP = frozenset("""a about after all also an and any are as at be been but by
can could do does each for from had has have he her his how i if in into is
it its may more must no not of on one or other our out shall she so some such
than that the their them then there these they this those to under up upon us
was we were what when which who will with would you your""".split())
NONWORD = re.compile(r"[^a-z0-9]+")


def clean(line):
    words = NONWORD.split(line.lower())
    return " ".join(w for w in words if w and w not in STOP)


def load(target):
    lines, source = [], "/usr/share/common-licenses"
    if os.path.isdir(source):
        for name in sorted(os.listdir(source)):
            if name.startswith("."):
                continue
            with open(os.path.join(source, name), "rb") as f:
                data = f.read().decode("utf-8", "replace").split("\n")
            if data and data[-1] == "":
                data.pop()  # the newline that ends the file
            lines += [line.rstrip("\r") for line in data]  # as C getline
    if not lines and os.path.exists("/usr/share/dict/words"):
        source = "/usr/share/dict/words"
        with open(source, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    if not lines:
        source = "generated words"
        words = ("The software is provided as is, without warranty of any "
                 "kind; Licence Copy modify and share Source code! Program "
                 "(the Work) may be used.").split()
        rng = random.Random(99)
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
                 for _ in range(5000)]
    base = len(lines)
    while len(lines) < target:
        lines += lines[:min(base, target - len(lines))]
    return lines, base, source


def main():
    opt = dc.parser(__doc__.splitlines()[0]).parse_args()
    say = dc.say_fn(opt)
    lines, base, source = load(1000000 if opt.full else 200000)
    say(f"textclean: {len(lines)} lines from {source}, {base} lines "
        f"repeated; median of {opt.repeat} runs")

    text = ("Copyright (C) The Free Software Foundation.\n"
            "Everyone is permitted to copy this document,\n"
            "but changing it is not allowed.")
    with Pool(opt.workers) as pool:
        say("pitfall - the function runs once per ELEMENT of the input:")
        say(f"  pool.map(clean, text)              -> "
            f"{len(pool.map(clean, text))} results (one per character!)")
        say(f"  pool.map(clean, [text])            -> "
            f"{len(pool.map(clean, [text]))} result (one item: no parallelism)")
        say(f"  pool.map(clean, text.splitlines()) -> "
            f"{len(pool.map(clean, text.splitlines()))} results (one per line)")

        seq_t, par_t = [], []
        for rep in range(opt.repeat):
            t, seq_out = dc.timed(lambda: [clean(line) for line in lines])
            seq_t.append(t)

            bar = None
            try:  # a bar on the first run, as the C demo; imported
                if rep == 0 and sys.stderr.isatty():  # before the clock
                    from tqdm import tqdm as bar
            except ImportError:
                pass

            def parallel():  # timed from the imap call, as in C
                it = pool.imap(clean, lines, chunksize=64)
                return list(bar(it, total=len(lines)) if bar else it)
            t, par_out = dc.timed(parallel)
            par_t.append(t)
        seq, par = dc.median(seq_t), dc.median(par_t)

    ok = par_out == seq_out
    say(f"  {sum(1 for s in par_out if s)} of {len(lines)} lines keep words; "
        f"parallel output {'identical to' if ok else 'DIFFERS from'} sequential")
    return dc.result(opt, "textclean", seq, par, ok, len(lines))


if __name__ == "__main__":
    sys.exit(main())
