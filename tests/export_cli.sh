#!/usr/bin/env bash
# toptag export through the CLI, on checkpoints the other commands write: a training run's (with its
# optimizer state), quantized ones with and without activation quantization; a Triton repository;
# and the errors a user hits, each a non-zero exit naming the reason. (The numbers themselves are
# checked in test_export, with OpenCV as the independent runtime.) Usage: export_cli.sh path/to/toptag
set -euo pipefail
source "$(dirname "$0")/cli_common.sh"
TOPTAG=$1
enter_work_dir
export TOPTAG_PLAIN_PROGRESS=1

$TOPTAG generate -o jets.h5 --jets 200 --seed 7 >/dev/null 2>&1
$TOPTAG train --train jets.h5 --val jets.h5 -o run --arch resnet10 --width 4 --hidden 8 --image-size 16 --epochs 1 \
  --batch-size 32 >/dev/null 2>&1

# A training checkpoint: the interface of toptag serve, plain operators only.
$TOPTAG export -c run/last.h5 -o float.onnx >float.txt 2>&1 || fail "export of a training checkpoint: $(cat float.txt)"
[ -s float.onnx ] || fail "no float.onnx"
grep -q "input          images float32 \[batch, 1, 16, 16\]" float.txt || fail "input not as served: $(cat float.txt)"
grep -q "output         probabilities float32 \[batch, 2\]" float.txt || fail "no probabilities: $(cat float.txt)"
grep -q "output         features float32 \[batch, 32\]" float.txt || fail "no features: $(cat float.txt)"
ops=$(sed -n 's/^operators *//p' float.txt)
[ "$ops" = "Add, Conv, Flatten, Gemm, GlobalAveragePool, MaxPool, Relu, Softmax" ] || fail "operators: $ops"

# Quantized: int8 activations are carried exactly; block floating point ones are not, and it says so.
$TOPTAG quantize -c run/best.h5 -f int8 --activations --calibration jets.h5 -o int8.h5 >/dev/null 2>&1
$TOPTAG export -c int8.h5 -o int8.onnx >int8.txt 2>&1 || fail "export int8: $(cat int8.txt)"
grep -q "DequantizeLinear" int8.txt && grep -q "activations    exact" int8.txt || fail "int8 activations: $(cat int8.txt)"
$TOPTAG quantize -c run/best.h5 -f ms-fp8 --activations -o msfp8.h5 >/dev/null 2>&1
$TOPTAG export -c msfp8.h5 -o msfp8.onnx >msfp8.out 2>msfp8.err || fail "export ms-fp8: $(cat msfp8.err)"
grep -q "toptag: warning: msfp8.h5: .*ms-fp8.*float32 activations" msfp8.err || fail "no warning: $(cat msfp8.err)"
grep -q "activations    not carried" msfp8.out || fail "not stated: $(cat msfp8.out)"

# A Triton model repository.
$TOPTAG export -c msfp8.h5 --triton-repo repo --model-name tagger --max-batch 16 >repo.txt 2>&1 ||
  fail "triton repo: $(cat repo.txt)"
[ -s repo/tagger/1/model.onnx ] && [ -s repo/tagger/config.pbtxt ] || fail "repository incomplete: $(ls -R repo)"
grep -q '^name: "tagger"$' repo/tagger/config.pbtxt && grep -q '^backend: "onnxruntime"$' repo/tagger/config.pbtxt &&
  grep -q '^max_batch_size: 16$' repo/tagger/config.pbtxt && grep -q '^dynamic_batching {' repo/tagger/config.pbtxt ||
  fail "config.pbtxt: $(cat repo/tagger/config.pbtxt)"
cmp -s msfp8.onnx repo/tagger/1/model.onnx || fail "the repository's model differs from the same export to a file"

# Errors: a non-zero exit whose message names the reason, and nothing written.
expect_error "missing checkpoint" "nothere.h5" $TOPTAG export -c nothere.h5 -o x.onnx
expect_error "a jets file" "jets.h5: not a model checkpoint" $TOPTAG export -c jets.h5 -o x.onnx
expect_error "unwritable output" "nodir/x.onnx: cannot write" $TOPTAG export -c run/best.h5 -o nodir/x.onnx
expect_error "no output" "give --output" $TOPTAG export -c run/best.h5
expect_error "output over the input" "would destroy the input" $TOPTAG export -c run/best.h5 -o run/best.h5
expect_error "a model name with a slash" "model name 'a/b'" $TOPTAG export -c run/best.h5 --triton-repo r --model-name a/b
touch blocked
expect_error "a repository where a file is" "blocked/toptag" $TOPTAG export -c run/best.h5 --triton-repo blocked
[ ! -e x.onnx ] && [ ! -e nodir ] && [ ! -e r ] || fail "a failed export left files behind"
echo "export_cli: all checks passed"
