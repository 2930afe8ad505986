#!/usr/bin/env bash
# Quantized ResNet-50 at 40x40x1 against toptag's own float model and ONNX Runtime, in one run on this
# machine, one program after the other: batch-1 latency (p50) and batch-64 throughput of
#   toptag float32, toptag int8 and toptag ms-fp8 (weights and activations): toptag perf --local,
#     the quantized models on the integer kernels where this CPU has them (the engine line says)
#   ONNX Runtime float32 and int8: bench/ort_resnet.js on toptag's float export and its int8 QDQ
#     export of the same checkpoint (the issue's bar is the better of the two)
# The checkpoint is untrained (one step at a learning rate of 1e-12 on 8 generated jets); int8
# activation ranges are calibrated on 64 generated jets. Ratios above 1: toptag's quantized model faster.
# --rounds N: the programs take turns N times, then each figure's and ratio's median (see compare.sh).
#
#   bash bench/compare_quantized.sh [--toptag build/toptag] [--threads 2] [--duration 5s]
#                                   [--latency-reps 50] [--rounds 1] [--ort-prefix DIR]
#
# ONNX Runtime is for benchmarking only (see bench/compare.sh); without it its columns are skipped.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOPTAG=$HERE/../build/toptag
THREADS=2
DURATION=5s
REPS=50
ROUNDS=1
while [ $# -gt 0 ]; do
  case $1 in
    --toptag) TOPTAG=$2 ;;
    --threads) THREADS=$2 ;;
    --duration) DURATION=$2 ;;
    --latency-reps) REPS=$2 ;;
    --rounds) ROUNDS=$2 ;;
    --ort-prefix) export NODE_PATH=$2/node_modules ;;
    *) sed -n '12,13p' "$0" >&2 && exit 2 ;;
  esac
  shift 2
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "--rounds takes a positive whole number, not '$ROUNDS'" >&2; exit 2; }
TOPTAG=$(realpath "$TOPTAG")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
export TOPTAG_PLAIN_PROGRESS=1

section() { printf '\n== %s\n' "$*"; }

section "machine ($(date -u '+%F %T UTC'))"
lscpu | grep -E '^(Model name|CPU\(s\)|Flags)' | sed -E 's/^(Flags:).*/\1 '"$(grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')"'/'
echo "load:  $(cut -d' ' -f1-3 /proc/loadavg)"

section "checkpoints and their ONNX exports"
"$TOPTAG" generate -o jets.h5 --jets 8 --seed 1 >/dev/null 2>&1
"$TOPTAG" generate -o calibration.h5 --jets 64 --seed 2 >/dev/null 2>&1
"$TOPTAG" train --train jets.h5 --val jets.h5 -o run --epochs 1 --batch-size 4 --lr 1e-12 --threads "$THREADS" \
  >/dev/null 2>&1
"$TOPTAG" quantize -c run/last.h5 -f int8 --activations --calibration calibration.h5 -o int8.h5 >/dev/null 2>&1
"$TOPTAG" quantize -c run/last.h5 -f ms-fp8 --activations -o msfp8.h5 >/dev/null 2>&1
"$TOPTAG" export -c run/last.h5 -o float.onnx >/dev/null 2>&1
"$TOPTAG" export -c int8.h5 -o int8.onnx >/dev/null 2>&1
ls -l float.onnx int8.onnx | awk '{ print $9, $5, "bytes" }'

for round in $(seq "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && section "round $round of $ROUNDS"
  section "toptag perf --local"
  for model in run/last.h5:float int8.h5:int8 msfp8.h5:msfp8; do
    "$TOPTAG" perf --local -c "${model%:*}" --batch 1,64 --threads "$THREADS" --duration "$DURATION" \
      --csv "t_${model#*:}.$round.csv" 2>&1 | grep -E "^engine|^local"
  done

  section "ONNX Runtime: bench/ort_resnet.js"
  if command -v node >/dev/null && node -e 'require.resolve("onnxruntime-node")' 2>/dev/null; then
    for model in float int8; do
      node "$HERE/ort_resnet.js" "$model.onnx" --threads "$THREADS" --latency-reps "$REPS" | tee "ort_$model.$round.txt"
    done
  else
    echo "skipped: no node or no onnxruntime-node (NODE_PATH=${NODE_PATH:-unset}); see bench/compare.sh"
  fi
done

# perf_figure FILE BATCH COLUMN: a value from toptag perf's CSV (5: images/s, 7: p50 ms).
perf_figure() { awk -F, -v b="$2" -v c="$3" '$4 == b { print $c; exit }' "$1"; }
# ort_figure FILE WORD: bench/ort_resnet.js's "latency 40x40x1 batch 1 : MS" or "inference 40x40 batch 64 : RATE".
ort_figure() { [ -f "$1" ] && awk -v w="$2" '$1 == w { print $6; exit }' "$1"; }

# One line per case and round: CASE|FLOAT|INT8|MSFP8|ORT-F32|ORT-INT8 (empty: not measured).
for round in $(seq "$ROUNDS"); do
  for kase in "latency-b1-ms:1:7:latency" "images/s-b64:64:5:inference"; do
    IFS=: read -r name batch column word <<<"$kase"
    echo "$name|$(perf_figure "t_float.$round.csv" "$batch" "$column")|$(perf_figure "t_int8.$round.csv" "$batch" \
      "$column")|$(perf_figure "t_msfp8.$round.csv" "$batch" "$column")|$(ort_figure "ort_float.$round.txt" \
      "$word")|$(ort_figure "ort_int8.$round.txt" "$word")"
  done
done >figures.txt

section "toptag quantized against its float model and ONNX Runtime ($THREADS threads; ratios > 1: faster)"
awk -F'|' -v rounds="$ROUNDS" "$(cat "$HERE/median.awk")"'
  function shown(x) { return x == "" ? "-" : sprintf("%.2f", x) }
  # speed-up of a over b: latency b / a, throughput a / b
  function up(name, a, b) { return (a == "" || b == "") ? "" : (name ~ /ms/ ? b / a : a / b) }
  function better(name, x, y) { if (x == "") return y; if (y == "") return x; return name ~ /ms/ ? (x < y ? x : y) : (x > y ? x : y) }
  function line(name, c) {
    printf "%-30s %9s %9s %9s %9s %9s %10s %11s %10s\n", name, shown(c[1]), shown(c[2]), shown(c[3]), shown(c[4]),
      shown(c[5]), shown(c[6]), shown(c[7]), shown(c[8])
  }
  BEGIN { printf "%-30s %9s %9s %9s %9s %9s %10s %11s %10s\n", "case", "float", "int8", "ms-fp8", "ORT-f32", "ORT-int8",
          "int8/float", "msfp8/float", "int8/ORT" }
  {
    n = ++seen[$1]; if (n == 1) name[++cases] = $1
    c[1] = $2; c[2] = $3; c[3] = $4; c[4] = $5; c[5] = $6
    c[6] = up($1, $3, $2); c[7] = up($1, $4, $2); c[8] = up($1, $3, better($1, $5, $6))
    line(rounds > 1 ? $1 " (" n ")" : $1, c)
    for (k = 1; k <= 8; k++) if (c[k] != "") list[$1, k] = list[$1, k] " " c[k]
  }
  END {
    if (rounds < 2) exit
    printf "\nmedian over %d rounds\n", rounds
    for (i = 1; i <= cases; i++) {
      for (k = 1; k <= 8; k++) m[k] = median(list[name[i], k])
      line(name[i], m)
    }
  }' figures.txt
