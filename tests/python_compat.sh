#!/usr/bin/env bash
# The files toptag writes, read from Python the way physicists read the real dataset (Debian
# python3-h5py, python3-pandas, python3-tables): generated jets with h5py
# (f['table/table']['values_block_0']) and pandas.read_hdf(path, 'table'), cached images,
# checkpoints under their torchvision names, predictions. Then the other way round: jets written by
# pandas in its other layouts (fixed format, other keys, shuffled columns, other dtypes, several keys)
# read by toptag as the plain file. Usage: python_compat.sh path/to/toptag
set -euo pipefail
TOPTAG=$1
PYTHON=/usr/bin/python3  # Debian's interpreter, where python3-h5py lives
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
export TOPTAG_PLAIN_PROGRESS=1
$TOPTAG generate -o jets.h5 --jets 300 --seed 5 >/dev/null 2>&1
$TOPTAG images -i jets.h5 -o images.h5 --image-size 16 >/dev/null 2>&1
$TOPTAG train --train jets.h5 --val jets.h5 -o run --arch resnet10 --width 4 --hidden 8 --image-size 16 --epochs 1 \
  --batch-size 32 >/dev/null 2>&1
$TOPTAG predict -c run/best.h5 -i jets.h5 -o pred.h5 >/dev/null 2>&1
top=$($TOPTAG info jets.h5 | sed -nE 's/^labels +([0-9]+) top.*/\1/p')
"$PYTHON" - "$top" <<'PY'
import sys
import h5py
import numpy as np

top = int(sys.argv[1])
with h5py.File("jets.h5", "r") as f:
    t = f["table/table"]
    assert t.shape == (300,), t.shape
    v = t["values_block_0"]
    labels = t["values_block_1"][:, 1]
    assert v.shape == (300, 804), v.shape
    assert np.isfinite(v).all()
    assert int(labels.sum()) == top, (labels.sum(), top)
    assert set(np.unique(labels)) <= {0, 1}
    e = v[:, 0:800:4]
    assert (e[:, 0] > 0).all(), "every jet has a leading constituent"
    # E = 0 marks padding: once a jet's constituents end, the rest are zero.
    for row in v[:, :800].reshape(300, 200, 4):
        n = int((row[:, 0] > 0).sum())
        assert (row[:n, 0] > 0).all() and not row[n:].any()
    names = t.attrs["values_block_0_kind"]
    assert b"PZ_199" in names and b"truthPZ" in names
with h5py.File("images.h5", "r") as f:
    assert f["images"].shape == (300, 1, 16, 16) and f["labels"].shape == (300,)
    np.testing.assert_allclose(f["images"][:].sum(axis=(1, 2, 3)), 1.0, rtol=1e-4)
with h5py.File("run/best.h5", "r") as f:
    assert f.attrs["arch"] in (b"resnet10", "resnet10")
    assert f["conv1.weight"].shape == (4, 1, 7, 7)
    assert f["fc2.weight"].shape == (2, 8)
    assert "bn1.running_var" in f and "layer1.0.conv1.weight" in f
with h5py.File("pred.h5", "r") as f:
    s = f["score"][:]
    assert s.shape == (300,) and ((s >= 0) & (s <= 1)).all()
    assert int(f["label"][:].sum()) == top
import pandas as pd

df = pd.read_hdf("jets.h5", "table")
assert df.shape == (300, 806), df.shape
assert list(df.columns[:4]) == ["E_0", "PX_0", "PY_0", "PZ_0"], list(df.columns[:4])
assert list(df.columns[-6:]) == ["truthE", "truthPX", "truthPY", "truthPZ", "ttv", "is_signal_new"]
assert int(df["is_signal_new"].sum()) == top
with h5py.File("jets.h5", "r") as f:
    np.testing.assert_array_equal(df.iloc[:, :804].to_numpy(), f["table/table"]["values_block_0"])
print("h5py and pandas read toptag's jets; h5py its images, checkpoints and predictions")
PY

# Jets as a physicist's pandas writes a subset: every layout must give the plain file's images,
# labels and scores.
"$PYTHON" - <<'PY'
import numpy as np
import pandas as pd

df = pd.read_hdf("jets.h5", "table")
df.to_hdf("fixed.h5", "table")  # pandas' default: the fixed format
df.to_hdf("keyed.h5", "jets", format="table")
columns = list(df.columns)
np.random.default_rng(3).shuffle(columns)
df[columns].to_hdf("shuffled.h5", "table", format="table")
mixed = df.copy()
constituents = [c for c in df.columns if c.split("_")[0] in ("E", "PX", "PY", "PZ")]
mixed[constituents] = mixed[constituents].astype("float64")  # beside float32 truth columns
mixed["is_signal_new"] = mixed["is_signal_new"].astype("int8")
mixed["ttv"] = mixed["ttv"].astype("int32")
mixed.to_hdf("mixed.h5", "table", format="table")
mixed.to_hdf("mixed_fixed.h5", "table")
df.to_hdf("two.h5", "train", format="table")
df.iloc[:100].to_hdf("two.h5", "val")
PY
fail() { echo "FAIL: $*" >&2; exit 1; }
layouts=(fixed.h5 keyed.h5 shuffled.h5 mixed.h5 mixed_fixed.h5 "two.h5 --key train" "two.h5 --key /train")
for spec in "${layouts[@]}"; do
  read -r file key <<<"$spec"
  name=${file%.h5}_${key//[^a-z]/}
  # shellcheck disable=SC2086
  $TOPTAG info $file $key >"$name.info" 2>&1 || fail "info $spec: $(cat "$name.info")"
  grep -q "labels         $top top" "$name.info" || fail "info $spec: $(cat "$name.info")"
  # shellcheck disable=SC2086
  $TOPTAG images -i $file $key -o "${name}_images.h5" --image-size 16 >/dev/null 2>&1 || fail "images $spec"
  # shellcheck disable=SC2086
  $TOPTAG predict -c run/best.h5 -i $file $key -o "${name}_pred.h5" >/dev/null 2>&1 || fail "predict $spec"
  "$PYTHON" - "$name" <<'PY' || fail "$spec differs from the plain file"
import sys
import h5py
import numpy as np

name = sys.argv[1]
with h5py.File("images.h5", "r") as a, h5py.File(name + "_images.h5", "r") as b:
    np.testing.assert_array_equal(a["images"][:], b["images"][:])
    np.testing.assert_array_equal(a["labels"][:], b["labels"][:])
with h5py.File("pred.h5", "r") as a, h5py.File(name + "_pred.h5", "r") as b:
    np.testing.assert_allclose(a["score"][:], b["score"][:], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(a["label"][:], b["label"][:])
PY
done
$TOPTAG features -c run/best.h5 -i mixed_fixed.h5 -o features.h5 >/dev/null 2>&1 || fail "features on a fixed file"
$TOPTAG train --train fixed.h5 --val mixed.h5 -o run_pandas --arch resnet10 --width 4 --hidden 8 --image-size 16 \
  --epochs 1 --batch-size 32 >/dev/null 2>&1 || fail "train on pandas' fixed and table layouts"
# Several keys: --key is needed, and the error lists the keys.
if $TOPTAG images -i two.h5 -o x.h5 2>err.txt; then fail "two keys read without --key"; fi
grep -q "holds 2 pandas objects (/train, /val); choose one with --key" err.txt || fail "$(cat err.txt)"
if $TOPTAG info two.h5 --key test 2>err.txt; then fail "an unknown --key was read"; fi
grep -q "two.h5: has no pandas key 'test' (keys: /train, /val)" err.txt || fail "$(cat err.txt)"
$TOPTAG info two.h5 --key val | grep -q "jets           100" || fail "--key val does not read /val"
$TOPTAG train --train two.h5 --val two.h5 --key train -o keyed_run --arch resnet10 --width 4 --hidden 8 --image-size 16 \
  --epochs 1 --batch-size 32 >train_key.log 2>&1 || fail "train --key: $(tail -3 train_key.log)"
if $TOPTAG train --train two.h5 --val two.h5 -o unkeyed_run --epochs 1 2>err.txt; then fail "train read two keys"; fi
grep -q "choose one with --key" err.txt || fail "$(cat err.txt)"
echo "toptag reads pandas' fixed and table layouts, any key, columns by name"
