#!/bin/bash
# A rank killed mid-map takes the MPI job down (Open MPI 4.1 has no fault
# tolerance), and leaves no rank running and no zcstore segment behind.
# Usage: killed_rank.sh MPIRUN PROGRAM [ARGS...] (run with --kill-a-rank added;
# its rank 3 prints "rank 3 (pid N)" and kills itself)
set -u
mpirun=$1
shift
bin="$*"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm=isolated \
  ZCSTORE_MPI_RANKS_PER_NODE=2
# Segments are compared by name: tests running beside this one (ctest -j)
# create and remove their own meanwhile.
segments() { ls /dev/shm | grep '^zcstore' | sort || true; }
before=$(segments)
out=$(timeout 120 "$mpirun" --oversubscribe -np 4 "$@" --kill-a-rank 2>&1)
rc=$?
echo "$out" | tail -15
[ "$rc" -ne 124 ] || { echo "FAIL: the job hung"; exit 1; }
[ "$rc" -ne 0 ] || { echo "FAIL: the job exited 0 with a rank killed"; exit 1; }
echo "$out" | grep -q "rank 3 (pid" || { echo "FAIL: rank 3 never got to kill itself"; exit 1; }
for _ in $(seq 50); do
  pgrep -f -- "$bin --kill-a-rank" >/dev/null || break
  sleep 0.1
done
if pgrep -af -- "$bin --kill-a-rank"; then echo "FAIL: ranks left running"; exit 1; fi
# New since the job started: the job's, or another test's, which goes with
# that test (names that appear later are not the job's: it has ended).
new=$(comm -13 <(echo "$before") <(segments))
left() { comm -12 <(echo "$new") <(segments) | grep . ; }
for _ in $(seq 100); do
  left >/dev/null || break
  sleep 0.1
done
if left; then echo "FAIL: zcstore segments left in /dev/shm"; exit 1; fi
echo "PASS: the job ended (exit $rc); no rank and no segment left"
