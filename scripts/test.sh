#!/usr/bin/env bash
# The whole test suite from a fresh clone: install dependencies, build, run every test with CTest,
# then the same tests under ASan + UBSan and each fuzzer for a minute (TOPTAG_SKIP_SANITIZE=1: not those).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD_DIR=${TOPTAG_BUILD_DIR:-build}
(cd "$BUILD_DIR" && ctest --output-on-failure -j 2 "$@")
# Then again under the sanitizers, and the fuzzers for a bounded time (scripts/sanitize.sh).
if [ -z "${TOPTAG_SKIP_SANITIZE:-}" ]; then
  bash scripts/sanitize.sh
fi
