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
# --rounds N repeats the measurements N times, the programs taking turns in each round, and ends with
# each figure's and each ratio's median over the rounds: on a shared machine one program alone can
# move by 20% from one minute to the next, and turns spread that over all of them.
#
# Training is timed over --train-steps steps (20) after one untimed step, in both: PyTorch's steps
# get faster for a while (on a 2-core Xeon, 90 images/s over 5 steps, 103 over 20, 108 over 40),
# and a short run flatters toptag (2.14x over 5 steps, 1.78x over 20, 2026-12-03).
#
#   bash bench/compare.sh [--toptag build/toptag] [--bench build/bench/bench_resnet] [--threads 2]
#                         [--duration 5s] [--latency-reps 50] [--train-steps 20] [--rounds 1]
#                         [--ort-prefix DIR]
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
TRAIN_STEPS=20
ROUNDS=1
PYTHON=${PYTHON:-/usr/bin/python3}
while [ $# -gt 0 ]; do
  case $1 in
    --toptag) TOPTAG=$2 ;;
    --bench) BENCH=$2 ;;
    --threads) THREADS=$2 ;;
    --duration) DURATION=$2 ;;
    --latency-reps) REPS=$2 ;;
    --train-steps) TRAIN_STEPS=$2 ;;
    --rounds) ROUNDS=$2 ;;
    --ort-prefix) export NODE_PATH=$2/node_modules ;;
    *) sed -n '19,21p' "$0" >&2 && exit 2 ;;
  esac
  shift 2
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "--rounds takes a positive whole number, not '$ROUNDS'" >&2; exit 2; }
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

have_ort() { command -v node >/dev/null && node -e 'require.resolve("onnxruntime-node")' 2>/dev/null; }
have_torch() { "$PYTHON" -c 'import torch, torchvision' 2>/dev/null; }
for round in $(seq "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && section "round $round of $ROUNDS"
  section "toptag perf --local"
  "$TOPTAG" perf --local -c run224/last.h5 --batch 1 --threads "$THREADS" --duration "$DURATION" --csv "t224.$round.csv"
  "$TOPTAG" perf --local -c run40/last.h5 --batch 1,64 --threads "$THREADS" --duration "$DURATION" --csv "t40.$round.csv"

  section "ONNX Runtime: bench/ort_resnet.js on toptag's exports"
  if have_ort; then
    node "$HERE/ort_resnet.js" r224.onnx --threads "$THREADS" --latency-reps "$REPS" --batch 0 | tee "ort.$round.txt"
    node "$HERE/ort_resnet.js" r40.onnx --threads "$THREADS" --latency-reps "$REPS" | tee -a "ort.$round.txt"
  else
    echo "skipped: no node or no onnxruntime-node (NODE_PATH=${NODE_PATH:-unset}); see this script's header"
  fi

  section "PyTorch: bench/torch_resnet.py"
  if have_torch; then
    "$PYTHON" "$HERE/torch_resnet.py" --threads "$THREADS" --latency-reps "$REPS" --train-steps "$TRAIN_STEPS" |
      tee "torch.$round.txt"
  else
    echo "skipped: $PYTHON cannot import torch and torchvision; see this script's header"
  fi

  section "toptag training: bench_resnet"
  "$BENCH" --threads "$THREADS" --train-steps "$TRAIN_STEPS" | tee "bench.$round.txt"
  echo "load:  $(cut -d' ' -f1-3 /proc/loadavg)"
done

# figure FILE WORD KEY: the number in bench_resnet's line format "WORD KEY batch N : NUMBER ...".
figure() { [ -f "$1" ] && awk -v w="$2" -v k="$3" '$1 == w && $2 == k { print $6; exit }' "$1"; }
# perf_figure FILE BATCH COLUMN: a value from toptag perf's CSV (5: images/s, 7: p50 ms).
perf_figure() { awk -F, -v b="$2" -v c="$3" '$4 == b { print $c; exit }' "$1"; }
# A figures file, one line per case and round: CASE|UNIT|TOPTAG|ORT|TORCH (empty: not measured).
for round in $(seq "$ROUNDS"); do
  echo "latency 224x224x3 batch 1 p50|ms|$(perf_figure "t224.$round.csv" 1 7)|$(figure "ort.$round.txt" latency \
    224x224x3)|$(figure "torch.$round.txt" latency 224x224x3)"
  echo "latency 40x40x1 batch 1 p50|ms|$(perf_figure "t40.$round.csv" 1 7)|$(figure "ort.$round.txt" latency \
    40x40x1)|$(figure "torch.$round.txt" latency 40x40x1)"
  echo "inference 40x40x1 batch 64|images/s|$(perf_figure "t40.$round.csv" 64 5)|$(figure "ort.$round.txt" \
    inference 40x40)|$(figure "torch.$round.txt" inference 40x40)"
  echo "training 40x40x1 batch 64|images/s|$(figure "bench.$round.txt" train 40x40)||$(figure "torch.$round.txt" \
    train 40x40)"
done >figures.txt

# table TITLE: the rounds' rows (each round's own ratios), then with several rounds each column's
# median, ratios included (the median of the rounds' ratios, not the ratio of the medians).
table() {
  section "$1"
  awk -F'|' -v rounds="$ROUNDS" "$(cat "$HERE/median.awk")"'
    function shown(x, unit) { return x == "" ? "-" : sprintf(unit == "ms" ? "%.2f" : "%.1f", x) }
    function ratio(t, x, unit) { return (t == "" || x == "") ? "" : (unit == "ms" ? x / t : t / x) }
    function add(key, x) { if (x != "") list[key] = list[key] " " x }
    function line(name, unit, t, o, p, ro, rp) {
      printf "%-36s %-9s %9s %9s %9s %10s %12s\n", name, unit, shown(t, unit), shown(o, unit), shown(p, unit),
        ro == "" ? "-" : sprintf("%.2f", ro), rp == "" ? "-" : sprintf("%.2f", rp)
    }
    BEGIN { printf "%-36s %-9s %9s %9s %9s %10s %12s\n", "case", "unit", "toptag", "ORT", "torch", "toptag/ORT", "toptag/torch" }
    {
      n = ++seen[$1]; order[$1] = order[$1] ? order[$1] : ++cases; name[order[$1]] = $1; unit[$1] = $2
      line(rounds > 1 ? $1 " (" n ")" : $1, $2, $3, $4, $5, ratio($3, $4, $2), ratio($3, $5, $2))
      add($1 "t", $3); add($1 "o", $4); add($1 "p", $5); add($1 "ro", ratio($3, $4, $2)); add($1 "rp", ratio($3, $5, $2))
    }
    END {
      if (rounds < 2) exit
      printf "\nmedian over %d rounds\n", rounds
      for (i = 1; i <= cases; i++) {
        c = name[i]
        line(c, unit[c], median(list[c "t"]), median(list[c "o"]), median(list[c "p"]), median(list[c "ro"]),
          median(list[c "rp"]))
      }
    }' figures.txt
}
table "toptag against ONNX Runtime and PyTorch ($THREADS threads; ratios > 1: toptag faster)"
