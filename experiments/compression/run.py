"""Compression study: the main job (MiniLM + LoRA on Shakespeare genres) with each uplink codec.

Usage (one command; see README.md in this folder):

    python experiments/compression/run.py [--seeds 0 1 2] [--cells none int4 ...] [--out DIR]
                                          [--report-only] [override ...]

Every cell is `fedray` with no overrides (conf/config.yaml: 24 rounds, 10 of 24 Dirichlet
clients per round, 2 local steps) plus `seed=S` and its `compression=...` overrides; nothing else
changes. All runs share one Ray session and one MLflow store (`--out`/mlflow.db, experiment
`compression`), one MLflow run per (cell, seed). A finished run also leaves
`--out`/runs/<cell>-s<seed>/result.json (its per-round history), so an interrupted study
continues where it stopped and `--report-only` rebuilds the table, the plot and RESULTS.md
from those files alone.

Full fine-tuning (`model=minilm_full`) is never trained for the whole study: one round of it per
codec gives the bytes a client would send per round, beside LoRA's (`--full-ft`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# cell name -> (label, the overrides selecting its codec); order = table order
CELLS: dict[str, tuple[str, list[str]]] = {
    "none": ("none (fp32)", ["compression=none"]),
    "fp16": ("fp16", ["compression=fp16"]),
    "int8": ("int8", ["compression=int8"]),
    "int4": ("int4", ["compression=int4"]),
    "nf4": ("nf4", ["compression=nf4"]),
    "qsgd": ("qsgd (7 levels)", ["compression=qsgd"]),
    "topk10_ef": (
        "topk 10% + EF",
        ["compression=topk", "compression.fraction=0.1", "compression.error_feedback=true"],
    ),
    "topk1_ef": (
        "topk 1% + EF",
        ["compression=topk", "compression.fraction=0.01", "compression.error_feedback=true"],
    ),
    "topk1": (
        "topk 1%, no EF",
        ["compression=topk", "compression.fraction=0.01", "compression.error_feedback=false"],
    ),
    "topk10_int8_ef": (
        "topk 10% -> int8 + EF",
        [
            "compression=chain",
            "compression.codecs=[{name:topk,fraction:0.1},{name:int8}]",
            "compression.error_feedback=true",
        ],
    ),
    "sign_ef": ("sign + EF", ["compression=sign", "compression.error_feedback=true"]),
}
# Run order (see `schedule`): every cell at the first seed, most telling first, then the other
# seeds of the cells the targets hinge on (uncompressed LoRA, codecs past 2,000x), then the rest.
DECISIVE = ("none", "sign_ef", "topk1_ef")
PRIORITY = (
    "none",
    "sign_ef",
    "topk10_int8_ef",
    "topk1_ef",
    "nf4",
    "int4",
    "int8",
    "fp16",
    "qsgd",
    "topk10_ef",
    "topk1",
)
EXPERIMENT = "compression"
ENCODED = "encoded_bytes.json"


def schedule(cells: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """(cell, seed) pairs in run order, so that a study cut short by a busy machine has the
    whole frontier at one seed and the target comparison at all seeds first."""
    order = [(c, seeds[0]) for c in cells]
    ranked = [c for c in cells if c in DECISIVE] + [c for c in cells if c not in DECISIVE]
    return order + [(c, s) for c in ranked for s in seeds[1:]]


def sweep_command(seeds: list[int]) -> str:
    """The same grid as one Hydra multirun (one MLflow run per job)."""
    return (
        "fedray -m tracking.experiment=compression seed=" + ",".join(map(str, seeds)) + " "
        "'compression=none,fp16,int8,int4,nf4,qsgd,sign' && "
        "fedray -m tracking.experiment=compression seed=" + ",".join(map(str, seeds)) + " "
        "compression=topk compression.fraction=0.1,0.01 compression.error_feedback=true && "
        "fedray -m tracking.experiment=compression seed=" + ",".join(map(str, seeds)) + " "
        "compression=topk compression.fraction=0.01 compression.error_feedback=false && "
        "fedray -m tracking.experiment=compression seed=" + ",".join(map(str, seeds)) + " "
        "compression=chain 'compression.codecs=[{name:topk,fraction:0.1},{name:int8}]' "
        "compression.error_feedback=true"
    )


@dataclass
class Run:
    """One finished (cell, seed) run, as loaded from its result.json."""

    cell: str
    seed: int
    history: list[dict[str, Any]]
    wall_s: float
    run_id: str | None

    @property
    def final_accuracy(self) -> float:
        for row in reversed(self.history):
            if "eval_accuracy" in row:
                return float(row["eval_accuracy"])
        return math.nan

    @property
    def bytes_up(self) -> float:
        return sum(r.get("bytes_up", 0.0) for r in self.history)

    @property
    def bytes_down(self) -> float:
        return sum(r.get("bytes_down", 0.0) for r in self.history)

    @property
    def updates(self) -> float:
        """Client updates that came back (each one payload up)."""
        return sum(r.get("clients_ok", 0.0) for r in self.history)

    def curve(self) -> list[tuple[float, float]]:
        """(cumulative uplink bytes, accuracy) at each evaluated round."""
        out, total = [], 0.0
        for row in self.history:
            total += row.get("bytes_up", 0.0)
            if "eval_accuracy" in row:
                out.append((total, float(row["eval_accuracy"])))
        return out


def run_dir(out: Path, cell: str, seed: int) -> Path:
    return out / "runs" / f"{cell}-s{seed}"


def load_runs(out: Path, cells: list[str], seeds: list[int]) -> list[Run]:
    runs = []
    for cell in cells:
        for seed in seeds:
            path = run_dir(out, cell, seed) / "result.json"
            if path.exists():
                d = json.loads(path.read_text())
                runs.append(Run(cell, seed, d["history"], d["wall_s"], d.get("run_id")))
    return runs


def full_model_fp32_bytes(out: Path) -> int | None:
    """Bytes of a dense fp32 update of the whole model, measured by the full-FT round."""
    path = out / "full_ft.json"
    if not path.exists():
        return None
    return int(json.loads(path.read_text())["none"]["bytes_up_per_client"])


def mean_sd(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(runs: list[Run], cells: list[str], full: int | None) -> str:
    """The markdown table, one line per cell (means over the seeds that finished)."""
    lines = [
        "| codec | seeds | final accuracy (mean +- sd) | min - max | uplink MB / run | "
        "downlink MB / run | uplink B / client-round | x fewer than full-model fp32 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell in cells:
        rs = [r for r in runs if r.cell == cell]
        if not rs:
            continue
        acc = [r.final_accuracy for r in rs]
        mean, sd = mean_sd(acc)
        per_update = sum(r.bytes_up for r in rs) / sum(r.updates for r in rs)
        ratio = f"{full / per_update:,.0f}x" if full else "n/a"
        lines.append(
            f"| {CELLS[cell][0]} | {','.join(str(r.seed) for r in rs)} | "
            f"{mean:.4f} +- {sd:.4f} | {min(acc):.4f} - {max(acc):.4f} | "
            f"{statistics.fmean(r.bytes_up for r in rs) / 1e6:.3f} | "
            f"{statistics.fmean(r.bytes_down for r in rs) / 1e6:.1f} | "
            f"{per_update:,.0f} | {ratio} |"
        )
    return "\n".join(lines)


def full_ft_table(out: Path, runs: list[Run]) -> str:
    """Bytes one client sends per round, LoRA vs full fine-tuning, each codec: measured in the
    study's runs / a full-FT round where they exist, else encoded from the model's trainable
    state (`--encode-only`)."""
    measured = (
        json.loads((out / "full_ft.json").read_text()) if (out / "full_ft.json").exists() else {}
    )
    encoded = json.loads((out / ENCODED).read_text()) if (out / ENCODED).exists() else {}
    if not measured and not encoded:
        return "(not computed yet: run with --encode-only, or let the study reach --full-ft)"
    lines = [
        "| codec | LoRA B / update | full FT B / update | full FT / LoRA | source (LoRA; full) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for cell in CELLS:
        rs = [r for r in runs if r.cell == cell]
        lora = sum(r.bytes_up for r in rs) / sum(r.updates for r in rs) if rs else None
        lora_src = "study runs" if rs else "encoded"
        lora = lora or encoded.get(cell, {}).get("lora")
        full = measured.get(cell, {}).get("bytes_up_per_client")
        full_src = "one full-FT round" if full else "encoded"
        full = full or encoded.get(cell, {}).get("full")
        if not lora or not full:
            continue
        lines.append(
            f"| {CELLS[cell][0]} | {lora:,.0f} | {full:,.0f} | {full / lora:,.0f}x | "
            f"{lora_src}; {full_src} |"
        )
    return "\n".join(lines)


def encode_bytes(out: Path) -> None:
    """Bytes of one update per codec for the LoRA and the full fine-tuning model, encoded by the
    real client half of the pipeline from a seeded Gaussian delta (std 1e-3) of each model's
    trainable state: exact for every fixed-size codec; for topk the index section depends on the
    positions kept (a few % either way). No training, no Ray."""
    import numpy as np

    from fedray.app.cli import compose
    from fedray.app.spec import build_spec
    from fedray.client.trainer import Trainer
    from fedray.core.types import spec_of
    from fedray.pipeline import Pipeline

    result: dict[str, dict[str, int]] = {cell: {} for cell in CELLS}
    for model, key in (("minilm_lora", "lora"), ("minilm_full", "full")):
        spec = build_spec(compose(["tracking=none", f"model={model}"]))
        state = Trainer(spec.model, spec.data.task, 6, spec.seed).get_state()
        shape = spec_of(state)
        rng = np.random.default_rng(0)
        delta = {
            k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in state.items()
        }
        del state
        for cell, (_, overrides) in CELLS.items():
            pipeline = Pipeline.from_spec(build_spec(compose(["tracking=none", *overrides])))
            payload, _ = pipeline.client(
                delta,
                spec=shape,
                weight=1.0,
                client_id=0,
                round=1,
                seed=1,
                round_message=None,
                client_message=None,
                client_state={},
                session={},
            )
            result[cell][key] = int(payload.nbytes)
            print(f"{model} {cell}: {payload.nbytes:,} bytes", flush=True)
    (out / ENCODED).write_text(json.dumps(result, indent=1))


def plot(runs: list[Run], cells: list[str], path: Path) -> None:
    """Accuracy vs cumulative uplink bytes (mean over seeds at each evaluated round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for cell in cells:
        rs = [r for r in runs if r.cell == cell]
        if not rs:
            continue
        curves = [r.curve() for r in rs]
        n = min(len(c) for c in curves)
        xs = [statistics.fmean(c[i][0] for c in curves) for i in range(n)]
        ys = [statistics.fmean(c[i][1] for c in curves) for i in range(n)]
        ax.plot(xs, ys, marker="o", label=f"{CELLS[cell][0]} ({len(rs)} seeds)")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink bytes (all clients)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs uplink bytes: MiniLM + LoRA, Shakespeare genres")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out: Path, cells: list[str], seeds: list[int], started: str, extra: list[str]) -> str:
    runs = load_runs(out, cells, seeds)
    full = full_model_fp32_bytes(out)
    if runs:
        plot(runs, cells, out / "accuracy_vs_uplink.png")
    missing = [
        f"{c}-s{s}"
        for c in cells
        for s in seeds
        if not any(r.cell == c and r.seed == s for r in runs)
    ]
    command = "python experiments/compression/run.py " + " ".join(
        ["--seeds", *map(str, seeds), *extra]
    )
    return "\n".join(
        [
            "# Compression study (generated)",
            "",
            f"Command: `{command}`  ",
            f"Started: {started}; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}.  ",
            "Every cell: `fedray seed=S compression=...` with conf/config.yaml defaults.  ",
            f"Full-model fp32 update: {full:,} bytes (measured)." if full else "",
            "",
            table(runs, cells, full),
            "",
            "Not run (yet): " + (", ".join(missing) if missing else "none"),
            "",
            "## Bytes per client update, LoRA vs full fine-tuning of the same model",
            "",
            full_ft_table(out, runs),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cells", nargs="+", default=list(PRIORITY), choices=list(CELLS))
    parser.add_argument("--out", default="experiments/compression/out")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--encode-only",
        action="store_true",
        help="only encode one update per codec for LoRA and full FT (bytes; no training)",
    )
    parser.add_argument(
        "--full-ft",
        choices=("first", "last", "skip"),
        default="last",
        help="when to measure one full-FT round per codec (none is always measured first)",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    table_cells = [c for c in CELLS if c in args.cells]
    started_file = out / "started.txt"
    if not started_file.exists():
        started_file.write_text(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    started = started_file.read_text()

    def write_report() -> None:
        text = report(out, table_cells, args.seeds, started, args.overrides)
        (out / "RESULTS.md").write_text(text)

    if args.encode_only:
        encode_bytes(out)
        write_report()
        return
    if args.report_only:
        write_report()
        log_summary(f"sqlite:///{out}/mlflow.db", out)
        print((out / "RESULTS.md").read_text())
        return

    from mlflow.tracking import MlflowClient

    from fedray.app.cli import compose
    from fedray.app.cluster import ray_session
    from fedray.app.run import run_experiment

    uri = f"sqlite:///{out}/mlflow.db"
    common = [f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}", *args.overrides]
    with ray_session(compose(common).cluster):
        if args.full_ft != "skip":
            full_ft_round(out, ["none"], common, run_experiment, compose)
        for cell, seed in schedule(args.cells, args.seeds):
            rdir = run_dir(out, cell, seed)
            if (rdir / "result.json").exists():
                continue
            cfg = compose([*common, f"seed={seed}", *CELLS[cell][1]])
            name = f"{cell}-s{seed}"
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            result = run_experiment(
                cfg, rdir, cwd=out, run_name=name, tags={"study": "compression", "cell": cell}
            )
            wall = time.perf_counter() - t0
            if result.run_id:
                MlflowClient(uri).log_metric(result.run_id, "final_accuracy", result.metric)
            (rdir / "result.json").write_text(
                json.dumps(
                    {
                        "cell": cell,
                        "seed": seed,
                        "run_id": result.run_id,
                        "wall_s": wall,
                        "history": result.history,
                    }
                )
            )
            write_report()
        if args.full_ft != "skip":
            full_ft_round(out, args.cells, common, run_experiment, compose)
    write_report()
    log_summary(uri, out)
    print((out / "RESULTS.md").read_text())


def log_summary(uri: str, out: Path) -> None:
    """The table and the accuracy-vs-bytes plot as artifacts of one MLflow run of the study's
    experiment (tag `study_summary`), reused when the report is rebuilt."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return
    found = client.search_runs(
        [experiment.experiment_id], filter_string="tags.study_summary = 'true'"
    )
    if found:
        run_id = found[0].info.run_id
    else:
        run = client.create_run(
            experiment.experiment_id,
            run_name="compression-study-summary",
            tags={"study_summary": "true", "study": "compression"},
        )
        run_id = run.info.run_id
    for name in ("RESULTS.md", "accuracy_vs_uplink.png"):
        if (out / name).exists():
            client.log_artifact(run_id, str(out / name))
    client.set_terminated(run_id)


def full_ft_round(out: Path, cells: list[str], common: list[str], run_experiment, compose) -> None:
    """One round of `model=minilm_full` per codec: the bytes one client sends up per round.

    `none` runs the main job's 10 clients; the codecs 2 (bytes are per client; on a shared
    2-core machine a full fine-tuning client step costs several LoRA rounds).
    """
    path = out / "full_ft.json"
    done: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for cell in cells:
        if cell in done:
            continue
        cfg = compose(
            [
                *common,
                "model=minilm_full",
                "mode.rounds=1",
                *([] if cell == "none" else ["mode.clients_per_round=2"]),
                "tracking.log_model=false",
                *CELLS[cell][1],
            ]
        )
        name = f"fullft-{cell}"
        print(f"== {name} (one round)", flush=True)
        result = run_experiment(
            cfg,
            out / "runs" / name,
            cwd=out,
            run_name=name,
            tags={"study": "compression", "cell": cell, "full_ft_round": "true"},
        )
        row = result.history[0]
        done[cell] = {
            "bytes_up_per_client": row["bytes_up"] / row["clients_ok"],
            "bytes_down_per_client": row["bytes_down"] / row["clients"],
            "run_id": result.run_id,
        }
        path.write_text(json.dumps(done, indent=1))


if __name__ == "__main__":
    main()
