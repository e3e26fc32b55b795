"""Byzantine robustness: 20% attackers x {none, sign_flip, scale, gaussian, nan} x aggregators.

Usage (one Ray session for every run; MLflow runs under OUT_DIR/mlflow.db, experiment
`robustness`; a markdown table on stdout and in OUT_DIR/table.md, rows in OUT_DIR/results.json):

    python experiments/robustness/robustness.py OUT_DIR [extra Hydra overrides...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ATTACKS = ("none", "scale", "nans", "sign_flip", "gaussian")  # the targets first
AGGREGATORS = {  # 2 of the 10 clients attack: up to 2 attackers among the 5 in a round
    "fedavg": ["algorithm=fedavg"],
    "median": ["algorithm=median"],
    "trimmed_mean": ["algorithm=trimmed_mean", "algorithm.beta=0.2"],  # cuts 1 of 5 per end
    "krum": ["algorithm=krum", "algorithm.f=1"],  # needs 5 valid updates (n >= 2f + 3)
}
BUDGET = [  # the main job shrunk to fit 20 runs in ~30 min on 2 cores shared by 4 agents
    "partition.num_clients=10",
    "mode.clients_per_round=5",
    "mode.rounds=4",
    "mode.eval_every=4",
    "client.max_steps=2",
    "data.max_test=150",
    "data.max_length=32",
    "mode.on_quorum_loss=skip",  # krum with too few valid updates skips the round, counted
    "mode.checkpoint_every=4",  # the final global state, checked for NaN/Inf below
]


# Most telling pairs first (clean vs scaling, fedavg vs median), so a cut-short run still answers
# the targets.
ORDER = sorted(
    ((agg, attack) for attack in ATTACKS for agg in AGGREGATORS),
    key=lambda p: (
        ATTACKS.index(p[1]) > 1,
        list(AGGREGATORS).index(p[0]) > 1,
        ATTACKS.index(p[1]),
        list(AGGREGATORS).index(p[0]),
    ),
)


def table(rows: list[dict]) -> str:
    """Markdown: one row per aggregator, one column per attack (final test accuracy)."""
    head = "| aggregator | " + " | ".join(ATTACKS) + " |"
    lines = [head, "|" + " --- |" * (len(ATTACKS) + 1)]
    for agg in AGGREGATORS:
        cells = []
        for attack in ATTACKS:
            row = next((r for r in rows if r["aggregator"] == agg and r["attack"] == attack), None)
            if row is None:
                cells.append("not run")
                continue
            skipped = f" ({row['rounds_skipped']} skipped)" if row["rounds_skipped"] else ""
            cells.append(f"{row['accuracy']:.4f}{skipped}")
        lines.append(f"| {agg} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(out_dir: str, extra: list[str]) -> None:
    import numpy as np
    import ray

    from fedray.checkpoint import load_checkpoint
    from fedray.cli import compose
    from fedray.cluster import ray_session
    from fedray.run import run_experiment

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    done = out / "results.json"
    rows: list[dict] = json.loads(done.read_text()) if done.exists() else []  # re-run: go on
    base = [*BUDGET, "tracking.experiment=robustness", *extra]
    with ray_session(compose(base).cluster):
        for agg, attack in ORDER:
            if any(r["aggregator"] == agg and r["attack"] == attack for r in rows):
                continue
            agg_overrides = AGGREGATORS[agg]
            name = f"{agg}-{attack}"
            cfg = compose([*base, *agg_overrides, f"attack={attack}", f"name={name}"])
            t0 = time.perf_counter()
            result = run_experiment(cfg, out / name, cwd=out, out=None)
            final = load_checkpoint(out / name / "checkpoint").global_state
            rows.append(
                {
                    "aggregator": agg,
                    "attack": attack,
                    "accuracy": result.metric,
                    "rounds_skipped": sum(r["round_skipped"] for r in result.history),
                    "updates_rejected": sum(r["updates_rejected"] for r in result.history),
                    "global_finite": all(bool(np.isfinite(a).all()) for a in final.values()),
                    "run_id": result.run_id,
                    "wall_s": time.perf_counter() - t0,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            (out / "results.json").write_text(json.dumps(rows, indent=1))
        assert ray.is_initialized()
    md = table(rows)
    (out / "table.md").write_text(md + "\n")
    print(md)
    finite = all(r["global_finite"] for r in rows)
    print(f"every final global model is finite (no NaN/Inf reached it): {finite}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
