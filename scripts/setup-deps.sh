#!/usr/bin/env bash
# Installs every Debian 12 package toptag needs to build, test and run.
# Idempotent: packages already present are left alone. Must run as root (or via sudo).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libopenblas-openmp-dev libopenblas-dev
  libhdf5-dev hdf5-tools hdf5-filter-plugin-blosc-serial
  libcli11-dev libfmt-dev nlohmann-json3-dev
  libgnuplot-iostream-dev libboost-iostreams-dev libboost-system-dev libboost-filesystem-dev gnuplot-nox
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libfastjet-dev
  libopenmpi-dev openmpi-bin  # data-parallel training (mpirun -np N toptag train ...)
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libcpp-httplib-dev libboost-dev
  libonnx-dev  # toptag export: ONNX's protobuf classes and checker
  libopencv-dnn-dev  # tests only: OpenCV's dnn module runs the exported ONNX models
  clang libclang-rt-14-dev libomp-dev  # the sanitizer and libFuzzer build (scripts/sanitize.sh, scripts/fuzz.sh)
  python3-h5py python3-pandas python3-tables  # tests only: toptag's files read from Python, as the real ones are
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup-deps: done"
