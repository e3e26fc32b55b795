"""Runs a workload through fedray (Hydra config, Ray actors, driver) and writes its figures.

Usage: python experiments/bench/fedray_runner.py w1 OUT.json [extra Hydra overrides...]
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # first line: imports, Ray start and shutdown count towards the total

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def main(name: str, out: str, extra: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from workloads import WORKLOADS

    from fedray.app.cli import compose
    from fedray.app.run import run_experiment

    cfg = compose([WORKLOADS[name].preset, "tracking=none", *extra])
    with tempfile.TemporaryDirectory() as tmp:
        result = run_experiment(cfg, tmp, cwd=tmp)
    rounds = [
        {
            k: row[k]
            for k in ("round", "train_loss", "round_s", "eval_accuracy", "client_compute_s")
            if k in row
        }
        for row in result.history
    ]
    with open(out, "w") as f:
        json.dump(
            {
                "fingerprint": result.fingerprint,
                "rounds": rounds,
                "startup_s": result.ready.startup_s if result.ready else None,
                "total_wall_s": time.perf_counter() - T0,
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
