#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""report.py - turns benchmark lines into the table, JSON, Markdown and plots.

Reads the results file written by run.sh (lines "metric=<id> side=<side>
value=<v> unit=<u>" from rawbench, fpbench and py_bench.py, one per run),
takes min/median/max per metric and side, computes the ratios and checks
them against the targets (ROWS below: the issues' figures to beat), then:

  - prints the tables on stdout;
  - writes OUT/benchmarks.json (every run of every side) and, from that JSON
    only, OUT/benchmarks.md and OUT/img/*.png (gnuplot scripts *.gp next to
    this file).

With --replot JSON it only redraws OUT/img/*.png from an existing JSON
(e.g. docs/benchmarks.json after a change to a .gp script), without running
or parsing anything else.

Ratios are "how many times faster forkpool is": fp/other for rates
(higher is better), other/fp for times (lower is better). So a ratio of 0.5
against a baseline means half the baseline's speed.

Standard library only; run with /usr/bin/python3.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys

SIDES = ("forkpool", "python", "joblib", "baseline")

# id, label, better ("hi" rate / "lo" time), targets [(side, min ratio)];
# the unit comes with the measurements. A ("abs_le", x) target bounds
# forkpool's value itself.
ROWS = [
    ("start_stop", "pool start + stop, 2 workers (baseline: 2 x fork+_exit+waitpid)",
     "lo", [("python", 8)]),
    ("apply_rtt", "apply round trip, one at a time (baseline: 8-byte pipe "
     "ping-pong, 2 CPUs)", "lo", [("python", 40), ("baseline", 10)]),
    ("pipe_rtt_same", "raw pipe ping-pong, both on one CPU", "lo", []),
    ("apply_async", "apply_async x N, then get all (joblib: Parallel, auto "
     "batching)", "hi", [("python", 100), ("joblib", 5)]),
    ("map_int", "map over int64, identity, default chunksize", "hi",
     [("python", 35)]),
    ("mpi_apply_rtt", "apply round trip over MPI: mpirun -n 3, 1 worker "
     "per worker rank (baseline: the local pool's row)", "lo", []),
    ("mpi_apply_async", "apply_async x N over MPI, as above (baseline: "
     "the local pool's row)", "hi", []),
    ("mpi_map_int", "map over int64 over MPI, as above (baseline: the "
     "local pool's row)", "hi", []),
    ("starmap", "starmap add(a, b), (int, int) tuples", "hi", []),
    ("starmap_struct", "starmap, fixed form: struct array + fp_pool_map "
     "(python: its starmap)", "hi", []),
    ("imap1", "imap, chunksize 1", "hi", [("python", 40)]),
    ("pipe_bw", "raw pipe bandwidth, one direction, 64 KiB writes", "hi", []),
    ("memcpy_bw", "memcpy bandwidth", "hi", []),
    ("payload.1048576", "1 MiB bytes payloads, chunksize 1, both directions "
     "(baseline: raw pipe)", "hi", [("python", 2), ("baseline", 0.6)]),
    ("mgr_dict_set", "Manager dict set, from the master", "hi",
     [("python", 300)]),
    ("mgr_dict_get", "Manager dict get, from the master", "hi", []),
    ("mgr_dict_get_2w", "Manager dict get from 2 processes (baseline: 1 "
     "process, same count)", "hi", [("baseline", 1.8)]),
    ("mgr_dict_set_2w", "Manager dict inserts from 2 processes, different "
     "keys (baseline: 1 process, same count)", "hi", [("baseline", 1.4)]),
    ("mgr_dict_upd_2w", "Manager dict add-to-int on existing keys, 2 "
     "processes with different keys (baseline: 1 process, same count)",
     "hi", [("baseline", 1.6)]),
    ("mgr_list_append", "Manager list append", "hi", []),
    ("mgr_list_append_2w", "Manager list append from 2 processes (baseline: "
     "1 process, same count)", "hi", [("baseline", 1.0)]),
    ("mgr_churn_overhead", "arena footprint / live data after 10 rounds of "
     "10^6 inserts + deletes, values 8 B-4 KiB", "lo", [("abs_le", 1.5)]),
    ("counter_2proc", "counter += 1 from 2 processes (python: Manager Value "
     "+ Lock; baseline: atomic fetch_add)", "hi", [("baseline", 0.4)]),
    ("mutex_2proc", "lock + increment + unlock from 2 processes (python: "
     "multiprocessing.Value; baseline: robust pshared mutex)", "hi", []),
    ("saturated_overhead", "kmeans on one worker per usable CPU, all CPUs "
     "busy: efficiency forkpool loses next to as many OpenMP threads, % "
     "(from the scaling rows; the master's threads may spin only while a "
     "CPU is free)", "lo",
     [("abs_le", 3.0)]),
    ("idle_cpu", "CPU used by the master and 2 workers of an idle pool over "
     "2 s, % of one CPU (their threads' schedstat run times, in ns)", "lo",
     [("abs_le", 1.0)]),
    ("fault_latency", "worker SIGKILL to failed result delivered", "lo",
     [("abs_le", 5.0)]),
    ("fault_tput", "throughput while a worker is killed every 100 ms "
     "(baseline: same pool undisturbed)", "hi", [("baseline", 0.8)]),
]
COPY_PYTHON = {"starmap_struct": "starmap"}
KERNELS = ("cumsum", "bogosort", "kmeans", "forest")
EFF_TARGET = 0.95


def parse(path):
    data, failed, meta = {}, [], {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("failed "):
                failed.append(line[len("failed cmd="):])
                continue
            if line.split("=", 1)[0] in ("elapsed", "loadavg_start",
                                         "loadavg_end", "date"):
                k, v = line.split("=", 1)
                meta[k] = (int(v) if k == "elapsed" else
                           v if k == "date" else v.replace(",", " "))
                continue
            kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
            if not {"metric", "side", "value", "unit"} <= kv.keys():
                continue
            m = data.setdefault(kv["metric"], {"unit": kv["unit"], "sides": {}})
            m["sides"].setdefault(kv["side"], []).append(float(kv["value"]))
    return data, failed, meta


def stats(vals):
    return {"runs": vals, "n": len(vals), "min": min(vals),
            "median": statistics.median(vals), "max": max(vals)}


def speed_ratio(fp, other, better):
    if fp is None or other is None or fp <= 0 or other <= 0:
        return None
    return fp / other if better == "hi" else other / fp


def build(data, failed, meta, quick, profile):
    out = {"date": meta.get("date") or datetime.datetime.now(
               datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "mode": "quick" if quick else "full", "elapsed_s": meta.get("elapsed"),
           "loadavg_start": meta.get("loadavg_start"),
           "loadavg_end": meta.get("loadavg_end"),
           "failed": failed, "machine": machine(), "metrics": {},
           "payload": {}, "scaling": {}, "pin": {}, "chunks": {}, "rss": {},
           "profile": profile}
    pipe = data.get("pipe_bw", {}).get("sides", {}).get("baseline")
    cores = len(os.sched_getaffinity(0))
    for k in KERNELS:
        out["scaling"][k] = scaling_entry(data, k, cores)
    saturated_row(data, out["scaling"])
    mpi_rows(data)
    for mid, label, better, targets in ROWS:
        if mid.startswith("mpi_") and mid not in data:
            continue  # no mpirun in this run: no MPI rows
        out["metrics"][mid] = metric_entry(data, mid, label, better, targets,
                                           pipe)
    for mid in sorted((m for m in data if m.startswith("payload.")),
                      key=lambda m: int(m.split(".")[1])):
        out["payload"][mid.split(".")[1]] = metric_entry(
            data, mid, "payload", "hi", [], pipe)
    if "payload.1048576" not in data:
        out["metrics"].pop("payload.1048576")
    for pol in ("none", "compact", "scatter"):
        v = data.get(f"pin.{pol}", {}).get("sides", {}).get("forkpool")
        if v:
            out["pin"][pol] = stats(v)
    for mid in sorted((m for m in data if m.startswith("chunk.")),
                      key=lambda m: int(m.split(".")[1])):
        out["chunks"][mid.split(".")[1]] = {
            s: stats(v) for s, v in data[mid]["sides"].items()}
    for kind in ("map", "imap"):
        for mid in sorted((m for m in data if m.startswith(f"rss_{kind}.")),
                          key=lambda m: int(m.split(".")[1])):
            out["rss"].setdefault(kind, {})[mid.split(".")[1]] = stats(
                data[mid]["sides"]["forkpool"])
    return out


def saturated_row(data, scaling):
    """saturated_overhead: with every CPU computing kmeans (one worker per
    usable CPU), how much of OpenMP's efficiency forkpool gives up (the
    pool thread and a waiting caller must not take CPU time from the
    workers), in % of it."""
    km = scaling.get("kmeans", {})
    row = km.get("workers", {}).get(str(km.get("cores", 2)), {})
    if "eff_ratio" in row:
        data["saturated_overhead"] = {
            "unit": "%", "sides": {"forkpool": [100 * (1 - row["eff_ratio"])]}}


def mpi_rows(data):
    """fpbench mpi reports apply_rtt, apply_async and map_int with side
    forkpool-mpi; each becomes its own row mpi_<id> whose forkpool column
    is the MPI pool and whose baseline is the local pool of the same run,
    so the ratio says how fast the MPI link is next to the local one."""
    for mid in ("apply_rtt", "apply_async", "map_int"):
        sides = data.get(mid, {}).get("sides", {})
        if "forkpool-mpi" in sides:
            row = {"forkpool": sides["forkpool-mpi"]}
            if "forkpool" in sides:
                row["baseline"] = sides["forkpool"]
            data["mpi_" + mid] = {"unit": data[mid]["unit"], "sides": row}


def metric_entry(data, mid, label, better, targets, pipe):
    d = data.get(mid, {"unit": "", "sides": {}})
    sides = dict(d["sides"])
    if mid in COPY_PYTHON and COPY_PYTHON[mid] in data:
        py = data[COPY_PYTHON[mid]]["sides"].get("python")
        if py:
            sides["python"] = py
    if mid.startswith("payload.") and pipe:
        sides["baseline"] = pipe
    e = {"label": label, "unit": d["unit"], "better": better,
         "stats": {s: stats(v) for s, v in sides.items()}}
    for s in SIDES:
        e[s] = e["stats"][s]["median"] if s in e["stats"] else None
    e["ratios"] = {s: speed_ratio(e["forkpool"], e[s], better)
                   for s in ("python", "joblib", "baseline")
                   if e[s] is not None}
    e["targets"], e["status"] = [], "-"
    ok = []
    for side, t in targets:
        if side == "abs_le":
            e["targets"].append(f"<= {t:g} {d['unit']}")
            ok.append(e["forkpool"] is not None and e["forkpool"] <= t)
        else:
            e["targets"].append(f">= {t:g} x {side}")
            r = e["ratios"].get(side)
            ok.append(r is not None and r >= t)
    if ok:
        e["status"] = "pass" if all(ok) else "miss"
    return e


def scaling_entry(data, k, cores):
    seq = data.get(f"scale.{k}.seq", {}).get("sides", {}).get("sequential")
    if not seq:
        return {}
    e = {"sequential": stats(seq), "cores": cores, "workers": {}}
    ck = data.get(f"scale.{k}.checksum", {}).get("sides", {})
    sums = {v for vals in ck.values() for v in vals}
    e["checksums_agree"] = len(sums) <= 1
    t_seq = e["sequential"]["median"]
    w = 1
    while f"scale.{k}.w{w}" in data:
        sd = data[f"scale.{k}.w{w}"]["sides"]
        row = {s: stats(v) for s, v in sd.items()}
        for s in ("forkpool", "openmp"):
            if s in row:
                sp = t_seq / row[s]["median"]
                row[f"speedup_{s}"] = sp
                row[f"eff_{s}"] = sp / w
        if "eff_forkpool" in row and "eff_openmp" in row:
            row["eff_ratio"] = row["eff_forkpool"] / row["eff_openmp"]
            row["status"] = "pass" if row["eff_ratio"] >= EFF_TARGET else "miss"
        e["workers"][str(w)] = row
        w += 1
    return e


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version
        joblib_v = version("joblib")
    except Exception:  # noqa: BLE001 - any failure means "not installed"
        joblib_v = "not installed"
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cpus_online": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "kernel": platform.release(), "memory": mem,
            "gcc": sh(["gcc", "--version"]).split("\n")[0],
            "python": platform.python_version(), "joblib": joblib_v,
            "os": sh(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"])}


# --- formatting ---------------------------------------------------------------

def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2f} M"
    if a >= 1e4:
        return f"{v / 1e3:.1f} k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def fmt_ratio(r):
    return "-" if r is None else (f"{r:.1f}x" if r >= 10 else f"{r:.2f}x")


def main_table(rep):
    head = ["metric", "unit", "forkpool", "python", "joblib", "baseline",
            "ratio", "target", "result"]
    rows = []
    for mid, e in rep["metrics"].items():
        ratio = " ".join(f"{s[:2]}:{fmt_ratio(r)}" for s, r in e["ratios"]
                         .items()) or "-"
        rows.append([mid, e["unit"], fmt(e["forkpool"]), fmt(e["python"]),
                     fmt(e["joblib"]), fmt(e["baseline"]), ratio,
                     "; ".join(e["targets"]) or "-", e["status"]])
    for size, e in rep["payload"].items():
        rows.append([f"payload {human_size(int(size))}", e["unit"],
                     fmt(e["forkpool"]), fmt(e["python"]), "-",
                     fmt(e["baseline"]), " ".join(
                         f"{s[:2]}:{fmt_ratio(r)}" for s, r in
                         e["ratios"].items()) or "-", "-", "-"])
    return head, rows


def scaling_table(rep):
    head = ["kernel", "workers", "seq s", "forkpool s", "openmp s",
            "speedup fp", "speedup omp", "eff fp", "eff omp", "fp/omp eff",
            "result"]
    rows = []
    for k, e in rep["scaling"].items():
        for w, r in e.get("workers", {}).items():
            rows.append([k, w, fmt(e["sequential"]["median"]),
                         fmt(r.get("forkpool", {}).get("median")),
                         fmt(r.get("openmp", {}).get("median")),
                         fmt(r.get("speedup_forkpool")),
                         fmt(r.get("speedup_openmp")),
                         pct(r.get("eff_forkpool")), pct(r.get("eff_openmp")),
                         pct(r.get("eff_ratio")), r.get("status", "-")])
    return head, rows


def pct(v):
    return "-" if v is None else f"{100 * v:.0f}%"


def human_size(n):
    for unit, s in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= s and n % s == 0:
            return f"{n // s} {unit}"
    return f"{n} B"


def print_table(head, rows, out=sys.stdout):
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print("  ".join(h.ljust(n) for h, n in zip(head, w)), file=out)
    print("  ".join("-" * n for n in w), file=out)
    for r in rows:
        print("  ".join(str(x).ljust(n) for x, n in zip(r, w)), file=out)


def md_table(head, rows):
    s = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    for r in rows:
        s += "| " + " | ".join(str(x).replace("|", "/") for x in r) + " |\n"
    return s


# --- plots --------------------------------------------------------------------

def plots(rep, gpdir, work, imgdir):
    """Writes gnuplot data files and runs the scripts; returns the PNG names
    made, or a note saying why there are none."""
    if not shutil.which("gnuplot"):
        return [], "gnuplot is not installed: no plots in this run."
    os.makedirs(work, exist_ok=True)
    os.makedirs(imgdir, exist_ok=True)
    made = []
    cores = rep["machine"]["cpus_usable"]
    for k, e in rep["scaling"].items():
        with open(os.path.join(work, f"speedup_{k}.dat"), "w") as f:
            f.write("# workers ideal forkpool openmp\n")
            for w, r in e.get("workers", {}).items():
                f.write(f"{w} {min(int(w), cores)} "
                        f"{r.get('speedup_forkpool', 'NaN')} "
                        f"{r.get('speedup_openmp', 'NaN')}\n")
    with open(os.path.join(work, "payload.dat"), "w") as f:
        f.write("# bytes forkpool python pipe memcpy\n")
        pipe = rep["metrics"].get("pipe_bw", {}).get("baseline") or "NaN"
        mc = rep["metrics"].get("memcpy_bw", {}).get("baseline") or "NaN"
        for size, e in rep["payload"].items():
            f.write(f"{size} {e['forkpool'] or 'NaN'} {e['python'] or 'NaN'} "
                    f"{pipe} {mc}\n")
    with open(os.path.join(work, "chunks.dat"), "w") as f:
        f.write("# chunksize forkpool python (ns/item)\n")
        for cs, e in rep["chunks"].items():
            fp = e.get("forkpool", {}).get("median", "NaN")
            py = e.get("python", {}).get("median", "NaN")
            f.write(f"{cs} {fp} {py}\n")
    with open(os.path.join(work, "rss.dat"), "w") as f:
        f.write("# n map_MiB imap_producer_MiB\n")
        for n in rep["rss"].get("map", {}):
            m = rep["rss"]["map"][n]["median"]
            i = rep["rss"].get("imap", {}).get(n, {}).get("median", "NaN")
            f.write(f"{n} {m} {i}\n")
    have = {"speedup.gp": any(e.get("workers") for e in rep["scaling"].values()),
            "payload.gp": bool(rep["payload"]), "chunks.gp": bool(rep["chunks"]),
            "rss.gp": bool(rep["rss"].get("map"))}
    for gp, png in (("speedup.gp", "speedup.png"), ("payload.gp", "payload.png"),
                    ("chunks.gp", "chunks.png"), ("rss.gp", "rss.png")):
        if not have[gp]:
            continue
        r = subprocess.run(
            ["gnuplot", "-e", f"datadir='{work}'; out='{imgdir}/{png}'; "
             f"cores={cores}", os.path.join(gpdir, gp)],
            capture_output=True, text=True)
        if r.returncode == 0:
            made.append(png)
        else:
            print(f"report: gnuplot {gp} failed: {r.stderr.strip()}",
                  file=sys.stderr)
    return made, ""


# --- markdown -------------------------------------------------------------------

def markdown(rep, pngs, plot_note, notes):
    m = rep["machine"]
    s = ["# forkpool benchmarks\n",
         "Generated by `make bench` (demos/bench/run.sh -> report.py) from "
         "benchmarks.json; do not edit by hand: every figure here comes from "
         "that run.\n",
         f"- date: {rep['date']}, mode: {rep['mode']}, "
         f"whole run: {rep['elapsed_s']} s; load average (1, 5, 15 min) "
         f"at the start {rep.get('loadavg_start')}, at the end "
         f"{rep.get('loadavg_end')}",
         f"- CPU: {m['cpu']}, {m['cpus_usable']} usable of "
         f"{m['cpus_online']} online, memory {m['memory']}",
         f"- OS: {m['os']}, kernel {m['kernel']}, {m['gcc']}",
         f"- Python {m['python']} (multiprocessing, fork start method, 2 "
         f"workers), joblib {m['joblib']} (loky backend, n_jobs=2)\n",
         "Figures are medians over the runs (min and max are in the JSON). "
         "Ratios say how many times faster forkpool is than the other side "
         "(rates: forkpool / other; times: other / forkpool); below 1 means "
         "slower. `py` = Python multiprocessing, `jo` = joblib, `ba` = the "
         "baseline named in the row.\n"]
    if rep["failed"]:
        s.append("**Failed commands in this run** (their rows are "
                 "missing): " + ", ".join(f"`{c}`" for c in rep["failed"])
                 + "\n")
    s.append("## Overheads\n")
    head, rows = main_table(rep)
    s.append(md_table(head, rows))
    s.append("\nPayload rows: the baseline is the raw pipe bandwidth (one "
             "direction) while forkpool and Python move every byte both ways "
             "(2 x size per item). The plot halves their figures, so that "
             "every line is bytes per second in one direction.\n")
    if "payload.png" in pngs:
        s.append("![throughput vs payload size](img/payload.png)\n")
    s.append("## CPU-bound scaling\n")
    s.append("Each kernel's tasks (see demos/bench/kernels.h) run "
             "sequentially, with OpenMP (`schedule(dynamic,1)`) and with "
             "forkpool (`fp_pool_map`, chunksize 1) on 1 ... 2 x cores "
             "workers; both parallel sides start their threads/workers "
             "before the clock starts. Efficiency = speedup / workers; the "
             f"target is forkpool's efficiency >= {EFF_TARGET:.0%} of "
             "OpenMP's.\n")
    head, rows = scaling_table(rep)
    s.append(md_table(head, rows))
    bad = [k for k, e in rep["scaling"].items()
           if e and not e.get("checksums_agree", True)]
    if bad:
        s.append(f"\n**Checksum mismatch** between sides for: {bad}\n")
    if "speedup.png" in pngs:
        s.append("\n![speedup vs workers](img/speedup.png)\n")
    if rep["pin"]:
        s.append("\n### Pinning\n\nThe kmeans kernel on one worker per "
                 "usable CPU with `pin` = none / compact / scatter:\n")
        s.append(md_table(["pin", "median s", "min s", "max s"],
                          [[p, fmt(e["median"]), fmt(e["min"]),
                            fmt(e["max"])] for p, e in rep["pin"].items()]))
    s.append("\n## Cost growth\n")
    s.append("### Per-item cost vs chunksize\n\nAn identity map over int64 "
             "(forkpool: `fp_pool_map`; Python: `Pool.map` over `range`), "
             "time per item:\n")
    s.append(md_table(["chunksize", "forkpool ns/item", "python ns/item",
                       "ratio"],
                      [[cs, fmt(e.get("forkpool", {}).get("median")),
                        fmt(e.get("python", {}).get("median")),
                        fmt_ratio(speed_ratio(
                            e.get("forkpool", {}).get("median"),
                            e.get("python", {}).get("median"), "lo"))]
                       for cs, e in rep["chunks"].items()]))
    if "chunks.png" in pngs:
        s.append("\n![per-item cost vs chunksize](img/chunks.png)\n")
    s.append("\n### Master peak RSS as n grows\n\nEach point is a fresh "
             "child process (VmHWM): `fp_pool_map` over n int64 (input and "
             "output arrays included, so it must grow with n) and a "
             "producer-fed `fp_pool_imap_producer` (chunksize 1024, default "
             "read-ahead), which must not grow.\n")
    rows = []
    for n, e in rep["rss"].get("map", {}).items():
        i = rep["rss"].get("imap", {}).get(n)
        rows.append([n, fmt(e["median"]), fmt(i["median"] if i else None)])
    s.append(md_table(["n", "map MiB", "imap_producer MiB"], rows))
    if "rss.png" in pngs:
        s.append("\n![peak RSS vs n](img/rss.png)\n")
    if plot_note:
        s.append(f"\n_{plot_note}_\n")
    if rep.get("profile"):
        s.append("\n## Where the time goes: software counters\n\n"
                 "`perf stat` over one run of each group (master and "
                 "workers; the count includes the pool start and the "
                 "checks):\n")
        items = profile_items()
        rows = []
        for g, c in rep["profile"].items():
            n = items.get(g)
            cs = c.get("context-switches")
            tc = c.get("task-clock")
            rows.append([g, fmt(n), fmt(tc), fmt(cs),
                         fmt(cs / n) if n and cs is not None else "-",
                         fmt(tc * 1e6 / n) if n and tc is not None else "-",
                         fmt(c.get("cpu-migrations")),
                         fmt(c.get("page-faults"))])
        s.append(md_table(["group", "items", "task-clock ms",
                           "context switches", "switches / item",
                           "CPU ns / item", "cpu migrations", "page faults"],
                          rows))
    s.append("\n## How to read and reproduce\n")
    s.append("`make bench` (about 5-10 minutes) rewrites this page, "
             "docs/benchmarks.json and docs/img/; `BENCH_QUICK=1 make bench` "
             "is the < 60 s smoke test CI runs, writing into "
             "build/bench-report/ instead.\n")
    if notes:
        s.append("\n" + notes.strip() + "\n")
    return "\n".join(s) + "\n"


def profile_items():
    """Items processed by one full-size run of each profiled group, from
    py_bench.py's sizes() (the same counts as fpbench.c's)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import py_bench  # noqa: E402 - stdlib only, defines no side effects
    py_bench.QUICK = False
    n = py_bench.sizes()
    return {"apply": n["apply"], "async": n["async_"], "map": n["map"],
            "imap": n["imap"],
            "payload": sum(k for _, k in py_bench.payload_sizes())}


def parse_profile(path):
    prof, group = {}, None
    if not path or not os.path.exists(path):
        return prof
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("group="):
                group = line[6:]
                prof[group] = {}
                continue
            p = line.split(",")
            if group and len(p) >= 3 and p[0]:
                try:
                    prof[group][p[2]] = float(p[0])
                except ValueError:
                    pass
    return {g: c for g, c in prof.items() if c}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results")
    ap.add_argument("--replot", metavar="JSON",
                    help="only redraw OUT/img/*.png from this JSON")
    ap.add_argument("--profile")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gp", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--work", default="build/bench/plot")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.replot:
        with open(a.replot) as f:
            pngs, note = plots(json.load(f), a.gp, a.work,
                               os.path.join(a.out, "img"))
        print(note or "report: redrew " + ", ".join(
            os.path.join(a.out, "img", p) for p in pngs))
        return 0 if pngs else 1
    if not a.results:
        ap.error("--results is required (or --replot JSON)")
    data, failed, meta = parse(a.results)
    rep = build(data, failed, meta, a.quick, parse_profile(a.profile))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "benchmarks.json"), "w") as f:
        json.dump(rep, f, indent=1, sort_keys=False)
    # The Markdown and plots come from the JSON just written, nothing else.
    with open(os.path.join(a.out, "benchmarks.json")) as f:
        rep = json.load(f)
    pngs, note = plots(rep, a.gp, a.work, os.path.join(a.out, "img"))
    notes = ""
    npath = os.path.join(a.gp, "notes.md")
    if os.path.exists(npath):
        with open(npath) as f:
            notes = f.read()
    with open(os.path.join(a.out, "benchmarks.md"), "w") as f:
        f.write(markdown(rep, pngs, note, notes))
    print()
    print_table(*main_table(rep))
    print()
    print_table(*scaling_table(rep))
    if rep["pin"]:
        print("\npin (kmeans, s): " + ", ".join(
            f"{p} {fmt(e['median'])}" for p, e in rep["pin"].items()))
    if rep["chunks"]:
        print("chunksize -> forkpool/python ns per item: " + ", ".join(
            f"{cs}: {fmt(e.get('forkpool', {}).get('median'))}/"
            f"{fmt(e.get('python', {}).get('median'))}"
            for cs, e in rep["chunks"].items()))
    for kind, pts in rep["rss"].items():
        print(f"peak RSS {kind} (MiB): " + ", ".join(
            f"n={n}: {fmt(e['median'])}" for n, e in pts.items()))
    miss = [k for k, e in rep["metrics"].items() if e["status"] == "miss"]
    print(f"\ntargets missed: {', '.join(miss) or 'none'}")
    if failed:
        print("FAILED commands: " + "; ".join(failed))
    if note:
        print(note)
    print(f"report: {a.out}/benchmarks.md, {a.out}/benchmarks.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
