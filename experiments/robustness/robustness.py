"""Byzantine robustness: 20% attackers x {none, sign_flip, scale, gaussian, nan} x aggregators.

Usage (one Ray session for every run; MLflow runs under OUT_DIR/mlflow.db, experiment
`robustness`; a markdown table on stdout and in OUT_DIR/table.md, rows in OUT_DIR/results.json):

    python experiments/robustness/robustness.py OUT_DIR [--seeds 0,1,2]
        [--aggregators fedavg,median] [--attacks none,scale] [extra Hydra overrides...]

A second invocation with the same OUT_DIR skips the (aggregator, attack, seed) cells already in
results.json. With several seeds each cell shows the mean and the per-seed accuracies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ATTACKS = ("none", "scale", "nans", "sign_flip", "gaussian")  # the targets first
AGGREGATORS = {  # 2 of the 10 clients attack: up to 2 attackers among the 5 in a round
    "fedavg": ["algorithm=fedavg"],
    "median": ["algorithm=median"],
    "trimmed_mean": ["algorithm=trimmed_mean", "algorithm.beta=0.2"],  # cuts 1 of 5 per end
    "krum": ["algorithm=krum", "algorithm.f=1"],  # needs 5 valid updates (n >= 2f + 3)
    "multikrum": ["algorithm=multikrum", "algorithm.f=1"],  # mean of the n - f = 4 best scored
    # FedAvg behind the driver's norm screen: updates over 3x the round's median norm rejected
    "screened_fedavg": ["algorithm=fedavg", "mode.max_norm_ratio=3"],
}
BUDGET = [  # the main job shrunk to ~70 s a cell on a quiet 2-core box (25 cells: ~30 min)
    "partition.num_clients=10",
    "mode.clients_per_round=5",
    "mode.rounds=12",  # after 4, every aggregator was within 2 speeches of the majority class
    "mode.eval_every=12",
    "client.max_steps=2",
    "data.max_test=150",
    "data.max_length=32",
    "mode.on_quorum_loss=skip",  # krum with too few valid updates skips the round, counted
    "mode.checkpoint_every=12",  # the final global state, checked for NaN/Inf below
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
    """Markdown: one row per aggregator, one column per attack (final test accuracy).

    One seed: the accuracy. Several: their mean, then each seed's accuracy in seed order.
    """
    head = "| aggregator | " + " | ".join(ATTACKS) + " |"
    lines = [head, "|" + " ---: |" * (len(ATTACKS) + 1)]
    for agg in AGGREGATORS:
        cells = []
        for attack in ATTACKS:
            cell = sorted(
                (r for r in rows if r["aggregator"] == agg and r["attack"] == attack),
                key=lambda r: r["seed"],
            )
            if not cell:
                cells.append("not run")
                continue
            accs = [r["accuracy"] for r in cell]
            text = f"{statistics.mean(accs):.4f}"
            if len(accs) > 1:
                text += " (" + ", ".join(f"{a:.4f}" for a in accs) + ")"
            skipped = sum(r["rounds_skipped"] for r in cell)
            rejected = sum(r["updates_rejected"] for r in cell)
            if skipped:
                text += f", {skipped} rounds skipped"
            if rejected:
                text += f", {rejected} updates rejected"
            cells.append(text)
        lines.append(f"| {agg} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; choose from {list(known)}")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seeds", default="0", help="comma-separated run seeds")
    ap.add_argument("--aggregators", default=",".join(AGGREGATORS))
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    args, extra = ap.parse_known_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    aggs = _names(args.aggregators, tuple(AGGREGATORS), "aggregators")
    attacks = _names(args.attacks, ATTACKS, "attacks")
    todo = [(a, k, s) for s in seeds for a, k in ORDER if a in aggs and k in attacks]

    import numpy as np
    import ray

    from fedray.app.cli import compose
    from fedray.app.cluster import ray_session
    from fedray.app.run import run_experiment
    from fedray.core.checkpoint import load_checkpoint

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    done = out / "results.json"
    rows: list[dict] = json.loads(done.read_text()) if done.exists() else []  # re-run: go on
    for row in rows:
        row.setdefault("seed", 0)  # rows written before --seeds: all ran with seed 0
    base = [*BUDGET, "tracking.experiment=robustness", *extra]
    with ray_session(compose(base).cluster):
        for agg, attack, seed in todo:
            if any((r["aggregator"], r["attack"], r["seed"]) == (agg, attack, seed) for r in rows):
                continue
            name = f"{agg}-{attack}" + (f"-seed{seed}" if seed else "")
            overrides = [*AGGREGATORS[agg], f"attack={attack}", f"seed={seed}", f"name={name}"]
            cfg = compose([*base, *overrides])
            t0 = time.perf_counter()
            result = run_experiment(cfg, out / name, cwd=out, out=None)
            final = load_checkpoint(out / name / "checkpoint").global_state
            rows.append(
                {
                    "aggregator": agg,
                    "attack": attack,
                    "seed": seed,
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
    main()
