#!/usr/bin/env bash
# A sweep's report and screenshots: `experiments/report/make.sh TRACKING_URI PARENT_RUN_ID [OUT]`
# (from the repository root; needs Debian's `chromium`). Writes OUT/report.html, OUT/report.png
# (the page) and, for an http TRACKING_URI, OUT/mlflow_runs.png (the MLflow UI's runs view).
set -euo pipefail
uri=$1 parent=$2 out=${3:-experiments/report}
flags=(--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --hide-scrollbars --virtual-time-budget=15000)
python -m fedray.app.cli report --parent "$parent" --tracking-uri "$uri" --out "$out/html" --no-log
profile=$(mktemp -d)
chromium "${flags[@]}" --user-data-dir="$profile" --window-size=1200,3000 \
  --screenshot="$out/report.png" "file://$(realpath "$out/html/report.html")"
if [[ $uri == http* ]]; then
  exp=$(python -c "from mlflow.tracking import MlflowClient as C; print(C('$uri').get_run('$parent').info.experiment_id)")
  chromium "${flags[@]}" --user-data-dir="$profile" --window-size=1400,900 \
    --screenshot="$out/mlflow_runs.png" "$uri/#/experiments/$exp?workflowType=machine_learning"
fi
rm -rf "$profile"
