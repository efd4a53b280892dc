#!/bin/sh
# SPDX-License-Identifier: MIT
# run.sh - runs every benchmark side by side and writes the report.
#
#   sh demos/bench/run.sh BUILD_DIR        (what `make bench` runs)
#   BENCH_QUICK=1 sh demos/bench/run.sh build   (CI smoke test, < 60 s)
#
# Runs the raw C baselines (rawbench), forkpool (fpbench) and Python
# multiprocessing / joblib (py_bench.py, always with /usr/bin/python3, the
# Debian interpreter that has joblib) group by group, interleaving the sides
# run after run so that drift on a shared machine hits all sides alike. Every
# line of every run goes to BUILD/bench/results.txt; report.py then takes
# the medians, prints the table and writes JSON, Markdown and gnuplot PNGs:
# into docs/ for a full run, into BUILD/bench-report/ in quick mode (so CI
# never dirties the tree).
#
# A command that fails or hangs (timeout) is reported and its figures are
# missing from the table; the script then exits 1 after writing the report.

set -u
BUILD=${1:-build}
HERE=$(dirname "$0")
PY=/usr/bin/python3
QUICK=${BENCH_QUICK:-0}
[ "$QUICK" = "" ] && QUICK=0

if [ "$QUICK" != 0 ]; then
  RUNS=1; SRUNS=1; TMO=60; OUT=$BUILD/bench-report; MODE=--quick
else
  RUNS=5; SRUNS=3; TMO=300; OUT=docs; MODE=
fi
export BENCH_QUICK="$QUICK"

RAW=$BUILD/bench/rawbench
FP=$BUILD/bench/fpbench
RES=$BUILD/bench/results.txt
PROF=$BUILD/bench/profile.txt
mkdir -p "$BUILD/bench" "$OUT"
: > "$RES"
: > "$PROF"
FAILED=0

# Other work on the machine skews every figure. A full run waits (at most
# 2 minutes) for the 1-minute load average to fall below 1, and the load at
# the start and the end of the run goes into the report either way.
if [ "$QUICK" = 0 ]; then
  waited=0
  while [ $waited -lt 120 ] &&
    [ "$(awk '{print ($1 < 1.0)}' /proc/loadavg)" = 0 ]; do
    [ $waited = 0 ] && echo "bench: waiting for the machine to calm down"       "(load $(cut -d' ' -f1 /proc/loadavg))" >&2
    sleep 5
    waited=$((waited + 5))
  done
fi
echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')" >> "$RES"
echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)" >> "$RES"
START=$(date +%s)

# --- tools the report needs: gnuplot and joblib ------------------------------
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
need=
command -v gnuplot >/dev/null 2>&1 || need="$need gnuplot-nox"
$PY -c 'import joblib' >/dev/null 2>&1 || need="$need python3-joblib"
if [ -n "$need" ]; then
  echo "bench: installing$need" >&2
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      --no-install-recommends $need >/dev/null 2>&1 ||
      echo "bench: could not install$need (plots or joblib rows skipped)" >&2
  else
    echo "bench: no apt-get; install$need yourself" >&2
  fi
fi

# run CMD...: one run of one group, its lines appended to the results.
run() {
  if ! timeout "$TMO" "$@" >> "$RES"; then
    echo "bench: FAILED: $*" >&2
    echo "failed cmd=$*" >> "$RES"
    FAILED=1
  fi
}

# The MPI rows: apply, apply_async and map over an FP_TRANSPORT_MPI pool
# of 3 ranks on this machine (one worker per worker rank, so 2 workers as
# the local rows), interleaved with the local runs. They need mpirun and
# the MPI link beside the build (make bench builds it when mpicc is
# there); without either they are skipped with a note. Open MPI is set up
# as tests/mpi/run.sh does: root allowed, oversubscribed, shared memory.
MPI=
if command -v mpirun >/dev/null 2>&1 && [ -e "$BUILD/libforkpool_mpi.so.0" ]
then
  MPI="mpirun -x FP_MPI_LIBRARY -x BENCH_QUICK -n 3"
  FP_MPI_LIBRARY=$(cd "$BUILD" && pwd)/libforkpool_mpi.so.0
  export FP_MPI_LIBRARY OMPI_ALLOW_RUN_AS_ROOT=1
  export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
  export OMPI_MCA_pml=ob1
else
  echo "bench: no mpirun or no $BUILD/libforkpool_mpi.so.0: MPI rows skipped" >&2
fi

CORES=$(nproc)
MAXW=$((2 * CORES))
echo "bench: $RUNS runs per group, CPU kernels on 1..$MAXW workers" \
  "($([ "$QUICK" != 0 ] && echo quick || echo full) mode)" >&2

# --- overheads: the three sides interleaved, run after run ------------------
r=1
while [ $r -le $RUNS ]; do
  echo "bench: overheads, run $r of $RUNS" >&2
  run "$RAW" fork;    run "$FP" startstop; run $PY "$HERE/py_bench.py" startstop
  run "$FP" idle
  run "$RAW" pipe;    run "$FP" apply;     run $PY "$HERE/py_bench.py" apply
  run "$FP" async;    run $PY "$HERE/py_bench.py" async
  run "$FP" map;      run $PY "$HERE/py_bench.py" map
  [ -z "$MPI" ] || run $MPI "$FP" mpi
  run "$FP" starmap;  run $PY "$HERE/py_bench.py" starmap
  run "$FP" imap;     run $PY "$HERE/py_bench.py" imap
  run "$RAW" pipebw;  run "$RAW" memcpy
  run "$FP" payload;  run $PY "$HERE/py_bench.py" payload
  run "$FP" chunks;   run $PY "$HERE/py_bench.py" chunks
  run "$RAW" shared;  run "$FP" manager;   run $PY "$HERE/py_bench.py" manager
  r=$((r + 1))
done

# --- fault tolerance, CPU-bound scaling, pinning, memory ---------------------
r=1
while [ $r -le $SRUNS ]; do
  echo "bench: fault tolerance and CPU kernels, run $r of $SRUNS" >&2
  run "$FP" fault
  for k in cumsum bogosort kmeans forest; do
    run "$RAW" scale $k $MAXW
    run "$FP" scale $k $MAXW
  done
  run "$FP" pin
  r=$((r + 1))
done
echo "bench: peak RSS as n grows" >&2
run "$FP" rss
echo "bench: manager churn" >&2
run "$FP" churn

# --- where the time goes: software counters of one run per hot group --------
# (full mode only; perf may be missing or forbidden, which is not an error)
if [ "$QUICK" = 0 ] && command -v perf >/dev/null 2>&1; then
  for g in apply async map imap payload; do
    echo "group=$g" >> "$PROF"
    perf stat -x, -e task-clock,context-switches,cpu-migrations,page-faults \
      "$FP" $g 2>> "$PROF" >/dev/null || echo "perf failed" >> "$PROF"
  done
fi

END=$(date +%s)
echo "elapsed=$((END - START))" >> "$RES"
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)" >> "$RES"
$PY "$HERE/report.py" --results "$RES" --profile "$PROF" --out "$OUT" \
  --gp "$HERE" --work "$BUILD/bench/plot" $MODE || FAILED=1
echo "bench: done in $((END - START)) s; report in $OUT/benchmarks.md" >&2
exit $FAILED
