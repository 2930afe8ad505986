#!/usr/bin/env bash
# The whole test suite again under AddressSanitizer + UndefinedBehaviorSanitizer (clang, build-fuzz/),
# then every libFuzzer target for TOPTAG_FUZZ_SECONDS each (default 60). Any sanitizer report fails
# the test that triggered it; any fuzzer finding fails this script. scripts/test.sh runs it after the
# Release tests (TOPTAG_SKIP_SANITIZE=1 skips it there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
BUILD=${TOPTAG_FUZZ_BUILD_DIR:-build-fuzz}
start=$(date +%s)
CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOPTAG_FUZZ=ON \
  -DTOPTAG_BUILD_BENCH=OFF -DTOPTAG_NATIVE=OFF >/dev/null
cmake --build "$BUILD" -j "${TOPTAG_BUILD_JOBS:-2}"
built=$(date +%s)
# The soak test runs shorter here: the sanitizers slow every request several times over.
(cd "$BUILD" && TOPTAG_SOAK_SECONDS=${TOPTAG_SOAK_SECONDS:-20} ctest --output-on-failure -j 2)
tested=$(date +%s)
for target in http grpc hdf5 format; do
  bash scripts/fuzz.sh "$target" "${TOPTAG_FUZZ_SECONDS:-60}"
done
echo "sanitize: build $((built - start)) s, tests under ASan+UBSan $((tested - built)) s, fuzzing $(($(date +%s) - tested)) s"
