#!/usr/bin/env bash
# The few-photo recipe study (docs/few-photos.md): each candidate trains on the one real car of ../shared/data/real
# and is scored on the stress set by bench/real_car_quality.py --mode stress; each finished seed appends its row to
# bench/results/few_photos.csv, and a (candidate, seed) already there is skipped, so the study goes on where the last
# session stopped. SEEDS=80 screens every candidate on one seed; SEEDS=80,81,82 confirms.
#   SEEDS=80 bash bench/few_photos_study.sh [first-candidate-number]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-80}
RESULTS=bench/results/few_photos.csv
# name | train.py overrides on top of experiment=few_photos trainer=cpu
# the row lite0-320-e12 was screened on the first recipe (commit 8f433f3: no colour augmentation); the
# colour augmentation then joined experiment=few_photos (its first row, seed 80, ran as overrides at d2160fb), and
# the candidates below build on it
CANDIDATES=(
  "recipe|"
  "recipe-freeze2|model.freeze_encoder_epochs=2"
  "recipe-ema|optim.ema_decay=0.99"
  "recipe-e20|trainer.max_epochs=20"
  "recipe-lite1|encoder=efficientnet_lite1"
  "recipe-lite2|encoder=efficientnet_lite2"
  "recipe-lr3e-4|optim.lr=3e-4"
  "recipe-nobnrecal|model.bn_recalibration_batches=0"
  "recipe-640-e8|data.input_size=[640,960] trainer.max_epochs=8"
  "scratch-mobilenet-320-e40|encoder=mobilenet model.encoder_weights=null trainer.max_epochs=40"
)
for candidate in "${CANDIDATES[@]:${1:-0}}"; do
  name=${candidate%%|*}
  overrides=${candidate#*|}
  # shellcheck disable=SC2086 -- the overrides are words
  "$PY" bench/real_car_quality.py --mode stress --name "$name" --seeds "$SEEDS" --results "$RESULTS" $overrides \
    || echo "study: $name failed"
done
