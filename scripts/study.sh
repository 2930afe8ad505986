#!/usr/bin/env bash
# The main job: installs what toptag needs, builds it, and runs the study on generated jets:
# generate train/validation/test sets, train the ResNet-50 top tagger with the paper's recipe,
# predict the test set and evaluate it (accuracy, AUC, 1/eps_B at 30% and 50%, ROC curve).
# Environment: STUDY_DIR (default ./study), STUDY_TRAIN_JETS, STUDY_VAL_JETS, STUDY_TEST_JETS,
# STUDY_EPOCHS, STUDY_ARCH. Rerunning skips stages whose outputs already exist.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
TOPTAG=$PWD/build/toptag
DIR=${STUDY_DIR:-study}
TRAIN_JETS=${STUDY_TRAIN_JETS:-6400}
VAL_JETS=${STUDY_VAL_JETS:-2000}
TEST_JETS=${STUDY_TEST_JETS:-4000}
EPOCHS=${STUDY_EPOCHS:-2}
ARCH=${STUDY_ARCH:-resnet50}
mkdir -p "$DIR"
cd "$DIR"
stage() { echo; echo "== $* =="; }

stage "1. generate jets: $TRAIN_JETS train, $VAL_JETS validation, $TEST_JETS test"
[ -s train.h5 ] || $TOPTAG generate -o train.h5 --jets "$TRAIN_JETS" --seed 1 --ttv 0
[ -s val.h5 ] || $TOPTAG generate -o val.h5 --jets "$VAL_JETS" --seed 2 --ttv 2
[ -s test.h5 ] || $TOPTAG generate -o test.h5 --jets "$TEST_JETS" --seed 3 --ttv 1

stage "2. train $ARCH (Adam lr 1e-3, batch 64, $EPOCHS epochs)"
if [ -s float/metrics.csv ] && [ "$(($(wc -l < float/metrics.csv) - 1))" -ge "$EPOCHS" ]; then
  echo "already trained: float/best.h5"
elif [ -s float/last.h5 ]; then
  $TOPTAG train --resume float --epochs "$EPOCHS"
else
  $TOPTAG train --train train.h5 --val val.h5 -o float --arch "$ARCH" --epochs "$EPOCHS"
fi

stage "3. predict the test set"
[ -s float_predictions.h5 ] || $TOPTAG predict -c float/best.h5 -i test.h5 -o float_predictions.h5

stage "4. evaluate"
$TOPTAG eval -p float_predictions.h5 --names float --json metrics.json --plot roc.png --roc-csv roc
echo
echo "study written to $PWD: metrics.json, roc.png, float/ (checkpoints, metrics.csv)"
