#!/usr/bin/env bash
# An 8-trial Optuna study with round-level pruning on a tiny model (offline, ~5 min on a quiet
# 2-core box): `bash experiments/tune/run.sh [OUT_DIR]` from the repository root.
set -euo pipefail
out=${1:-experiments/tune/out}
root=$(pwd)
mkdir -p "$out"
cd "$out"
python -c "from fedray.models import save_tiny_classifier; save_tiny_classifier('tiny')" >/dev/null
PYTHONPATH=$root python -m fedray.app.cli tune --trials 8 --concurrency 2 --startup-trials 2 \
  'client.lr=tag(log,interval(1e-5,1e-1))' partition.alpha=0.1,1.0 \
  model.name_or_path="$PWD/tiny" model.lora.layers=null mode.rounds=4 mode.clients_per_round=4 \
  partition.max_samples_per_client=32 data.max_test=96
