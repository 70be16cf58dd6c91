#!/usr/bin/env bash
# Trains the model the `ml` strategy ships with, from requests recorded through the real proxy.
#
# 1. Builds the release binaries and runs every scenario in conf/scenarios through the lab with
#    the strategies random, prequal, p2c_ewma and prequal@no_orca (random covers every backend
#    at every load; the heuristics show the model what their choices lead to; the ablation,
#    backends without ORCA load reports, teaches it to do without them), one repetition of 20 s
#    after 2 s of warm-up each, with seeds from 1000 (disjoint from the benchmark's 1..4).
#    nb-bench --record writes our proxy's JSONL request log of each run into the records
#    directory as <scenario>.<strategy>.s<seed>.jsonl.
# 2. Trains on all of them (hold-out = the latest 20 % of each scenario, plus
#    leave-one-scenario-out) into model-server/models/scorer.onnx and its figures into
#    model-server/models/scorer.report.json.
# 3. Trains a second, different real model on every other scenario only (another seed) into
#    model-server/tests/fixtures/scorer-previous.onnx: the model-server tests swap between the
#    two.
#
# Takes about 12 minutes on 2 cores once the release binaries are built (building them from
# scratch adds several minutes): the recording is 7 scenarios x 4 strategies x ~24 s, about
# 12 minutes, and yields ~400k records (~300 MB); the training about 2 minutes (leave-one-
# scenario-out is most of it). Run it on an otherwise idle machine: the lab pins the proxy to
# one core and the load generator and fleet to the other.
#
# Usage: scripts/train_model.sh [--records DIR] [--skip-record]
#   --records DIR   where the request logs go (default target/train-records; emptied first
#                   unless --skip-record)
#   --skip-record   train from the logs already in --records DIR (no build, no lab runs)
# Environment: DURATION, WARMUP (seconds per run), SEED_BASE, MODEL, REPORT, PREVIOUS (outputs).
set -euo pipefail
cd "$(dirname "$0")/.."

records=target/train-records
record=1
while (($#)); do
  case "$1" in
    --records) records=$2; shift 2 ;;
    --skip-record) record=0; shift ;;
    *) echo "usage: $0 [--records DIR] [--skip-record]" >&2; exit 2 ;;
  esac
done
duration=${DURATION:-20}
warmup=${WARMUP:-2}
seed_base=${SEED_BASE:-1000}
model=${MODEL:-model-server/models/scorer.onnx}
report=${REPORT:-model-server/models/scorer.report.json}
previous=${PREVIOUS:-model-server/tests/fixtures/scorer-previous.onnx}
records=$(realpath -m "$records") model=$(realpath -m "$model") report=$(realpath -m "$report")
previous=$(realpath -m "$previous")

./scripts/setup.sh
# The pipeline runs from its own directory, with its virtualenv's python.
nbtrain() { (cd model-server/training && .venv/bin/python -m nbtrain "$@"); }

if ((record)); then
  cargo build --release --quiet -p neurabalancer -p backend-sim -p nb-lab
  bench=./target/release/nb-bench
  help=$($bench --help)
  for flag in --record --seed-base; do
    grep -q -- "$flag" <<<"$help" || { echo "train_model: nb-bench has no $flag" >&2; exit 1; }
  done
  rm -rf "$records"
  mkdir -p "$records"
  for scenario in conf/scenarios/*.yaml; do
    name=$(basename "$scenario" .yaml)
    echo "train_model: recording $name" >&2
    $bench --scenario "$scenario" --strategies random,prequal,p2c_ewma,prequal@no_orca --reps 1 --seed-base "$seed_base" \
      --duration "$duration" --warmup "$warmup" --record "$records" --out "$records/bench/$name"
  done
fi

shopt -s nullglob
logs=("$records"/*.jsonl)
((${#logs[@]})) || { echo "train_model: no *.jsonl request logs in $records" >&2; exit 1; }
# Every other scenario (by name) for the previous model.
mapfile -t scenarios < <(for f in "${logs[@]}"; do basename "$f" | cut -d. -f1; done | sort -u)
half=()
for i in "${!scenarios[@]}"; do
  if ((i % 2 == 0)); then half+=("$records/${scenarios[$i]}".*.jsonl); fi
done

nbtrain train --records "${logs[@]}" --loso --seed 1 --report "$report" --out "$model"
nbtrain train --records "${half[@]}" --seed 2 --out "$previous"
