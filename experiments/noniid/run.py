"""Non-IID comparison: fedavg, fedprox, scaffold, fedadam under label skew and natural roles.

Usage (one command; see README.md in this folder):

    python experiments/noniid/run.py [--rounds 6] [--target 0.30] [--out DIR] [override ...]

Every run uses the same seed, model, data and budget (rounds x clients per round x local steps);
only `algorithm` and `partition` change. All runs share one Ray session. Each run is an MLflow
run (experiment `noniid`, tracking store under --out) that also gets the summary metrics
`final_accuracy` and `rounds_to_target`; the table goes to --out/RESULTS.md and stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from dataclasses import dataclass
from pathlib import Path

ALGORITHMS = ("fedavg", "fedprox", "scaffold", "fedadam")
PARTITIONS: dict[str, list[str]] = {
    "dirichlet(0.1)": ["partition=dirichlet", "partition.alpha=0.1"],
    "dirichlet(1.0)": ["partition=dirichlet", "partition.alpha=1.0"],
    "natural (roles)": ["partition=natural"],
}


def budget(rounds: int) -> list[str]:
    """The shared budget, shrunk far below the main job so 12 runs fit a busy 2-core box.

    Two local steps (not one): with a single step FedProx's and SCAFFOLD's client terms
    cannot act (the proximal gradient is zero at the global point, and c - c_i only enters
    from the second round).
    """
    return [
        f"mode.rounds={rounds}",
        "partition.num_clients=20",  # Dirichlet(0.1) leaves a client of 24 empty at seed 0
        "mode.clients_per_round=3",
        "mode.eval_every=2",  # rounds-to-target is resolved to 2 rounds
        "data.max_test=150",  # +-4 points of accuracy; evaluation is a large share of a round
        "data.max_length=32",
        "client.batch_size=8",
        "client.max_steps=2",
        "client.round_stride=10000",  # natural yields > 1000 role clients; seeds must not collide
        "tracking.experiment=noniid",
        "tracking.log_model=false",
    ]


@dataclass
class Row:
    """One finished run, as the table shows it."""

    partition: str
    algorithm: str
    clients: int
    final_accuracy: float
    rounds_to_target: int | None
    wall_s: float
    run_id: str | None


def rounds_to_target(history: list[dict], target: float) -> int | None:
    """First evaluated round whose accuracy reaches `target` (None: never)."""
    for row in history:
        if row.get("eval_accuracy", -1.0) >= target:
            return int(row["round"])
    return None


def table(rows: list[Row], target: float) -> str:
    """The markdown table, one line per (partition, algorithm)."""
    lines = [
        f"| partition | clients | algorithm | final accuracy | rounds to {target:.2f} | wall (s) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        reached = "not reached" if r.rounds_to_target is None else str(r.rounds_to_target)
        lines.append(
            f"| {r.partition} | {r.clients} | {r.algorithm} | {r.final_accuracy:.4f} | "
            f"{reached} | {r.wall_s:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--target", type=float, default=0.30, help="accuracy for rounds-to-target")
    parser.add_argument("--out", default="experiments/noniid/out")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only rebuild the table from the finished runs in the --out MLflow store",
    )
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=PARTITIONS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    from fedray.app.cli import compose
    from fedray.app.cluster import ray_session
    from fedray.app.run import run_experiment
    from fedray.data import build_federated_data

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out}/mlflow.db"
    common = [*budget(args.rounds), f"tracking.uri={uri}", *args.overrides]
    started = dt.datetime.now(dt.UTC)
    if args.report_only:
        rows, started = rows_from_mlflow(uri)
        (out / "RESULTS.md").write_text(report(rows, args, started, common))
        print((out / "RESULTS.md").read_text())
        return
    rows: list[Row] = []
    with ray_session(compose(common).cluster):
        for part in args.partitions:
            part_overrides = PARTITIONS[part]
            for algo in args.algorithms:
                cfg = compose([*common, *part_overrides, f"algorithm={algo}"])
                name = f"{algo}-{part.split()[0]}"
                print(f"== {name}", flush=True)
                t0 = time.perf_counter()
                result = run_experiment(
                    cfg, out / "runs" / name, cwd=out, run_name=name, tags={"study": "noniid"}
                )
                wall = time.perf_counter() - t0
                reached = rounds_to_target(result.history, args.target)
                if result.run_id:
                    client = MlflowClient(uri)
                    client.log_metric(result.run_id, "final_accuracy", result.metric)
                    if reached is not None:
                        client.log_metric(result.run_id, "rounds_to_target", reached)
                    client.set_tag(result.run_id, "target_accuracy", str(args.target))
                clients = build_federated_data(cfg.data, cfg.partition, cfg.seed).num_clients()
                rows.append(Row(part, algo, clients, result.metric, reached, wall, result.run_id))
                print(table(rows[-1:], args.target).splitlines()[-1], flush=True)
                (out / "RESULTS.md").write_text(report(rows, args, started, common))
    text = report(rows, args, started, common)
    (out / "RESULTS.md").write_text(text)
    print(text)


def rows_from_mlflow(uri: str) -> tuple[list[Row], dt.datetime]:
    """Rows of the FINISHED runs of experiment `noniid` in table order, and the first start."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("noniid")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    by_name = {r.info.run_name: r for r in runs if r.info.status == "FINISHED"}
    rows: list[Row] = []
    for part, overrides in PARTITIONS.items():
        for algo in ALGORITHMS:
            run = by_name.get(f"{algo}-{part.split()[0]}")
            if run is None or "final_accuracy" not in run.data.metrics:
                continue
            m = run.data.metrics
            reached = m.get("rounds_to_target")
            rows.append(
                Row(
                    part,
                    algo,
                    _clients(overrides),
                    m["final_accuracy"],
                    None if reached is None else int(reached),
                    (run.info.end_time - run.info.start_time) / 1000,
                    run.info.run_id,
                )
            )
    starts = [r.info.start_time for r in runs] or [0]
    return rows, dt.datetime.fromtimestamp(min(starts) / 1000, dt.UTC)


def _clients(overrides: list[str]) -> int:
    from fedray.app.cli import compose
    from fedray.data import build_federated_data

    cfg = compose([*budget(1), *overrides])
    return build_federated_data(cfg.data, cfg.partition, cfg.seed).num_clients()


def report(
    rows: list[Row], args: argparse.Namespace, started: dt.datetime, common: list[str]
) -> str:
    """RESULTS.md: command, date, machine, settings and the table."""
    command = "python experiments/noniid/run.py " + " ".join(
        [f"--rounds {args.rounds}", f"--target {args.target}", *args.overrides]
    )
    return "\n".join(
        [
            "# Non-IID comparison (Shakespeare genre task, 6 classes)",
            "",
            f"Command: `{command}`  ",
            f"Started: {started:%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
            f"{_cpus()} CPUs, Python {platform.python_version()}, shared with other jobs.  ",
            f"Shared settings: `{' '.join(o for o in common if not o.startswith('tracking.uri'))}`"
            " plus the defaults in conf/ (MiniLM + LoRA on layers 3-5, seed 0, "
            "AdamW lr 3e-3, batch and steps as listed).",
            "",
            table(rows, args.target),
            "",
        ]
    )


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
