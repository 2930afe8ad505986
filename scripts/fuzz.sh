#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time: scripts/fuzz.sh TARGET SECONDS
#   TARGET: http (REST requests into the server), grpc (ModelInfer requests), hdf5 (the HDF5 readers,
#   on files edited structurally), format (the quantization format parser); "all" runs each in turn.
# Builds build-fuzz/ with clang, AddressSanitizer and UndefinedBehaviorSanitizer if needed (also what
# scripts/sanitize.sh tests with). The seeds in fuzz/corpus/TARGET are copied into
# build-fuzz/corpus/TARGET, which keeps what the fuzzer learns between runs; a finding is written to
# build-fuzz/findings/ and makes this script fail, printing how to reproduce it.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh http|grpc|hdf5|format|all SECONDS}
seconds=${2:?usage: scripts/fuzz.sh TARGET SECONDS}
BUILD=${TOPTAG_FUZZ_BUILD_DIR:-build-fuzz}

if [ ! -x "$BUILD/fuzz/fuzz_http" ] || [ -n "${TOPTAG_FUZZ_REBUILD:-}" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOPTAG_FUZZ=ON \
    -DTOPTAG_BUILD_BENCH=OFF -DTOPTAG_NATIVE=OFF >/dev/null
fi
cmake --build "$BUILD" -j "${TOPTAG_BUILD_JOBS:-2}" --target fuzz_http fuzz_grpc fuzz_hdf5 fuzz_format >/dev/null

run_one() {
  local t=$1 corpus="$BUILD/corpus/$1" findings="$BUILD/findings"
  mkdir -p "$corpus" "$findings"
  cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  # Leaks are not checked for hdf5: HDF5's blosc plugin keeps buffers it never frees (see tests/CMakeLists.txt).
  local leaks=1
  [ "$t" = hdf5 ] && leaks=0
  echo "fuzz: $t for ${seconds}s"
  if ! ASAN_OPTIONS="detect_leaks=$leaks" "$BUILD/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=20 \
      -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 -artifact_prefix="$findings/$t-" "$corpus" \
      >"$BUILD/fuzz_$t.log" 2>&1; then
    tail -40 "$BUILD/fuzz_$t.log"
    echo "fuzz: $t FOUND A PROBLEM; reproduce with: $BUILD/fuzz/fuzz_$t $findings/$t-*" >&2
    return 1
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$BUILD/fuzz_$t.log" | tr '\n' ' '
  echo "corpus $(ls "$corpus" | wc -l) inputs"
}

if [ "$target" = all ]; then
  for t in http grpc hdf5 format; do run_one "$t"; done
else
  run_one "$target"
fi
