#!/bin/sh
# SPDX-License-Identifier: MIT
# run.sh - runs every demo program in a directory and summarises them.
#
#   sh demos/run.sh build/demos        (what `make demo` does)
#
# Each demo runs at its default sizes with its own output shown, times each
# side 3 times (--repeat) and ends with a line "RESULT <name> seq=<s>
# par=<s> speedup=<x> check=ok|FAIL ..." giving the medians (see
# demos/lib/demo.h). The summary table is built from those lines; a speedup
# the demo cannot really reach is marked "noisy, rerun". A demo that is not
# built is skipped with a note; one that exits non-zero, prints no RESULT
# line or reports check=FAIL makes the whole run fail (exit status 1); a
# noisy one does not.
# DEMO_ARGS is passed to every demo (e.g. DEMO_ARGS="--workers 4").
# DEMO_LIST replaces the list of demos and DEMO_LAUNCH is put before each
# command: `make demo-mpi` runs kmeans and bogosort with
# DEMO_LAUNCH="mpirun -n 3" DEMO_ARGS="--transport mpi ...".

dir=${1:-build/demos}
demos=${DEMO_LIST:-"tour cumsum forest bogosort kmeans textclean affinity manager"}
tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT INT TERM
tmo=
command -v timeout >/dev/null 2>&1 && tmo="timeout 300"
failed=0
start=$(date +%s)

for name in $demos; do
  bin="$dir/$name"
  if [ ! -x "$bin" ]; then
    echo "== $name: not built ($bin missing), skipped"
    echo "$name skipped" >> "$tmp/summary"
    continue
  fi
  echo "== $name"
  # Show the output as it comes and keep it; the status travels in a file
  # because a pipeline's status is tee's.
  { $tmo ${DEMO_LAUNCH:-} "$bin" $DEMO_ARGS 2>&1; echo $? > "$tmp/$name.rc"; } |
    tee "$tmp/$name.out"
  rc=$(cat "$tmp/$name.rc")
  line=$(grep '^RESULT ' "$tmp/$name.out" | tail -n 1)
  if [ "$name" = tour ]; then
    # The tour is the README's example: it has no timings, only a status.
    if [ "$rc" = 0 ]; then
      echo "$name tour ok" >> "$tmp/summary"
    else
      echo "$name crashed $rc" >> "$tmp/summary"
      failed=1
    fi
  elif [ -z "$line" ]; then
    echo "$name crashed $rc" >> "$tmp/summary"
    failed=1
  else
    echo "$line" >> "$tmp/summary"
    case "$line" in *check=ok*) [ "$rc" = 0 ] || failed=1 ;; *) failed=1 ;; esac
  fi
  echo
done

end=$(date +%s)
echo "== summary ($dir, $((end - start)) s in all)"
awk '
  BEGIN { printf "%-10s %12s %12s %9s  %s\n", "demo", "sequential s",
          "parallel s", "speedup", "check" }
  $1 == "RESULT" {
    seq = par = sp = ck = "?"
    note = ""
    for (i = 3; i <= NF; i++) {
      split($i, kv, "=")
      if (kv[1] == "seq") seq = kv[2]
      else if (kv[1] == "par") par = kv[2]
      else if (kv[1] == "speedup") sp = kv[2] "x"
      else if (kv[1] == "check") ck = kv[2]
      else if (kv[1] == "note" && kv[2] == "noisy") note = "  (speedup noisy, rerun)"
    }
    printf "%-10s %12s %12s %9s  %s%s\n", $2, seq, par, sp, ck, note
    next
  }
  $2 == "skipped" { printf "%-10s %12s %12s %9s  %s\n", $1, "-", "-", "-",
                    "skipped (not built)"; next }
  $2 == "tour"    { printf "%-10s %12s %12s %9s  %s\n", $1, "-", "-", "-",
                    "ok"; next }
  $2 == "crashed" { printf "%-10s %12s %12s %9s  %s\n", $1, "-", "-", "-",
                    "FAIL (exit status " $3 ", no RESULT line)"; next }
' "$tmp/summary"
if [ "$failed" != 0 ]; then
  echo "demo run FAILED"
  exit 1
fi
echo "all demos ok"
