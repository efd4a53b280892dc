#!/bin/sh
# SPDX-License-Identifier: MIT
# compare.sh - runs every demo in C and its Python twin and prints one
# table comparing them (what `make demo-compare` runs).
#
#   sh demos/compare.sh BUILD_DIR
#
# For each demo, the C program (BUILD_DIR/demos/NAME) and the twin
# (demos/python/NAME.py, with Debian's /usr/bin/python3) run with --quiet
# and the same --repeat (COMPARE_REPEAT, default 3: medians of 3 runs per
# side) and worker count (their default, the usable CPUs). From their
# RESULT lines (demos/lib/demo.h) the table gives, per demo:
#
#   C time, Python time   the parallel side (the pool), median, seconds
#   C speedup, Python     sequential / parallel, each in its own language
#   C/Python              C's time over Python's for the same work: when a
#                         twin runs fewer items (bogosort: 100 arrays
#                         against 1000; affinity and manager: smaller
#                         loops), per item, from the RESULT lines' items=
#
# A speedup the demo cannot really reach is starred ("noisy, rerun"). The
# seeds' "time against number of workers" chart, bogosort's table for 1 to
# 2 x CPUs workers in both languages (time per array, log scale), goes to
# BUILD_DIR/demo-compare/workers.png (gnuplot, installed with apt-get when
# missing); the table is also saved as BUILD_DIR/demo-compare/table.txt.
# Exits 1 when a demo fails or a check is not ok.

build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
[ -x "$py" ] || py=python3
repeat=${COMPARE_REPEAT:-3}
out=$build/demo-compare
demos="cumsum forest bogosort kmeans textclean affinity manager"
tmo=
command -v timeout >/dev/null 2>&1 && tmo="timeout 900"
mkdir -p "$out" || exit 2
: > "$out/results"
failed=0

# The Python side's modules (demos/python/run.sh installs them) and gnuplot.
sh "$here/python/run.sh" --deps || exit 2
if ! command -v gnuplot >/dev/null 2>&1 && command -v apt-get >/dev/null; then
  echo "== installing gnuplot-nox"
  SUDO=
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    --no-install-recommends gnuplot-nox >/dev/null 2>&1 ||
    echo "compare: gnuplot not installed: no chart" >&2
fi

start=$(date +%s)
for name in $demos; do
  extra=
  [ "$name" = bogosort ] && extra="--table-repeat $repeat"
  for side in C Python; do
    if [ $side = C ]; then
      set -- "$build/demos/$name" $extra
    else
      [ "$name" = bogosort ] && extra="$extra --table"
      set -- "$py" "$here/python/$name.py" $extra
    fi
    printf '== %-10s %-6s ' "$name" "$side"
    t0=$(date +%s)
    if ! $tmo "$@" --quiet --repeat "$repeat" > "$out/$name.$side" 2>&1; then
      echo "FAILED (exit status $?):"
      cat "$out/$name.$side"
      failed=1
      continue
    fi
    sed -n "s/^\(RESULT\|WORKERS\) /$side &/p" "$out/$name.$side" \
      >> "$out/results"
    echo "$(($(date +%s) - t0)) s"
  done
done
echo "== $(($(date +%s) - start)) s in all, medians of $repeat runs per side"
echo

# One row per demo; "C RESULT name k=v ..." lines are keyed by side.
awk -v repeat="$repeat" '
  function field(line, key,   n, i, kv, parts) {
    n = split(line, parts, " ")
    for (i = 4; i <= n; i++) {
      split(parts[i], kv, "=")
      if (kv[1] == key) return kv[2]
    }
    return ""
  }
  $2 == "RESULT" { res[$1, $3] = $0; if (!($3 in seen)) { seen[$3] = 1; order[++n] = $3 } }
  END {
    printf "%-10s %9s %10s %10s %11s %9s  %s\n", "demo", "C time s",
           "Python s", "C speedup", "Py speedup", "C/Python", "compared"
    for (i = 1; i <= n; i++) {
      d = order[i]; c = res["C", d]; p = res["Python", d]
      if (c == "" || p == "") {
        printf "%-10s %s\n", d, "(missing: " (c == "" ? "C" : "Python") ")"
        continue
      }
      cpar = field(c, "par"); ppar = field(p, "par")
      cit = field(c, "items"); pit = field(p, "items")
      csp = field(c, "speedup") "x" (field(c, "note") == "noisy" ? "*" : "")
      psp = field(p, "speedup") "x" (field(p, "note") == "noisy" ? "*" : "")
      if (cit + 0 > 0 && pit + 0 > 0 && cit != pit) {
        ratio = (cpar / cit) / (ppar / pit)
        how = sprintf("per item (%s vs %s items)", cit, pit)
      } else {
        ratio = cpar / ppar
        how = "same work"
      }
      if (field(c, "check") != "ok" || field(p, "check") != "ok")
        how = how ", CHECK FAILED"
      printf "%-10s %9.3f %10.3f %10s %11s %9.4f  %s\n", d, cpar, ppar,
             csp, psp, ratio, how
    }
    print ""
    print "Times: the parallel side (the pool), median of " repeat " runs;" \
          " speedup: sequential / parallel in the same language;"
    print "C/Python: C time over Python time for the same work (0.02 = C" \
          " takes 2 % of Python'"'"'s time). * noisy, rerun."
  }' "$out/results" | tee "$out/table.txt"

# The chart: bogosort, time per array against workers, C and Python.
awk -v dir="$out" '
  $2 == "RESULT" && $3 == "bogosort" {
    for (i = 4; i <= NF; i++) {
      split($i, kv, "=")
      if (kv[1] == "seq") seq[$1] = kv[2]
      if (kv[1] == "items") items[$1] = kv[2]
    }
  }
  $2 == "WORKERS" && $3 == "bogosort" {
    for (i = 4; i <= NF; i++) {
      split($i, kv, "=")
      if (kv[1] == "w") w = kv[2]
      if (kv[1] == "time") t = kv[2]
      if (kv[1] == "items") it = kv[2]
    }
    rows[$1] = rows[$1] sprintf("%d %.6f\n", w, 1000 * t / it)
  }
  END {
    for (s in rows) {
      f = dir "/workers_" s ".dat"
      printf "# workers ms_per_array (seq %.6f ms per array, %s arrays)\n",
             1000 * seq[s] / items[s], items[s] > f
      printf "%s", rows[s] > f
      printf "%.6f %s\n", 1000 * seq[s] / items[s], items[s] > (dir "/seq_" s ".txt")
    }
  }' "$out/results"
if command -v gnuplot >/dev/null 2>&1 && [ -f "$out/workers_C.dat" ] &&
  [ -f "$out/workers_Python.dat" ]; then
  read -r cseq citems < "$out/seq_C.txt"
  read -r pseq pitems < "$out/seq_Python.txt"
  if gnuplot -e "datadir='$out'; out='$out/workers.png'; cpus=$(nproc);
      cseq=$cseq; pseq=$pseq; citems=$citems; pitems=$pitems" \
      "$here/compare.gp"; then
    echo "chart: $out/workers.png"
  else
    echo "compare: gnuplot failed: no chart" >&2
  fi
fi
if [ "$failed" != 0 ] || grep -q 'CHECK FAILED' "$out/table.txt"; then
  echo "demo-compare FAILED"
  exit 1
fi
