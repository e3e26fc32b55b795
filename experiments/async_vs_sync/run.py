"""Async vs sync on the same work with 30% slow clients (5x slower): wall time to accuracy.

Usage: python experiments/async_vs_sync/run.py OUT_DIR [--rounds N] [--skip-fedasync]
       [extra Hydra overrides for every run...]

Runs the Shakespeare genre task (MiniLM + LoRA, the main job's defaults) three times with the
same seed, the same clients, the same budget of client updates and the same speed factors:
sync FedAvg, async FedBuff (K = clients per round, FedAvg server step), async FedAsync. Wall
time counts from the first dispatch (actor start-up excluded, evaluation included, same for
every run). Writes OUT_DIR/results.md (markdown table), OUT_DIR/results.json, and one MLflow
run per mode in OUT_DIR/mlflow.db.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedray.app.cli import compose
from fedray.app.run import RunResult, run_experiment

# 4 actors of half a CPU: stragglers occupy an actor while they "wait", as a slow device would
COMMON = [
    "speed.kind=slow_fraction",
    "speed.slow_fraction=0.3",
    "speed.slowdown=5",
    "client.num_actors=4",
    "client.num_cpus=0.5",
    "client.torch_threads=1",
    "mode.eval_every=3",
    "tracking.experiment=async_vs_sync",
    "tracking.log_model=false",
]
MODES = {
    "sync-fedavg": ["mode=sync", "algorithm=fedavg"],
    "async-fedbuff": ["mode=async", "algorithm=fedbuff", "mode.max_concurrency=4"],
    "async-fedasync": ["mode=async", "algorithm=fedasync", "mode.max_concurrency=4"],
}


def curve(result: RunResult) -> list[tuple[float, float, int]]:
    """(wall seconds since the first dispatch, eval accuracy, round/period) at each evaluation."""
    out, wall = [], 0.0
    for row in result.history:
        wall = row.get("wall_s", wall + row["round_s"])  # sync rows carry round_s only
        if "eval_accuracy" in row:
            out.append((wall, row["eval_accuracy"], row["round"]))
    return out


def time_to(points: list[tuple[float, float, int]], target: float) -> float:
    """Wall time of the first evaluation reaching `target` (NaN if none does)."""
    return next((w for w, acc, _ in points if acc >= target - 1e-12), math.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--skip-fedasync", action="store_true")
    args, extra = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    modes = {k: v for k, v in MODES.items() if not (args.skip_fedasync and k.endswith("fedasync"))}
    rows: dict[str, dict[str, Any]] = {}
    for name, overrides in modes.items():
        cfg = compose(
            [
                *overrides,
                *COMMON,
                f"mode.rounds={args.rounds}",
                f"tracking.uri=sqlite:///{args.out.resolve()}/mlflow.db",
                *extra,
            ]
        )
        t0 = time.perf_counter()
        result = run_experiment(cfg, args.out / name, cwd=args.out, run_name=name)
        points = curve(result)
        rows[name] = {
            "run_id": result.run_id,
            "total_s": time.perf_counter() - t0,
            "curve": points,
            "loop_s": points[-1][0] if points else math.nan,
            "final_accuracy": points[-1][1] if points else math.nan,
            "dropped": sum(r.get("updates_dropped", 0) for r in result.history),
            "staleness_mean": _mean([r.get("staleness_mean", math.nan) for r in result.history]),
        }
        write(args.out, rows, args.rounds, extra)  # after every run: partial results survive


def write(out: Path, rows: dict[str, dict[str, Any]], rounds: int, extra: list[str]) -> None:
    """Time to the sync run's final accuracy for every run so far; results.md and .json."""
    sync = rows["sync-fedavg"]
    target = sync["final_accuracy"]
    for row in rows.values():
        row["time_to_target_s"] = time_to(row["curve"], target)
        row["ratio"] = row["time_to_target_s"] / sync["loop_s"]
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    table = render(rows, target, rounds, extra)
    (out / "results.md").write_text(table)
    print(table, flush=True)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def render(rows: dict[str, dict[str, Any]], target: float, rounds: int, extra: list[str]) -> str:
    """The markdown table: final accuracy, loop wall time, time to the sync final accuracy."""
    lines = [
        f"Async vs sync, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{rounds} x 10 client updates per run; target = sync final accuracy {target:.4f}",
        f"Extra overrides: {' '.join(extra) or 'none'}",
        "",
        "| run | final acc | loop wall s | time to target s | ratio to sync wall "
        "| mean staleness | dropped | accuracy at (wall s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        pts = ", ".join(f"{acc:.3f}@{w:.0f}" for w, acc, _ in r["curve"])
        lines.append(
            f"| {name} | {r['final_accuracy']:.4f} | {r['loop_s']:.1f} | "
            f"{r['time_to_target_s']:.1f} | {r['ratio']:.2f} | {r['staleness_mean']:.2f} | "
            f"{r['dropped']} | {pts} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
