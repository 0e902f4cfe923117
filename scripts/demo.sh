#!/usr/bin/env bash
# The whole mission on the synthetic Carvana set: train -> predict the test photos -> Kaggle submission.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUN=outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)
mkdir -p outputs/demo

"$PY" train.py data=synthetic hydra.run.dir="$RUN" "$@" | tee "$RUN.train.log"
CKPT=$(grep -o 'checkpoint=.*' "$RUN.train.log" | tail -1 | cut -d= -f2-)
"$PY" predict.py ckpt="$CKPT" output_dir="$RUN/predictions"
SUBMISSION=$("$PY" submit.py probs_dir="$RUN/predictions" sample_csv=data/synthetic/sample_submission.csv | tail -1)
echo "$(grep -o 'val_dice=[0-9.]*' "$RUN.train.log" | tail -1) submission=$SUBMISSION"
