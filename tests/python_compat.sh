#!/usr/bin/env bash
# The files toptag writes, read from Python the way physicists read the real dataset (Debian
# python3-h5py, python3-pandas, python3-tables): generated jets with h5py
# (f['table/table']['values_block_0']) and pandas.read_hdf(path, 'table'), cached images,
# checkpoints under their torchvision names, predictions. Usage: python_compat.sh path/to/toptag
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
