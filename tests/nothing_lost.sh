#!/usr/bin/env bash
# Nothing lost (issue 22), through the CLI: no output of any command may be one of its inputs, by any
# spelling, symbolic link or hard link; temporary files never truncate a file that exists; a Triton
# model directory is replaced whole or not at all; an overflowing network never becomes a score; a
# full disk is an error naming the file (exit 1), never a crash. Usage: nothing_lost.sh path/to/toptag
set -euo pipefail
source "$(dirname "$0")/cli_common.sh"
TOPTAG=$1
enter_work_dir
export TOPTAG_PLAIN_PROGRESS=1
unchanged() {  # unchanged FILE COPY: FILE still holds what COPY holds
  cmp -s "$1" "$2" || fail "$1 was changed or destroyed"
}

TINY="--arch resnet10 --width 4 --hidden 16 --image-size 16 --batch-size 32"
$TOPTAG generate -o jets.h5 --jets 300 --seed 1 >/dev/null 2>&1
$TOPTAG train --train jets.h5 --val jets.h5 -o run $TINY --epochs 1 >/dev/null 2>&1
$TOPTAG predict -c run/best.h5 -i jets.h5 -o pred.h5 >/dev/null 2>&1
cp run/best.h5 best.copy
cp jets.h5 jets.copy
cp pred.h5 pred.copy
ln -s run/best.h5 best_link.h5
ln run/best.h5 best_hard.h5
DESTROY="would destroy the input"

# 1. Outputs that are inputs, every command, by name, symbolic link and hard link.
expect_error "perf --csv over the checkpoint" "$DESTROY" \
  $TOPTAG perf --local -c run/best.h5 --csv run/best.h5 --batch 1 --threads 1 --duration 50ms --warmup 10ms
expect_error "perf --plot over a link to the checkpoint" "$DESTROY" \
  $TOPTAG perf --local -c best_link.h5 --plot run/best.h5 --batch 1 --threads 1 --duration 50ms --warmup 10ms
expect_error "train --init from its own output directory" "$DESTROY" \
  $TOPTAG train --init run/best.h5 -o run --train jets.h5 --val jets.h5 $TINY --epochs 1
expect_error "train --init through a hard link" "$DESTROY" \
  $TOPTAG train --init best_hard.h5 -o run --train jets.h5 --val jets.h5 $TINY --epochs 1
mkdir -p data
ln jets.h5 data/metrics.json
expect_error "train over its --train file" "$DESTROY" $TOPTAG train --train jets.h5 --val jets.h5 -o data $TINY --epochs 1
expect_error "quantize over a symbolic link to its checkpoint" "$DESTROY" \
  $TOPTAG quantize -c run/best.h5 -f ms-fp8 -o best_link.h5
expect_error "predict over the checkpoint through a hard link" "$DESTROY" \
  $TOPTAG predict -c best_hard.h5 -i jets.h5 -o run/best.h5
expect_error "features over the jets" "$DESTROY" $TOPTAG features -c run/best.h5 -i jets.h5 -o ./jets.h5
expect_error "images over the jets" "$DESTROY" $TOPTAG images -i jets.h5 -o "$WORK/jets.h5"
expect_error "eval --json over a prediction file" "$DESTROY" $TOPTAG eval -p pred.h5 --json pred.h5
mkdir -p rocs
ln pred.h5 rocs/pred.csv
expect_error "eval --roc-csv over a prediction file" "$DESTROY" $TOPTAG eval -p pred.h5 --roc-csv rocs
expect_error "serve --port-file over the checkpoint" "$DESTROY" \
  timeout 20 $TOPTAG serve -c run/best.h5 --port-file best_hard.h5 --grpc-port 0 --http-port 0 --metrics-port 0
expect_error "export -o over the checkpoint" "$DESTROY" $TOPTAG export -c run/best.h5 -o best_link.h5
mkdir -p models/toptag/1
cp run/best.h5 models/toptag/1/checkpoint.h5
expect_error "export --triton-repo replacing the directory that holds the checkpoint" "$DESTROY" \
  $TOPTAG export -c models/toptag/1/checkpoint.h5 --triton-repo models --force
unchanged run/best.h5 best.copy
unchanged jets.h5 jets.copy
unchanged pred.h5 pred.copy
unchanged models/toptag/1/checkpoint.h5 best.copy

# 2. A temporary file never truncates a file that exists: the old fixed names OUT.tmp and OUT.tmp-PID.
echo "precious" >eval.json.tmp
echo "precious" >float.h5.tmp
$TOPTAG eval -p pred.h5 --json eval.json >/dev/null
$TOPTAG predict -c run/best.h5 -i jets.h5 -o float.h5 >/dev/null 2>&1
[ "$(cat eval.json.tmp)" = precious ] && [ "$(cat float.h5.tmp)" = precious ] || fail "a temporary file truncated a file"
[ -z "$(find . -name '*.tmp-*')" ] || fail "temporary files left behind: $(find . -name '*.tmp-*')"
touch probe
[ "$(stat -c %a eval.json)" = "$(stat -c %a probe)" ] || fail "eval.json has mode $(stat -c %a eval.json), not a new file's"

# 3. A Triton model directory: what is there is named and kept unless --force, then replaced whole.
mkdir -p repo/toptag/2
echo old >repo/toptag/2/model.onnx
expect_error "export into an existing model directory" "holds 2/" $TOPTAG export -c run/best.h5 --triton-repo repo
[ -s repo/toptag/2/model.onnx ] && [ ! -e repo/toptag/1 ] || fail "a refused export changed the repository"
$TOPTAG export -c run/best.h5 --triton-repo repo --force >export.txt 2>&1 || fail "export --force: $(cat export.txt)"
grep -q "replaced repo/toptag (it held 2/)" export.txt || fail "the replacement is not reported: $(cat export.txt)"
[ ! -e repo/toptag/2 ] && [ -s repo/toptag/1/model.onnx ] && [ -s repo/toptag/config.pbtxt ] ||
  fail "the repository is not the new export alone: $(find repo)"

# 4. Overflowing images (finite, near FLT_MAX) never become an ordinary score or feature row.
$TOPTAG images -i jets.h5 -o images.h5 --image-size 16 --max-jets 64 >/dev/null 2>&1
/usr/bin/python3 - <<'EOF'  # Debian's interpreter, where python3-h5py lives
import h5py, numpy as np
with h5py.File("images.h5", "r+") as f:
    img = f["images"]
    huge = np.where(np.arange(16)[:, None] % 2 == 0, 3e38, -3e38).astype(np.float32)
    for row in range(5, img.shape[0]):
        img[row, 0] = np.broadcast_to(huge, (16, 16))
EOF
expect_error "predict on overflowing images" "NaN or inf" $TOPTAG predict -c run/best.h5 -i images.h5 -o over.h5
expect_error "features on overflowing images" "NaN or inf" $TOPTAG features -c run/best.h5 -i images.h5 -o over_f.h5
[ ! -e over.h5 ] && [ ! -e over_f.h5 ] || fail "an overflowing run wrote its output"

# 5. A full disk: every writing command exits 1 naming its file; none crashes in HDF5's shutdown.
# A 64 kB tmpfs with 4 kB left, in a private mount namespace where this may mount (root); elsewhere a
# 4 kB file-size limit (EFBIG instead of ENOSPC: the same failing writes).
full_disk() {  # full_disk DIR command...: runs the command with DIR on a nearly full file system
  local dir=$1
  shift
  if unshare -m true 2>/dev/null; then
    unshare -m bash -c 'mount -t tmpfs -o size=64k tmpfs "$0" && head -c 61440 /dev/zero >"$0/filler" && exec "$@"' \
      "$dir" "$@"
  else
    (ulimit -f 4 && trap '' XFSZ && exec "$@")
  fi
}
mkdir -p full
for cmd in "generate -o full/gen.h5 --jets 3000" \
  "images -i jets.h5 -o full/images.h5 --image-size 40" \
  "quantize -c run/best.h5 -f ms-fp8 -o full/q.h5" \
  "train --train jets.h5 --val jets.h5 -o full/run $TINY --epochs 1" \
  "features -c run/best.h5 -i jets.h5 -o full/features.h5" \
  "predict -c run/best.h5 -i jets.h5 -o full/pred.csv" \
  "export -c run/best.h5 -o full/model.onnx"; do
  set +e
  full_disk full $TOPTAG $cmd >out.txt 2>err.txt
  rc=$?
  set -e
  [ "$rc" -eq 1 ] || fail "toptag $cmd on a full disk: exit $rc, expected 1: $(tail -3 err.txt)"
  grep -q "full/" err.txt || fail "toptag $cmd on a full disk: the message names no file: $(cat err.txt)"
done
echo "nothing lost: all checks passed"
