"""The large-model studies on the main job, one command: precision, exact LoRA aggregation,
heterogeneous ranks and layers, FedDF with mixed architectures.

Every run is the main job (`fedray` with no overrides: MiniLM + LoRA on Shakespeare genres,
24 Dirichlet(1.0) clients, 10 per round, 24 rounds, evaluation every 6 rounds) with the same
seed, changed only as each study says; all runs share one Ray session. A finished run writes
OUT/runs/NAME.json (its per-round history), so an interrupted study resumes where it stopped;
OUT/RESULTS.md holds the tables, rebuilt from whatever runs have finished.

Studies (`--studies`, default all):
- `precision`: model.dtype float32 vs bfloat16 (the base stored in bf16, autocast on CPU);
  accuracy here, speed side by side in `precision_speed.py`.
- `exact`: FedAvg of the LoRA factors vs FLoRA (exact products, dense merged delta) vs
  FFA-LoRA (A frozen); all with `compression=trim` (lossless) so bytes compare.
- `hetlora`: uniform rank 8 vs client groups of other ranks / tuned layers with the same
  expected adapter bytes per client (LoRA scaling kept at alpha / r = 2 for the superset).
- `feddf`: FedAvg (all clients MiniLM, 6 layers) vs FedDF with the same clients vs FedDF where
  half of the clients run a 3-layer MiniLM (the first 3 layers, adapters on all 3); 128 public
  speeches labelled per round.

Usage: python experiments/large/study.py [--out DIR] [--studies exact hetlora ...]
       [--only NAME ...] [--report-only] [-- extra overrides for every run]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRIM = ["compression=trim"]
HALF = "share:0.5"
RUNS: dict[str, dict[str, list[str]]] = {
    "precision": {  # accuracy; the speed ratio is measured side by side by precision_speed.py
        "fp32": TRIM,  # trim is lossless: the same computation as compression=none
        "bf16": [*TRIM, "model.dtype=bfloat16"],
    },
    "exact": {
        "fedavg": TRIM,
        "flora": [*TRIM, "algorithm=flora"],
        "ffa_lora": [*TRIM, "algorithm=ffa_lora"],
    },
    "hetlora": {
        "uniform_r8": TRIM,  # the main job's adapter; same adapter bytes as every row below
        "ranks_4_12": [
            *TRIM,
            "algorithm=hetlora",
            "model.lora.alpha=24",  # superset rank 12: scaling 24 / 12 = 2 as in 16 / 8
            f"model.groups=[{{{HALF},r:4}},{{{HALF},r:12}}]",
        ],
        "ranks_4_12_pad": [
            *TRIM,
            "algorithm=hetlora",
            "algorithm.aggregation=pad",
            "model.lora.alpha=24",
            f"model.groups=[{{{HALF},r:4}},{{{HALF},r:12}}]",
        ],
        "ranks_4_12_rankw": [
            *TRIM,
            "algorithm=hetlora",
            "algorithm.weighting=rank",
            "model.lora.alpha=24",
            f"model.groups=[{{{HALF},r:4}},{{{HALF},r:12}}]",
        ],
        "ranks_2_4_8_18": [
            *TRIM,
            "algorithm=hetlora",
            "model.lora.alpha=36",  # superset rank 18
            "model.groups=[{share:0.25,r:2},{share:0.25,r:4},{share:0.25,r:8},{share:0.25,r:18}]",
        ],
        "layers_1_3_r12": [
            *TRIM,
            "algorithm=hetlora",
            "model.lora.r=12",
            "model.lora.alpha=24",
            f"model.groups=[{{{HALF},layers:[5]}},{{{HALF},layers:[3,4,5]}}]",
        ],
    },
    "feddf": {
        "fedavg_6L": TRIM,
        "feddf_6L": [*TRIM, "algorithm=feddf", "algorithm.public_size=128"],
        "feddf_6L_3L": [
            *TRIM,
            "algorithm=feddf",
            "algorithm.public_size=128",
            f"model.groups=[{{{HALF}}},{{{HALF},num_layers:3,layers:[0,1,2]}}]",
        ],
    },
}


def summary(history: list[dict]) -> dict[str, float]:
    """Final accuracy, accuracy at each evaluation, bytes and times of a run's history."""
    evals = {int(r["round"]): r["eval_accuracy"] for r in history if "eval_accuracy" in r}
    rounds = [r["round_s"] for r in history]
    out = {
        "final_accuracy": evals[max(evals)] if evals else float("nan"),
        "evals": evals,
        "mb_up_per_round": statistics.mean(r["bytes_up"] for r in history) / 1e6,
        "mb_down_per_round": statistics.mean(r["bytes_down"] for r in history) / 1e6,
        "mb_total": sum(r["bytes_up"] + r["bytes_down"] for r in history) / 1e6,
        "median_round_s": statistics.median(rounds),
        "client_compute_s": sum(r.get("client_compute_s", 0.0) for r in history),
    }
    distill = [r["distill_s"] for r in history if "distill_s" in r]
    if distill:
        out["distill_s_per_round"] = statistics.mean(distill)
        out["distill_mb_per_round"] = (
            statistics.mean(r["distill_bytes"] for r in history if "distill_bytes" in r) / 1e6
        )
        out["distill_teacher_passes"] = statistics.mean(
            r["distill_teacher_passes"] for r in history if "distill_teacher_passes" in r
        )
    return out


def _row(name: str, s: dict, cols: list[str]) -> str:
    # by round: a run read back from its JSON file has the rounds as string keys
    evals = " / ".join(f"{v:.3f}" for _, v in sorted(s["evals"].items(), key=lambda e: int(e[0])))
    cells = {
        "acc": f"{s['final_accuracy']:.4f}",
        "evals": evals,
        "up": f"{s['mb_up_per_round']:.3f}",
        "down": f"{s['mb_down_per_round']:.3f}",
        "total": f"{s['mb_total']:.1f}",
        "round": f"{s['median_round_s']:.1f}",
        "compute": f"{s['client_compute_s']:.0f}",
        "distill": f"{s.get('distill_s_per_round', 0):.1f}",
        "distill_mb": f"{s.get('distill_mb_per_round', 0):.2f}",
    }
    return f"| {name} | " + " | ".join(cells[c] for c in cols) + " |"


HEADERS = {
    "acc": "final accuracy",
    "evals": "accuracy at each evaluation (in round order)",
    "up": "MB up / round",
    "down": "MB down / round",
    "total": "MB total (all rounds)",
    "round": "median round (s)",
    "compute": "client compute (s, all rounds)",
    "distill": "distillation (s / round)",
    "distill_mb": "distillation MB / round",
}
COLUMNS = {
    "precision": ["acc", "evals", "round", "compute"],
    "exact": ["acc", "evals", "up", "down", "total"],
    "hetlora": ["acc", "evals", "up", "down", "total"],
    "feddf": ["acc", "evals", "up", "down", "round", "distill", "distill_mb"],
}


def tables(out: Path, studies: list[str]) -> str:
    parts = []
    for study in studies:
        cols = COLUMNS[study]
        lines = [
            f"### {study}",
            "",
            "| run | " + " | ".join(HEADERS[c] for c in cols) + " |",
            "| --- |" + " ---: |" * len(cols),
        ]
        for name in RUNS[study]:
            path = out / "runs" / f"{study}-{name}.json"
            if path.is_file():
                run = json.loads(path.read_text())
                lines.append(_row(name, run["summary"], cols))
            else:
                lines.append(f"| {name} | " + " | ".join("not run" for _ in cols) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--studies", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--only", nargs="*", default=None, help="run only these run names")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = args.out.resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        from fedray.app.cli import compose
        from fedray.app.cluster import ray_session
        from fedray.app.run import run_experiment

        common = [
            f"tracking.uri=sqlite:///{out}/mlflow.db",
            "tracking.experiment=large",
            "tracking.log_model=false",
            *args.overrides,
        ]
        with ray_session(compose(common).cluster):
            for study in args.studies:
                for name, overrides in RUNS[study].items():
                    path = out / "runs" / f"{study}-{name}.json"
                    if path.is_file() or (args.only and name not in args.only):
                        continue
                    same = _same_run(out, overrides)
                    if same is not None:  # the same computation under another study's name
                        path.write_text(json.dumps({**same, "study": study, "name": name}))
                        continue
                    print(f"== {study}/{name}: {' '.join(overrides)}", flush=True)
                    t0 = time.perf_counter()
                    cfg = compose([*common, *overrides])
                    result = run_experiment(
                        cfg, out / "work" / name, cwd=out, run_name=f"{study}-{name}"
                    )
                    record = {
                        "study": study,
                        "name": name,
                        "overrides": overrides,
                        "wall_s": time.perf_counter() - t0,
                        "fingerprint": result.fingerprint,
                        "run_id": result.run_id,
                        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        "history": result.history,
                        "summary": summary(result.history),
                    }
                    path.write_text(json.dumps(record, indent=1))
                    (out / "RESULTS.md").write_text(report(out, args.studies))
    (out / "RESULTS.md").write_text(report(out, args.studies))
    print((out / "RESULTS.md").read_text())


def _same_run(out: Path, overrides: list[str]) -> dict | None:
    for path in sorted((out / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        if run["overrides"] == overrides:
            return run
    return None


def report(out: Path, studies: list[str]) -> str:
    return "\n".join(
        [
            "# Large-model studies on the main job",
            "",
            f"Command: `python experiments/large/study.py --studies {' '.join(studies)}`; "
            f"machine: {platform.machine()}, {platform.python_version()}; tables rebuilt "
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from {out / 'runs'}.",
            "",
            tables(out, studies),
            "",
        ]
    )


if __name__ == "__main__":
    main()
