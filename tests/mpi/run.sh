#!/bin/sh
# SPDX-License-Identifier: MIT
# tests/mpi/run.sh BUILD [MPIRUN] - runs the MPI tests (make check-mpi).
#
# Each program runs under mpirun with a time bound; its own closing line
# ("N passed, N failed") is summed, and mpirun's exit status must be 0,
# which it is only when every rank exited 0. Afterwards no process of the
# test programs may be left. Open MPI is set up for a container: root
# allowed, oversubscription (3-5 ranks on 2 CPUs), shared memory only.
set -u
B=${1:?usage: run.sh BUILD [MPIRUN]}
MPIRUN=${2:-mpirun}
T=$B/tests/mpi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_pml=ob1
passed=0 failed=0

# run NAME CMD... : runs CMD bounded by 120 s, adds its counts.
run() {
  name=$1; shift
  echo "== $name"
  out=$(timeout -k 5 120 "$@" 2>&1); rc=$?
  printf '%s\n' "$out"
  line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
  p=$(echo "$line" | sed -nE 's/^([0-9]+) passed.*/\1/p')
  f=$(echo "$line" | sed -nE 's/.* ([0-9]+) failed$/\1/p')
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0}))
  if [ "$rc" != 0 ] || [ -z "$line" ]; then
    echo "   $name: exit status $rc"
    failed=$((failed + 1))
  fi
}

run "calls, 3 ranks" $MPIRUN -n 3 "$T/calls"
run "calls, 5 ranks" $MPIRUN -n 5 "$T/calls"
run "no worker ranks" $MPIRUN -n 1 "$T/calls" --singleton
run "Manager refs refused on worker ranks" $MPIRUN -n 3 "$T/refuse"
run "CPU lists refused" $MPIRUN -n 3 "$T/refuse" --pin-list
run "close/join through dlopen" env FP_MPI_LIBRARY="$B/libforkpool_mpi.so.0" \
  $MPIRUN -x FP_MPI_LIBRARY -n 3 "$T/nolink_close"
run "no MPI library" "$T/nolink_missing"
run "exit without fp_pool_free" $MPIRUN -n 3 "$T/leave" --no-free
run "a rank too late for rank 0" $MPIRUN -n 3 "$T/leave" --late
run "MPI_Finalize with the pool alive" $MPIRUN -n 3 "$T/leave" --finalize
run "an option out of range on every rank" $MPIRUN -n 3 "$T/leave" --bad-option
run "an unknown pin policy on every rank" $MPIRUN -n 3 "$T/leave" --bad-option pin
run "two threads make an MPI pool at once" $MPIRUN -n 3 "$T/leave" --threads
run "free of 1024 workers per rank is bounded" $MPIRUN -n 2 "$T/leave" --many
run "free gives a stopped rank up" $MPIRUN -n 3 "$T/leave" --stopped
run "memory and message-size limits" $MPIRUN -n 2 "$T/limits"
run "FP_MPI_HELLO_TIMEOUT=inf is no bound" env FP_MPI_HELLO_TIMEOUT=inf \
  $MPIRUN -x FP_MPI_HELLO_TIMEOUT -n 3 "$T/refuse"

echo "== the core does not link MPI"
if objdump -p "$B/libforkpool.so" | grep -q 'NEEDED.*mpi'; then
  echo "   libforkpool.so needs an MPI library"; failed=$((failed + 1))
else
  passed=$((passed + 1))
fi
echo "== nothing left running"
left=$(ps -eo pid=,args= | grep -E "$T/(calls|refuse|leave|limits|nolink_)" | grep -v grep)
if [ -n "$left" ]; then
  echo "   left running:"; echo "$left"; failed=$((failed + 1))
else
  passed=$((passed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
