#!/usr/bin/env bash
# The main job: installs what toptag needs, builds it, and runs the paper's whole study
# (toptag study) on generated jets, writing runs/study/report. Arguments go to toptag study, e.g.
#   bash scripts/study.sh --epochs 10 --jets 50000,10000,20000
#   bash scripts/study.sh --data /path/to/top-tagging   # the reference train.h5, val.h5, test.h5
# Rerunning resumes after the last finished stage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec build/toptag study -o runs/study "$@"
