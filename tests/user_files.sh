#!/usr/bin/env bash
# Files as users have them (issue 23): HDF5's own reason for a file it cannot open reaches the user
# (locked by another process, truncated, not HDF5, unreadable), and weights trained elsewhere, without
# toptag's stored image options, are used at the size the flags give and keep it once quantized or
# exported. Usage: user_files.sh path/to/toptag
set -euo pipefail
source "$(dirname "$0")/cli_common.sh"
TOPTAG=$1
enter_work_dir
export TOPTAG_PLAIN_PROGRESS=1
PYTHON=/usr/bin/python3  # Debian's interpreter, where python3-h5py lives

$TOPTAG generate -o jets.h5 --jets 200 --seed 1 >/dev/null 2>&1

# 1. Why a file cannot be opened, in HDF5's words and the user's.
cp jets.h5 locked.h5
$PYTHON -c "
import h5py, sys, time
f = h5py.File('locked.h5', 'a')
open('holding', 'w').close()
time.sleep(30)" &
holder=$!
for _ in $(seq 1 100); do [ -e holding ] && break; sleep 0.1; done
expect_error "a file another process holds open for writing" "locked by another process" $TOPTAG info locked.h5
grep -q "HDF5_USE_FILE_LOCKING=FALSE" err.txt || fail "the lock message does not say how to go on: $(cat err.txt)"
grep -q "unable to lock file" err.txt || fail "HDF5's own reason is lost: $(cat err.txt)"
HDF5_USE_FILE_LOCKING=FALSE $TOPTAG info locked.h5 | grep -q "jets           200" || fail "the way out does not work"
kill $holder
head -c 40000 jets.h5 >truncated.h5
expect_error "a truncated file" "truncated.h5: truncated" $TOPTAG info truncated.h5
grep -q "stored_eof" err.txt || fail "HDF5's own reason is lost: $(cat err.txt)"
echo "not hdf5" >text.h5
expect_error "a file that is not HDF5" "text.h5: not an HDF5 file (HDF5: file signature not found)" $TOPTAG info text.h5
expect_error "a missing checkpoint" "missing.h5" $TOPTAG predict -c missing.h5 -i jets.h5 -o p.h5
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then  # root reads anything: ask as nobody
  chmod 755 "$WORK"
  cp jets.h5 private.h5
  chmod 600 private.h5
  expect_error "a file this user may not read" "private.h5: cannot be read (Permission denied)" \
    setpriv --reuid=65534 --regid=65534 --clear-groups $TOPTAG info "$WORK/private.h5"
fi

# 2. Weights trained elsewhere: toptag's layout, 3 channels, no stored image options.
$TOPTAG train --train jets.h5 --val jets.h5 -o run --arch resnet10 --width 4 --hidden 8 --image-size 16 --channels 3 \
  --epochs 1 --batch-size 32 >/dev/null 2>&1
$PYTHON - <<'EOF'
import h5py
with h5py.File("run/best.h5") as src, h5py.File("imported.h5", "w") as dst:
    for name in src:
        if name not in ("training", "optimizer"):
            src.copy(name, dst)
    for key, value in src.attrs.items():
        if key != "training_config":
            dst.attrs[key] = value
EOF
$TOPTAG model --checkpoint imported.h5 | grep -q "^images         40x40x3, .*(not stored: defaults" ||
  fail "model does not say the image options are defaulted: $($TOPTAG model --checkpoint imported.h5 | grep images)"
$TOPTAG perf --local -c imported.h5 --image-size 24 --batch 1 --threads 1 --duration 50ms --warmup 10ms >perf.txt 2>&1 ||
  fail "perf at the flags' size: $(cat perf.txt)"
grep -q "24x24x3 images" perf.txt || fail "perf did not measure 24x24x3: $(cat perf.txt)"
$TOPTAG predict -c imported.h5 -i jets.h5 -o p24.h5 --image-size 24 >/dev/null 2>&1 || fail "predict at the flags' size"
$TOPTAG export -c imported.h5 --image-size 24 -o imported.onnx >export.txt 2>&1 || fail "export: $(cat export.txt)"
grep -q "input          images float32 \[batch, 3, 24, 24\]" export.txt || fail "export input: $(cat export.txt)"
$TOPTAG quantize -c imported.h5 -f ms-fp8 --image-size 24 -o q.h5 >/dev/null 2>&1 || fail "quantize"
$TOPTAG model --checkpoint q.h5 | grep -q "^images         24x24x3, .*(stored in the checkpoint)" ||
  fail "quantize did not store the image options: $($TOPTAG model --checkpoint q.h5 | grep images)"
$TOPTAG export -c q.h5 -o q.onnx | grep -q "\[batch, 3, 24, 24\]" || fail "the quantized export lost the size"
expect_error "a stored size stays" "differs from the checkpoint's 24" $TOPTAG export -c q.h5 --image-size 40 -o x.onnx
expect_error "a trained checkpoint keeps its size" "differs from the checkpoint's 16" \
  $TOPTAG perf --local -c run/best.h5 --image-size 24 --duration 50ms
echo "user files: all checks passed"
