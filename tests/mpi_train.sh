#!/usr/bin/env bash
# Data-parallel training under mpirun (2 ranks, oversubscribed, as root in CI): equivalence with one
# process, convergence, resume across rank counts, and a killed rank ending the job.
# Also: QAT and --features on 2 ranks, distributed predict and features (bit-identical files), SIGINT,
# and the study with --mpi 2.
# Usage: mpi_train.sh TOPTAG
set -euo pipefail
TOPTAG=$(realpath "$1")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
MPIRUN="mpirun -np 2 --oversubscribe"
source "$(dirname "$0")/cli_common.sh"
enter_work_dir

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
# Buckets of 10 kB: the gradients are reduced in many buckets while backward runs.
for ranks in 1 2; do
  launcher=""; [ "$ranks" = 2 ] && launcher=$MPIRUN
  $launcher $TOPTAG train --train train.h5 --val val.h5 -o sync$ranks --init base/last.h5 --sync-batchnorm \
    $TINY --batch-size 8 --epochs 1 --max-train-jets 80 --bucket-mb 0.01 >sync$ranks.log 2>&1 || fail "sync-BN training on $ranks rank(s): $(tail -3 sync$ranks.log)"
done
/usr/bin/python3 - <<'PY' || fail "synchronised batch norm: 1 and 2 ranks ended with different weights"
import h5py, numpy as np
a, b = h5py.File("sync1/last.h5"), h5py.File("sync2/last.h5")
names = [k for k in a.keys() if isinstance(a[k], h5py.Dataset) and a[k].dtype.kind == "f"]
worst = max(float(np.max(np.abs(a[k][()] - b[k][()])) / (1e-3 + float(np.max(np.abs(a[k][()]))))) for k in names)
print(f"sync batch norm, 1 vs 2 ranks, worst relative weight difference over {len(names)} tensors: {worst:.2e}")
assert worst < 1e-3, worst
PY

# Quantization-aware training (int8 weights and activations: batch norm folded, ranges calibrated on
# each rank's slices and combined) and head-only training on a features file: 2 ranks end where
# 1 process ends.
$TOPTAG features -c base/last.h5 -i train.h5 -o ftrain.h5 --threads 1 >/dev/null 2>&1 || fail "features of train.h5"
$TOPTAG features -c base/last.h5 -i val.h5 -o fval.h5 --threads 1 >/dev/null 2>&1 || fail "features of val.h5"
for ranks in 1 2; do
  launcher=""; [ "$ranks" = 2 ] && launcher=$MPIRUN
  $launcher $TOPTAG train --train train.h5 --val val.h5 -o qat$ranks --init base/last.h5 --quantize int8 \
    $TINY --batch-size 8 --epochs 1 --max-train-jets 80 >qat$ranks.log 2>&1 || fail "QAT on $ranks rank(s): $(tail -3 qat$ranks.log)"
  $launcher $TOPTAG train --features ftrain.h5 --val fval.h5 -o feat$ranks --init base/last.h5 --threads 1 \
    --batch-size 16 --epochs 2 >feat$ranks.log 2>&1 || fail "--features on $ranks rank(s): $(tail -3 feat$ranks.log)"
done
/usr/bin/python3 - <<'PY' || fail "QAT or --features: 1 and 2 ranks ended with different weights"
import h5py, numpy as np
for run in ("qat", "feat"):
    a, b = h5py.File(f"{run}1/last.h5"), h5py.File(f"{run}2/last.h5")
    names = [k for k in a.keys() if isinstance(a[k], h5py.Dataset) and a[k].dtype.kind == "f"]
    assert names, run
    worst = max(float(np.max(np.abs(a[k][()] - b[k][()])) / (1e-3 + float(np.max(np.abs(a[k][()]))))) for k in names)
    print(f"{run}, 1 vs 2 ranks, worst relative weight difference over {len(names)} tensors: {worst:.2e}")
    assert worst < 1e-3, (run, worst)
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
# Unsynchronised batch norm needs 2 or more images per rank: a global batch of 2 on 2 ranks is
# refused before any step (at 40x40 the last layers still hold 2x2 values per image, so it used to
# train); with --sync-batchnorm (statistics over both ranks' images) it trains.
ONE_EACH="--arch resnet10 --width 4 --hidden 16 --image-size 40 --threads 1 --batch-size 2 --epochs 1 --max-train-jets 8"
if $MPIRUN $TOPTAG train --train train.h5 --val val.h5 -o lonely $ONE_EACH >lonely.log 2>&1; then
  fail "2 ranks trained batch norm on 1 image each without --sync-batchnorm"
fi
grep -q -- "--batch-size 2 over 2 ranks gives each rank 1 image" lonely.log || fail "unhelpful error: $(tail -3 lonely.log)"
$MPIRUN $TOPTAG train --train train.h5 --val val.h5 -o paired $ONE_EACH --sync-batchnorm >paired.log 2>&1 \
  || fail "--sync-batchnorm with 1 image per rank: $(tail -3 paired.log)"

# Resume across rank counts: 2 -> 1 and 1 -> 2.
$MPIRUN $TOPTAG train --train train.h5 --val val.h5 -o r21 $TINY --batch-size 16 --epochs 1 >/dev/null 2>&1
$TOPTAG train --resume r21 --epochs 2 >r21.log 2>&1 || fail "2 -> 1 resume: $(tail -3 r21.log)"
grep -q "trained 2 epochs" r21.log || fail "2 -> 1 resume did not finish: $(tail -3 r21.log)"
$TOPTAG train --train train.h5 --val val.h5 -o r12 $TINY --batch-size 16 --epochs 1 >/dev/null 2>&1
$MPIRUN $TOPTAG train --resume r12 --epochs 2 >r12.log 2>&1 || fail "1 -> 2 resume: $(tail -3 r12.log)"
grep -q "trained 2 epochs" r12.log || fail "1 -> 2 resume did not finish: $(tail -3 r12.log)"

# Distributed predict and features: 2 and 3 ranks write the file 1 process writes, bit for bit
# (the same threads per process: thread count changes GEMM blocking and so the last bits). 128 jets
# in batches of 7: shares cut at batch boundaries, the last one short.
$TOPTAG predict -c full/last.h5 -i val.h5 -o p1.h5 --batch-size 7 --threads 1 >/dev/null 2>&1 || fail "predict"
$TOPTAG features -c full/last.h5 -i val.h5 -o f1.h5 --batch-size 7 --threads 1 >/dev/null 2>&1 || fail "features"
for ranks in 2 3; do
  mpirun -np $ranks --oversubscribe $TOPTAG predict -c full/last.h5 -i val.h5 -o p$ranks.h5 --batch-size 7 \
    --threads 1 >p$ranks.log 2>&1 || fail "predict on $ranks ranks: $(tail -3 p$ranks.log)"
  h5diff p1.h5 p$ranks.h5 >/dev/null || fail "predict on $ranks ranks differs from 1 process: $(h5diff p1.h5 p$ranks.h5 | tail -3)"
  mpirun -np $ranks --oversubscribe $TOPTAG features -c full/last.h5 -i val.h5 -o f$ranks.h5 --batch-size 7 \
    --threads 1 >f$ranks.log 2>&1 || fail "features on $ranks ranks: $(tail -3 f$ranks.log)"
  h5diff f1.h5 f$ranks.h5 /features >/dev/null || fail "features on $ranks ranks differ from 1 process"
  h5diff f1.h5 f$ranks.h5 /labels >/dev/null || fail "feature labels on $ranks ranks differ from 1 process"
done
[ "$(grep -c '^wrote 128' p2.log)" = 1 ] || fail "not exactly one rank wrote: $(cat p2.log)"
# More ranks than batches: 5 jets in one batch of 7, two ranks with empty shares.
$TOPTAG predict -c full/last.h5 -i val.h5 -o e1.h5 --batch-size 7 --max-jets 5 --threads 1 >/dev/null 2>&1
mpirun -np 3 --oversubscribe $TOPTAG predict -c full/last.h5 -i val.h5 -o e3.h5 --batch-size 7 --max-jets 5 \
  --threads 1 >e3.log 2>&1 || fail "predict with empty shares: $(tail -3 e3.log)"
h5diff e1.h5 e3.h5 >/dev/null || fail "predict with empty shares differs from 1 process"
# Commands that do not split their work refuse mpirun (N copies would race for one output file).
if $MPIRUN $TOPTAG generate -o raced.h5 -n 64 >raced.log 2>&1; then fail "generate ran under mpirun"; fi
grep -q "run it without mpirun" raced.log || fail "unhelpful error for generate under mpirun: $(tail -3 raced.log)"

# SIGINT to mpirun: every rank stops at the same step, rank 0 writes the checkpoint, and the run resumes.
$MPIRUN $TOPTAG train --train train.h5 --val val.h5 -o stopped $TINY --batch-size 16 --epochs 500 >stopped.log 2>&1 &
job=$!
for _ in $(seq 1 100); do [ -s stopped/metrics.csv ] && break; sleep 0.2; done
kill -INT $job
wait $job || true
grep -q "interrupted in epoch" stopped.log || fail "SIGINT did not stop the ranks with a checkpoint: $(tail -3 stopped.log)"
epochs_done=$(( $(wc -l <stopped/metrics.csv) - 1 ))
$MPIRUN $TOPTAG train --resume stopped --epochs $((epochs_done + 1)) >resumed.log 2>&1 \
  || fail "resume after SIGINT: $(tail -3 resumed.log)"
grep -q "trained $((epochs_done + 1)) epochs" resumed.log || fail "resume after SIGINT did not finish: $(tail -3 resumed.log)"

# The study with --mpi 2: its three training stages run under mpirun, the rest as before.
$TOPTAG study -o study --mpi 2 --jets 256,128,128 --epochs 1 --finetune-epochs 1 --head-epochs 1 --arch resnet10 \
  --width 4 --hidden 16 --image-size 16 --concurrency 1,2 --perf-duration 100ms >study.log 2>&1 \
  || fail "study --mpi 2: $(tail -5 study.log)"
[ "$(grep -c '^\$ mpirun -np 2 toptag train' study.log)" = 3 ] || fail "study --mpi 2 did not train on 2 ranks: $(grep '^\$' study.log)"
[ -s study/report/REPORT.md ] || fail "study --mpi 2 wrote no report"

# An error on one rank (rank 0 cannot put its checkpoint in place) ends the whole job with the
# error, non-zero, at once: the other rank is not left waiting in its next allreduce.
mkdir -p unwritable/last.h5/in-the-way
start=$(date +%s)
if timeout 60 $MPIRUN $TOPTAG train --train train.h5 --val val.h5 -o unwritable $TINY --batch-size 16 --epochs 3 \
  >unwritable.log 2>&1; then
  fail "the job exited 0 although rank 0 could not write its checkpoint"
fi
[ $(($(date +%s) - start)) -lt 50 ] || fail "the job hung after rank 0 failed: $(tail -3 unwritable.log)"
grep -q "unwritable/last.h5: cannot move the finished file into place" unwritable.log || fail "no error message: $(tail -3 unwritable.log)"

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
