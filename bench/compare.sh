#!/usr/bin/env bash
# toptag against ONNX Runtime and PyTorch, in one run on this machine, one program after the other:
# ResNet-50 inference latency at batch 1 (p50) at 224x224x3 and 40x40x1, inference throughput at 40x40x1
# batch 64, and training throughput at 40x40x1 batch 64 (forward, backward, Adam).
#   toptag:       toptag perf --local on a checkpoint (batch norms folded, as predict runs it);
#                 training: bench_resnet
#   ONNX Runtime: toptag export of the same checkpoint, run by bench/ort_resnet.js (no training)
#   PyTorch:      bench/torch_resnet.py (torchvision's resnet50 with toptag's head, eager mode)
# The checkpoints are untrained: one training step at a learning rate of 1e-12 on 4 generated jets.
# Ratios above 1 mean toptag is faster (latency: reference ms / toptag ms; throughput: toptag / reference).
#
#   bash bench/compare.sh [--toptag build/toptag] [--bench build/bench/bench_resnet] [--threads 2]
#                         [--duration 5s] [--latency-reps 50] [--ort-prefix DIR]
#
# The references are for benchmarking only (toptag and its tests never need them); a missing one is
# skipped with a message:
#   PyTorch 1.13:  apt-get install python3-torch python3-torchvision   (run by /usr/bin/python3, or $PYTHON)
#   ONNX Runtime:  ONNXRUNTIME_NODE_INSTALL=skip npm install --prefix DIR onnxruntime-node
#                  (then --ort-prefix DIR, or NODE_PATH=DIR/node_modules)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOPTAG=$HERE/../build/toptag
BENCH=$HERE/../build/bench/bench_resnet
THREADS=2
DURATION=5s
REPS=50
PYTHON=${PYTHON:-/usr/bin/python3}
while [ $# -gt 0 ]; do
  case $1 in
    --toptag) TOPTAG=$2 ;;
    --bench) BENCH=$2 ;;
    --threads) THREADS=$2 ;;
    --duration) DURATION=$2 ;;
    --latency-reps) REPS=$2 ;;
    --ort-prefix) export NODE_PATH=$2/node_modules ;;
    *) sed -n '12,13p' "$0" >&2 && exit 2 ;;
  esac
  shift 2
done
TOPTAG=$(realpath "$TOPTAG")
BENCH=$(realpath "$BENCH")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
export TOPTAG_PLAIN_PROGRESS=1

section() { printf '\n== %s\n' "$*"; }

section "machine ($(date -u '+%F %T UTC'))"
lscpu | grep -E '^(Model name|CPU\(s\)|Thread|L2|L3)'
echo "load:  $(cut -d' ' -f1-3 /proc/loadavg)"
echo "toptag: $TOPTAG ($("$TOPTAG" --version)); bench_resnet: $BENCH; $THREADS threads"

section "checkpoints and their ONNX exports"
"$TOPTAG" generate -o jets.h5 --jets 4 --seed 1 >/dev/null 2>&1
for shape in 40:1 224:3; do
  size=${shape%:*}
  "$TOPTAG" train --train jets.h5 --val jets.h5 -o "run$size" --image-size "$size" --channels "${shape#*:}" \
    --epochs 1 --batch-size 2 --lr 1e-12 --threads "$THREADS" >/dev/null 2>&1
  "$TOPTAG" export -c "run$size/last.h5" -o "r$size.onnx"
done

section "toptag perf --local"
"$TOPTAG" perf --local -c run224/last.h5 --batch 1 --threads "$THREADS" --duration "$DURATION" --csv t224.csv
"$TOPTAG" perf --local -c run40/last.h5 --batch 1,64 --threads "$THREADS" --duration "$DURATION" --csv t40.csv

section "ONNX Runtime: bench/ort_resnet.js on toptag's exports"
if command -v node >/dev/null && node -e 'require.resolve("onnxruntime-node")' 2>/dev/null; then
  node "$HERE/ort_resnet.js" r224.onnx --threads "$THREADS" --latency-reps "$REPS" --batch 0 | tee ort.txt
  node "$HERE/ort_resnet.js" r40.onnx --threads "$THREADS" --latency-reps "$REPS" | tee -a ort.txt
else
  echo "skipped: no node or no onnxruntime-node (NODE_PATH=${NODE_PATH:-unset}); see this script's header"
fi

section "PyTorch: bench/torch_resnet.py"
if "$PYTHON" -c 'import torch, torchvision' 2>/dev/null; then
  "$PYTHON" "$HERE/torch_resnet.py" --threads "$THREADS" --latency-reps "$REPS" | tee torch.txt
else
  echo "skipped: $PYTHON cannot import torch and torchvision; see this script's header"
fi

section "toptag training: bench_resnet"
"$BENCH" --threads "$THREADS" | tee bench.txt
echo "load:  $(cut -d' ' -f1-3 /proc/loadavg)"

# figure FILE WORD KEY: the number in bench_resnet's line format "WORD KEY batch N : NUMBER ...".
figure() { [ -f "$1" ] && awk -v w="$2" -v k="$3" '$1 == w && $2 == k { print $6; exit }' "$1"; }
# perf_figure FILE BATCH COLUMN: a value from toptag perf's CSV (5: images/s, 7: p50 ms).
perf_figure() { awk -F, -v b="$2" -v c="$3" '$4 == b { print $c; exit }' "$1"; }
# row CASE UNIT TOPTAG ORT TORCH: the figures (empty: not measured) and toptag's speed-up on each reference.
row() {
  awk -v name="$1" -v unit="$2" -v t="$3" -v o="$4" -v p="$5" '
    function shown(x) { return x == "" ? "-" : sprintf(unit == "ms" ? "%.2f" : "%.1f", x) }
    function ratio(x) { return (t == "" || x == "") ? "-" : sprintf("%.2f", unit == "ms" ? x / t : t / x) }
    BEGIN { printf "%-30s %-9s %9s %9s %9s %10s %12s\n", name, unit, shown(t), shown(o), shown(p), ratio(o), ratio(p) }'
}

section "toptag against ONNX Runtime and PyTorch ($THREADS threads; ratios > 1: toptag faster)"
printf '%-30s %-9s %9s %9s %9s %10s %12s\n' case unit toptag ORT torch toptag/ORT toptag/torch
row "latency 224x224x3 batch 1 p50" ms "$(perf_figure t224.csv 1 7)" "$(figure ort.txt latency 224x224x3)" \
  "$(figure torch.txt latency 224x224x3)"
row "latency 40x40x1 batch 1 p50" ms "$(perf_figure t40.csv 1 7)" "$(figure ort.txt latency 40x40x1)" \
  "$(figure torch.txt latency 40x40x1)"
row "inference 40x40x1 batch 64" images/s "$(perf_figure t40.csv 64 5)" "$(figure ort.txt inference 40x40)" \
  "$(figure torch.txt inference 40x40)"
row "training 40x40x1 batch 64" images/s "$(figure bench.txt train 40x40)" "" "$(figure torch.txt train 40x40)"
