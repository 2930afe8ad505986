#!/usr/bin/env bash
# Installs the Debian packages toptag needs (if missing) and builds it in ./build (Release).
# Extra arguments go to CMake, e.g. scripts/build.sh -DTOPTAG_SANITIZE=ON.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
BUILD_DIR=${TOPTAG_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-Release} "$@" >/dev/null
# Two jobs at most: the translation units are heavy, and the reference machine has 2 cores.
cmake --build "$BUILD_DIR" -j "${TOPTAG_BUILD_JOBS:-2}"
echo "build: toptag is at $BUILD_DIR/toptag"
