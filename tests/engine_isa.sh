#!/usr/bin/env bash
# Every instruction-set path of the inference kernels (nn/kernels/isa.h) that this CPU runs gives the
# same scores from the CLI: predict under TOPTAG_ISA=ref, avx2 and avx512 agree to float rounding,
# toptag model and perf name the path (and model the training layout), an ms-fp8 model runs on each
# path's integer kernels as its float emulation scores, training gives the same run with its matrix
# products on OpenBLAS and on toptag's tiles (TOPTAG_GEMM), and a path the CPU lacks or an unknown
# name is refused.
# Usage: engine_isa.sh TOPTAG
set -euo pipefail
TOPTAG=$(realpath "$1")
source "$(dirname "$0")/cli_common.sh"
enter_work_dir

flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]]; }
isas="ref"
if has avx2 && has fma; then isas="$isas avx2"; fi
if has avx512f && has avx512bw && has avx512dq && has avx512vl; then isas="$isas avx512"; fi
echo "paths on this CPU: $isas"

$TOPTAG generate -o jets.h5 -n 96 --seed 3 >/dev/null 2>&1 || fail "generate"
$TOPTAG train --train jets.h5 --val jets.h5 --arch resnet18 --width 8 --hidden 32 --image-size 24 --batch-size 32 \
  --epochs 1 -o run >train.log 2>&1 || fail "train: $(tail -3 train.log)"

for isa in $isas; do
  TOPTAG_ISA=$isa $TOPTAG predict -c run/best.h5 -i jets.h5 -o "p_$isa.csv" >/dev/null 2>"p_$isa.log" \
    || fail "predict under TOPTAG_ISA=$isa: $(tail -3 "p_$isa.log")"
  TOPTAG_ISA=$isa $TOPTAG model --checkpoint run/best.h5 --image-size 24 >model.txt 2>&1 || fail "model under $isa"
  grep -q "^inference .*instruction set $isa" model.txt || fail "toptag model does not name $isa: $(cat model.txt)"
  grep -q "^training  *channels-last (NHWC)" model.txt || fail "toptag model does not name the training layout"
  TOPTAG_ISA=$isa $TOPTAG perf --local -c run/best.h5 --batch 2 --threads 1 --duration 50ms --warmup 10ms \
    >/dev/null 2>perf.log || fail "perf under $isa: $(tail -3 perf.log)"
  grep -q "^engine: kernels $isa f32" perf.log || fail "perf does not name the $isa kernels: $(cat perf.log)"
done

# worst_difference A B: the largest |score A - score B| over the 96 jets (first columns of two
# prediction CSVs), or "rows N" when a file does not hold them all.
worst_difference() {
  paste -d, "$1" "$2" | awk -F, -v n="$(head -1 "$1" | tr ',' '\n' | wc -l)" '
    NR > 1 { d = $1 - $(n + 1); if (d < 0) d = -d; if (d > worst) worst = d; rows++ }
    END { if (rows != 96) { print "rows " rows; exit } printf "%.3g\n", worst }'
}

# The scores (first column) of each path against the reference loops: float rounding only.
for isa in $isas; do
  [ "$isa" = ref ] && continue
  worst=$(worst_difference p_ref.csv "p_$isa.csv")
  awk -v w="$worst" 'BEGIN { exit !(w + 0 == w && w <= 1e-5) }' || fail "$isa scores differ from ref by $worst"
  echo "$isa: largest score difference from ref $worst"
done

# A quantized model, ms-fp8 weights and activations: every path runs its layers after the stem on the
# integer kernels, says so, and scores as the float emulation (--emulate) does.
$TOPTAG quantize -c run/best.h5 -f ms-fp8 --activations -o q.h5 >/dev/null 2>&1 || fail "quantize"
$TOPTAG predict -c q.h5 -i jets.h5 -o q_emulated.csv --emulate >/dev/null 2>&1 || fail "predict --emulate"
for isa in $isas; do
  TOPTAG_ISA=$isa $TOPTAG predict -c q.h5 -i jets.h5 -o "q_$isa.csv" >/dev/null 2>"q_$isa.log" \
    || fail "quantized predict under $isa: $(tail -3 "q_$isa.log")"
  TOPTAG_ISA=$isa $TOPTAG model --checkpoint q.h5 >model.txt 2>&1 || fail "model of q.h5 under $isa"
  grep -q "^inference .*quantized: [1-9][0-9]* of [0-9]* layers on integer kernels" model.txt \
    || fail "toptag model does not say the layers run on integer kernels under $isa: $(cat model.txt)"
  worst=$(worst_difference q_emulated.csv "q_$isa.csv")
  awk -v w="$worst" 'BEGIN { exit !(w + 0 == w && w <= 1e-5) }' || fail "$isa ms-fp8 scores differ from the emulation by $worst"
  echo "$isa ms-fp8 on integer kernels: largest score difference from the emulation $worst"
done

# Training's matrix products on OpenBLAS and on toptag's tiles (TOPTAG_GEMM; the tiles on this CPU's
# best path): the same run, to float rounding, and toptag model names who runs them.
for gemm in openblas toptag; do
  TOPTAG_GEMM=$gemm $TOPTAG train --train jets.h5 --val jets.h5 --arch resnet18 --width 8 --hidden 32 --image-size 24 \
    --batch-size 32 --epochs 1 --seed 5 -o "run_$gemm" >"train_$gemm.log" 2>&1 || fail "train under TOPTAG_GEMM=$gemm"
  TOPTAG_GEMM=$gemm $TOPTAG model --arch resnet18 >model.txt 2>&1 || fail "model under TOPTAG_GEMM=$gemm"
  grep -q "matrix products on .*(TOPTAG_GEMM=$gemm)" model.txt || fail "model does not name TOPTAG_GEMM=$gemm: $(cat model.txt)"
done
losses=$(paste -d, <(cut -d, -f4,5 run_openblas/metrics.csv) <(cut -d, -f4,5 run_toptag/metrics.csv) | tail -n +2)
echo "train and validation loss, OpenBLAS then tiles: $losses"
awk -F, '{ for (i = 1; i <= 2; ++i) { d = $i - $(i + 2); if (d < 0) d = -d; if (!(d <= 1e-4 * ($i < 0 ? -$i : $i) + 1e-6)) bad = 1 } }
  END { exit bad }' <<<"$losses" || fail "training on the tiles differs from OpenBLAS: $losses"
expect_error "unknown TOPTAG_GEMM" "TOPTAG_GEMM=mkl: use openblas or toptag" env TOPTAG_GEMM=mkl $TOPTAG model --arch resnet18

expect_error "unknown TOPTAG_ISA" "TOPTAG_ISA=sse9: unknown" env TOPTAG_ISA=sse9 $TOPTAG predict -c run/best.h5 -i jets.h5 -o x.csv
if ! has avx512f; then
  expect_error "TOPTAG_ISA beyond the CPU" "this CPU cannot run it" \
    env TOPTAG_ISA=avx512 $TOPTAG predict -c run/best.h5 -i jets.h5 -o x.csv
fi
[ ! -e x.csv ] || fail "a refused run left x.csv"
echo "engine_isa: OK"
