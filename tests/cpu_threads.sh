#!/usr/bin/env bash
# Threads follow the CPUs this process may use, not the machine's (issue 23, part 3): under taskset
# every computing command's --threads 0 runs one thread and says why, perf --local measures 1 thread
# only, and under mpirun each rank counts its own binding (--bind-to core) or shares the machine
# (--bind-to none). Needs a machine with at least 2 CPUs to tell the cases apart.
# Usage: cpu_threads.sh TOPTAG
set -euo pipefail
TOPTAG=$(realpath "$1")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
source "$(dirname "$0")/cli_common.sh"
enter_work_dir

cpus=$(getconf _NPROCESSORS_ONLN)  # the machine's; nproc would count this process's affinity mask
[ "$(nproc)" -ge 2 ] || fail "this test needs 2 usable CPUs or more to tell one from all (nproc says $(nproc))"

# The line each computing command prints to stderr, once.
threads_line() { grep '^\(rank [0-9]*: \)\?threads: ' "$1" || true; }

# generate and images under taskset -c 0: one thread, because of the affinity mask.
taskset -c 0 $TOPTAG generate -o jets.h5 -n 64 --seed 1 >/dev/null 2>gen.log || fail "generate: $(tail -3 gen.log)"
line=$(threads_line gen.log)
[ "$(echo "$line" | wc -l)" = 1 ] || fail "generate printed $(echo "$line" | wc -l) threads lines: $line"
echo "$line" | grep -q "^threads: 1 (--threads 0: 1 CPU in this process's affinity mask, of $cpus in the machine)$" \
  || fail "generate under taskset -c 0: $line"
taskset -c 0 $TOPTAG images -i jets.h5 -o images.h5 --image-size 16 >/dev/null 2>images.log || fail "images"
threads_line images.log | grep -q "^threads: 1 (--threads 0: 1 CPU" || fail "images: $(threads_line images.log)"

# An explicit count is taken as given, and says so.
taskset -c 0 $TOPTAG generate -o jets3.h5 -n 8 --seed 1 --threads 3 >/dev/null 2>gen3.log || fail "generate --threads 3"
threads_line gen3.log | grep -q "^threads: 3 (--threads 3)$" || fail "--threads 3: $(threads_line gen3.log)"

# Without taskset: every CPU (this machine has no cgroup quota below its CPU count, or says so).
$TOPTAG generate -o jets_all.h5 -n 8 --seed 1 >/dev/null 2>all.log || fail "generate without taskset"
threads_line all.log | grep -q "^threads: [0-9]* (--threads 0: \(all $cpus CPUs of the machine\|cgroup v[12] quota .*\|$(nproc) CPUs in this process's affinity mask.*\))$" \
  || fail "generate without taskset: $(threads_line all.log)"

# perf --local's default list is 1 and the usable CPUs: under taskset -c 0, one point per batch only.
taskset -c 0 $TOPTAG perf --local --arch resnet10 --image-size 16 --channels 1 --batch 1 --duration 100ms \
  --warmup 10ms --csv perf.csv >/dev/null 2>perf.log || fail "perf --local: $(tail -3 perf.log)"
[ "$(grep -c '^local,' perf.csv)" = 1 ] || fail "perf --local under taskset -c 0 measured: $(grep '^local,' perf.csv)"
grep -q '^local,1,1,1,' perf.csv || fail "perf --local's point is not 1 thread: $(cat perf.csv)"
threads_line perf.log | grep -q "^threads: measuring 1 (1 and the usable CPUs: 1 CPU in this process's affinity mask" \
  || fail "perf --local: $(threads_line perf.log)"

# Under mpirun: a tiny training run, one epoch. Each rank reports its own count.
TINY="--train jets.h5 --val jets.h5 --arch resnet10 --width 4 --hidden 16 --image-size 16 --batch-size 16 --epochs 1"
mpirun -np 1 --bind-to core $TOPTAG train $TINY -o one >/dev/null 2>one.log || fail "1 rank bound: $(tail -3 one.log)"
threads_line one.log | grep -q "^threads: 1 (--threads 0: 1 CPU in this process's affinity mask" \
  || fail "1 rank bound to a core: $(threads_line one.log)"

mpirun -np 2 --oversubscribe --bind-to core $TOPTAG train $TINY -o bound >/dev/null 2>bound.log \
  || fail "2 ranks bound: $(tail -3 bound.log)"
for rank in 0 1; do
  threads_line bound.log | grep -q "^rank $rank: threads: 1 (--threads 0: 1 CPU in this rank's affinity mask, which no other" \
    || fail "rank $rank bound to a core: $(threads_line bound.log)"
done

mpirun -np 2 --oversubscribe --bind-to none $TOPTAG train $TINY -o unbound >/dev/null 2>unbound.log \
  || fail "2 ranks unbound: $(tail -3 unbound.log)"
share=$((cpus / 2))
for rank in 0 1; do
  threads_line unbound.log | grep -q \
    "^rank $rank: threads: $share (--threads 0: $cpus CPUs in this rank's affinity mask shared with 1 other rank on this machine -> $share)" \
    || fail "rank $rank unbound: $(threads_line unbound.log)"
done

echo "cpu_threads: all passed"
