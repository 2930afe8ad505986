#!/usr/bin/env bash
# Data-parallel training under mpirun (2 ranks, oversubscribed, as root in CI): equivalence with one
# process, convergence, resume across rank counts, and a killed rank ending the job.
# Usage: mpi_train.sh TOPTAG
set -euo pipefail
TOPTAG=$(realpath "$1")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
MPIRUN="mpirun -np 2 --oversubscribe"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*"; exit 1; }

$TOPTAG generate -o train.h5 -n 512 --seed 1 >/dev/null 2>&1
$TOPTAG generate -o val.h5 -n 128 --seed 2 >/dev/null 2>&1
TINY="--arch resnet10 --width 4 --hidden 16 --image-size 16 --threads 1"
$TOPTAG train --train train.h5 --val val.h5 -o base $TINY --batch-size 16 --epochs 1 >/dev/null 2>&1 || fail "base run"

# With the backbone frozen (batch norm in eval mode), 2 ranks x 4 rows and 1 process x 8 rows compute
# the same mean gradient, up to float summation order: the same weights after 2 epochs (64 steps).
for ranks in 1 2; do
  launcher=""; [ "$ranks" = 2 ] && launcher=$MPIRUN
  $launcher $TOPTAG train --train train.h5 --val val.h5 -o head$ranks --init base/last.h5 --freeze-backbone \
    $TINY --batch-size 8 --epochs 2 >head$ranks.log 2>&1 || fail "head training on $ranks rank(s): $(tail -3 head$ranks.log)"
done
/usr/bin/python3 - <<'PY' || fail "1 and 2 ranks ended with different weights"
import h5py, numpy as np
a, b = h5py.File("head1/last.h5"), h5py.File("head2/last.h5")
worst = max(float(np.max(np.abs(a[k][()] - b[k][()]))) for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))
print(f"1 vs 2 ranks, max |weight difference| after 64 steps: {worst:.2e}")
assert worst < 1e-5, worst
PY

# With --sync-batchnorm the whole model on 2 ranks x 4 rows matches 1 process x 8 rows: batch-norm
# statistics and their backward sums cover the global batch (10 steps; float summation order only).
for ranks in 1 2; do
  launcher=""; [ "$ranks" = 2 ] && launcher=$MPIRUN
  $launcher $TOPTAG train --train train.h5 --val val.h5 -o sync$ranks --init base/last.h5 --sync-batchnorm \
    $TINY --batch-size 8 --epochs 1 --max-train-jets 80 >sync$ranks.log 2>&1 || fail "sync-BN training on $ranks rank(s): $(tail -3 sync$ranks.log)"
done
/usr/bin/python3 - <<'PY' || fail "synchronised batch norm: 1 and 2 ranks ended with different weights"
import h5py, numpy as np
a, b = h5py.File("sync1/last.h5"), h5py.File("sync2/last.h5")
names = [k for k in a.keys() if isinstance(a[k], h5py.Dataset) and a[k].dtype.kind == "f"]
worst = max(float(np.max(np.abs(a[k][()] - b[k][()])) / (1e-3 + float(np.max(np.abs(a[k][()]))))) for k in names)
print(f"sync batch norm, 1 vs 2 ranks, worst relative weight difference over {len(names)} tensors: {worst:.2e}")
assert worst < 1e-3, worst
PY

# Whole-model training on 2 ranks (local batch-norm statistics) learns, and only rank 0 logs.
$MPIRUN $TOPTAG train --train train.h5 --val val.h5 -o full $TINY --batch-size 16 --epochs 3 >full.log 2>&1 \
  || fail "2-rank training: $(tail -3 full.log)"
[ "$(grep -c '^epoch 3/3: train loss' full.log)" = 1 ] || fail "not exactly one rank logged: $(cat full.log)"
/usr/bin/python3 -c "
import json; auc = json.load(open('full/metrics.json'))['epochs'][-1]['val_auc']
assert auc > 0.6, auc" || fail "2-rank training did not learn: $(tail -2 full.log)"
if $MPIRUN $TOPTAG train --train train.h5 --val val.h5 -o odd $TINY --batch-size 15 >odd.log 2>&1; then
  fail "a global batch of 15 was split over 2 ranks"
fi
grep -q "must divide evenly over the 2 ranks" odd.log || fail "unhelpful error: $(cat odd.log)"

# Resume across rank counts: 2 -> 1 and 1 -> 2.
$MPIRUN $TOPTAG train --train train.h5 --val val.h5 -o r21 $TINY --batch-size 16 --epochs 1 >/dev/null 2>&1
$TOPTAG train --resume r21 --epochs 2 >r21.log 2>&1 || fail "2 -> 1 resume: $(tail -3 r21.log)"
grep -q "trained 2 epochs" r21.log || fail "2 -> 1 resume did not finish: $(tail -3 r21.log)"
$TOPTAG train --train train.h5 --val val.h5 -o r12 $TINY --batch-size 16 --epochs 1 >/dev/null 2>&1
$MPIRUN $TOPTAG train --resume r12 --epochs 2 >r12.log 2>&1 || fail "1 -> 2 resume: $(tail -3 r12.log)"
grep -q "trained 2 epochs" r12.log || fail "1 -> 2 resume did not finish: $(tail -3 r12.log)"

# A rank killed mid-run ends the whole job, non-zero, within seconds (no hang).
$MPIRUN $TOPTAG train --train train.h5 --val val.h5 -o killed $TINY --batch-size 16 --epochs 500 >killed.log 2>&1 &
job=$!
for _ in $(seq 1 100); do [ -s killed/metrics.csv ] && break; sleep 0.2; done
victim=$(pgrep -f -- "-o killed" | grep -v "^$job\$" | tail -1)
kill -9 "$victim"
start=$(date +%s)
for _ in $(seq 1 150); do kill -0 $job 2>/dev/null || break; sleep 0.2; done
if kill -0 $job 2>/dev/null; then kill -9 $job; fail "the job hung after a rank was killed"; fi
if wait $job; then fail "the job exited 0 after a rank was killed"; fi
echo "mpi: a killed rank ended the job in $(($(date +%s) - start)) s"
echo "mpi training: all checks passed"
