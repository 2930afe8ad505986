#!/usr/bin/env bash
# The whole test suite from a fresh clone: install dependencies, build, run every test with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BUILD_DIR=${TOPTAG_BUILD_DIR:-build}
cd "$BUILD_DIR"
ctest --output-on-failure -j 2 "$@"
