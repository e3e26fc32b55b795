"""Privacy-utility table: final accuracy at epsilon in {inf, 8, 4, 1} on the Shakespeare genre task.

Usage (one command):

    python experiments/privacy/utility.py [--rounds 30] [--cohort 50] [--out DIR] [override ...]

Every row uses the same seed, data, model and budget: the natural partition by speaking role
(1,222 clients of at most 8 speeches, as `experiment=w2`), Poisson sampling of an expected
`--cohort` clients per round for `--rounds` rounds, one local SGD step per client, FedAvgM on the
server, the main job's adapter (LoRA r=8 on layers 3-5 plus the head), 32 tokens, and three
evaluations on the 600 test speeches. Only `privacy` changes:

- `dp_fedavg` (client-level, add/remove one client, PLD accounting of Poisson rounds, adaptive
  clipping at the median update norm) with noise_multiplier 0 (clipping only: epsilon = inf, the
  non-private reference of the same pipeline) and with z calibrated to epsilon 8, 4, 1;
- `ddp` (distributed DP: discrete Gaussian shares under secure aggregation) calibrated to
  epsilon 8 with a fixed clip, the one the dp_fedavg epsilon=8 row ended at. Its epsilon gets no
  amplification by sampling (the server cannot hide who was in the sum), so it needs more noise
  than dp_fedavg for the same epsilon;
- `dp_sgd` (sample-level, per client): z chosen so that the client that trains most often in this
  schedule (it is fixed by the seed, independent of the data) ends at epsilon 8, with
  `privacy.max_epsilon=8` as the guard. Its epsilon protects one speech of a client, not the
  whole client: a different unit of privacy, in the same column for the budget only.

All runs share one Ray session. Each row is an MLflow run (experiment `privacy-utility`, store
under --out) with the summary metric `final_accuracy`; a summary run holds the table and the plot
of accuracy against epsilon (`accuracy_vs_epsilon.png`, also written to --out). The table goes to
--out/RESULTS.md and stdout. A finished row is also saved as --out/rows/NAME.json: the same
command run again skips the rows it finds there, so an interrupted table resumes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
DELTA = 1e-5
# The initial dp_fedavg clip; adaptive clipping then follows the median update norm. Two-round
# probes of this recipe clipped 100% of the updates at 0.1, 30-37% at 0.3 and none at 1.0.
CLIP = 0.25


def budget(rounds: int, cohort: int) -> list[str]:
    """The shared settings: W2's data, the main job's adapter, SGD clients, a server momentum."""
    return [
        "experiment=w2",  # natural partition (1,222 role clients of <= 8), batch 8: one step
        "selection=poisson",
        f"mode.rounds={rounds}",
        f"mode.clients_per_round={cohort}",
        f"mode.eval_every={max(1, rounds // 3)}",  # three evaluations: a curve, not one point
        "data.max_length=32",  # half W2's 64 tokens: half the compute, the genre still shows
        # The main job's adapter (LoRA r=8 on every projection of layers 3-5, head and pooler
        # trained in full): 316k values per update. W2's query/value adapter without the head
        # did not leave the majority class in 30 rounds.
        "model.lora.target_modules=[query,key,value,dense]",
        "model.lora.modules_to_save=[classifier,pooler]",
        "model.lora.layers=[3,4,5]",
        # SGD on the clients: one step each, so the mean of the updates is the cohort's
        # large-batch gradient. AdamW's first step is ~lr * sign(gradient) per coordinate, and
        # a mean of signs from single-genre clients only swung between genres (30-round pilots,
        # AdamW 3e-3 / 1e-2: eval loss above ln 6). Server momentum (FedAvgM 0.9) as in
        # McMahan et al. 2018's DP-FedAvg experiments; clipping and noise act before it.
        "client.optimizer=sgd",
        "client.momentum=0",
        "client.weight_decay=0",
        "client.lr=0.1",
        "algorithm=fedavgm",
        "client.num_cpus=1",  # two 1-CPU actors on a 2-core box
        "tracking.experiment=privacy-utility",
        "tracking.log_model=false",
    ]


@dataclass
class Row:
    """One finished run."""

    name: str
    mechanism: str
    target: float  # the epsilon the row was set up for (inf: no noise)
    epsilon: float  # the epsilon the run logged at its end (dp_sgd: the largest client's)
    noise_multiplier: float
    clip: float  # dp_fedavg: the adaptive clip after the last round; ddp: its fixed clip
    final_accuracy: float
    eval_loss: float
    train_loss: float
    wall_s: float
    run_id: str | None
    load: float = 0.0  # the 1-minute load average when the row started (timings need context)


def dp_sgd_noise(cfg, target: float, rounds: int, cohort: int) -> tuple[float, int]:
    """z such that every client's DP-SGD accountant ends at <= `target` in this run's schedule,
    and the most jobs any client gets. The schedule is `selection=poisson`'s (seed, round) coins,
    the steps per job opacus' Poisson batches over the client's samples."""
    from fedray.core import registry
    from fedray.data import build_federated_data
    from fedray.privacy.lib.accounting import calibrate_noise_multiplier

    data = build_federated_data(cfg.data, cfg.partition, cfg.seed)
    sizes = data.client_sizes()
    selector = registry.build(
        "selection", {"name": "poisson"}, num_clients=len(sizes), seed=cfg.seed
    )
    jobs = np.zeros(len(sizes), int)
    for rnd in range(1, rounds + 1):
        jobs[selector.select(rnd, cohort)] += 1
    batch, epochs = int(cfg.client.batch_size), int(cfg.client.epochs)
    worst: dict[tuple[float, int], int] = {}  # (rate, steps in the run) -> clients
    for n, k in zip(sizes, jobs, strict=True):
        if k:
            batches = -(-int(n) // batch)  # opacus: rate 1 / batches, int(batches) steps/epoch
            key = (1.0 / batches, int(k) * epochs * int(1.0 / (1.0 / batches)))
            worst[key] = worst.get(key, 0) + 1
    z = max(
        calibrate_noise_multiplier(
            target, DELTA, steps, sampling_rate=rate, value_discretization_interval=1e-3
        )
        for rate, steps in worst
    )
    return z, int(jobs.max())


def table(rows: list[Row]) -> str:
    lines = [
        "| row | privacy | epsilon (target) | epsilon (logged) | noise multiplier | clip | "
        "final accuracy | test loss | train loss (last round) | wall (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        target = "-" if r.mechanism == "none" else _eps(r.target)
        logged = "-" if r.mechanism == "none" else _eps(r.epsilon)
        clip = "-" if math.isnan(r.clip) else f"{r.clip:.4g}"
        train = "hidden" if math.isnan(r.train_loss) else f"{r.train_loss:.4f}"  # secure sums
        lines.append(
            f"| {r.name} | {r.mechanism} | {target} | {logged} | {r.noise_multiplier:.4g} | "
            f"{clip} | {r.final_accuracy:.4f} | {r.eval_loss:.4f} | {train} | "
            f"{r.wall_s:.0f} |"
        )
    return "\n".join(lines)


def _eps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"


def plot(rows: list[Row], path: Path, majority: float) -> None:
    """Final accuracy against epsilon (log axis; inf drawn at the right edge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    finite = [r.target for r in rows if math.isfinite(r.target)] or [1.0]
    inf_x = max(finite) * 4
    style = {
        "dp_fedavg": ("o-", "client-level DP-FedAvg"),
        "ddp": ("^", "distributed DP (client-level, no amplification)"),
        "dp_sgd": ("s", "sample-level DP-SGD"),
    }
    for mech, (marker, label) in style.items():
        mine = sorted((r for r in rows if r.mechanism == mech), key=lambda r: r.target)
        if mine:
            xs = [inf_x if math.isinf(r.target) else r.target for r in mine]
            ax.plot(xs, [r.final_accuracy for r in mine], marker, label=label)
    for r in rows:
        if r.mechanism == "none":
            ax.axhline(r.final_accuracy, color="grey", ls="--", label="non-private")
    ax.axhline(majority, color="red", ls=":", label=f"majority class ({majority:.3f})")
    ax.set_xscale("log")
    ticks = sorted(set(finite))
    ax.set_xticks([*ticks, inf_x], [*(f"{t:g}" for t in ticks), "inf"])
    ax.set_xlabel("epsilon (delta = 1e-5)")
    ax.set_ylabel("test accuracy after the last round")
    ax.set_title("Shakespeare genre, 1,222 role clients, Poisson cohorts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cohort", type=int, default=50, help="expected clients per round")
    parser.add_argument(
        "--with-none", action="store_true", help="also run privacy=none (a sixth run)"
    )
    parser.add_argument("--out", default=str(HERE / "out"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()

    import mlflow
    from mlflow.tracking import MlflowClient

    from fedray.app.cli import compose
    from fedray.app.cluster import ray_session
    from fedray.app.run import run_experiment

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out}/mlflow.db"
    common = [*budget(args.rounds, args.cohort), f"tracking.uri={uri}", *args.overrides]
    base = compose(common)
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    z_sgd, most_jobs = dp_sgd_noise(base, 8.0, args.rounds, args.cohort)
    print(
        f"dp_sgd: z = {z_sgd:.4f} keeps every client <= epsilon 8 ({most_jobs} jobs at most; "
        f"calibrated in {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    fedavg = [
        "privacy=dp_fedavg",
        "privacy.adaptive=true",
        f"privacy.clip={CLIP}",
        f"privacy.delta={DELTA}",
    ]
    plan: list[tuple[str, str, float, list[str]]] = [
        *(
            [("none", "none", math.inf, ["privacy=none", "mode.on_quorum_loss=skip"])]
            * args.with_none
        ),
        ("dp_fedavg eps=inf", "dp_fedavg", math.inf, [*fedavg, "privacy.noise_multiplier=0"]),
        *(
            (f"dp_fedavg eps={e:g}", "dp_fedavg", e, [*fedavg, f"privacy.target_epsilon={e}"])
            for e in (8.0, 4.0, 1.0)
        ),
        # Poisson cohorts of ~50 (sd ~7): at least 30 (60%) shares in every released sum; the
        # clip is filled in from the dp_fedavg eps=8 row below.
        (
            "ddp eps=8",
            "ddp",
            8.0,
            [
                "privacy=ddp",
                "privacy.noise_multiplier=null",
                "privacy.target_epsilon=8",
                f"privacy.min_shares={max(1, int(0.6 * args.cohort))}",
                f"privacy.max_clients={2 * args.cohort}",  # a Poisson cohort can exceed --cohort
                f"privacy.delta={DELTA}",
            ],
        ),
        (
            "dp_sgd eps=8",
            "dp_sgd",
            8.0,
            ["privacy=dp_sgd", f"privacy.noise_multiplier={z_sgd}", "privacy.max_epsilon=8"],
        ),
    ]
    rows: list[Row] = []
    client = MlflowClient(uri)
    with ray_session(base.cluster):
        for name, mech, target, overrides in plan:
            ddp_clip = math.nan
            if mech == "ddp":  # the clip the dp_fedavg eps=8 row ended at (it runs earlier)
                ddp_clip = next(r.clip for r in rows if r.name == "dp_fedavg eps=8")
                overrides = [*overrides, f"privacy.clip_norm={ddp_clip:.6g}"]
            full = [*common, *overrides]
            slug = name.replace(" ", "_").replace("=", "")
            saved = out / "rows" / f"{slug}.json"
            if saved.is_file() and (done := json.loads(saved.read_text()))["overrides"] == full:
                rows.append(Row(**done["row"]))  # finished by an earlier invocation: resume
                print(f"== {name}: done earlier ({saved})", flush=True)
                continue
            print(f"== {name}", flush=True)
            start, load = time.perf_counter(), os.getloadavg()[0]
            result = run_experiment(
                compose(full),
                out / "runs" / slug,
                cwd=out,
                run_name=name,
                tags={"study": "privacy-utility", "privacy": mech},
            )
            last = result.history[-1]
            clip = ddp_clip if mech == "ddp" else float(last.get("clip", math.nan))
            eps = float(last.get("epsilon", math.inf)) if mech != "none" else math.inf
            row = Row(
                name,
                mech,
                target,
                eps,
                float(last.get("noise_multiplier", last.get("privacy_noise_multiplier", 0.0))),
                clip if mech in ("dp_fedavg", "ddp") else math.nan,
                result.metric,
                float(last.get("eval_loss", math.nan)),
                float(last.get("train_loss", math.nan)),
                time.perf_counter() - start,
                result.run_id,
                load,
            )
            rows.append(row)
            saved.parent.mkdir(exist_ok=True)
            saved.write_text(json.dumps({"overrides": full, "row": asdict(row)}))
            if result.run_id:
                client.log_metric(result.run_id, "final_accuracy", result.metric)
            print(table([row]).splitlines()[-1], flush=True)
            (out / "RESULTS.md").write_text(report(rows, args, started, common, z_sgd, most_jobs))
    majority = 171 / 600  # histories: the largest genre of the 600 test speeches
    png = out / "accuracy_vs_epsilon.png"
    plot(rows, png, majority)
    text = report(rows, args, started, common, z_sgd, most_jobs)
    (out / "RESULTS.md").write_text(text)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("privacy-utility")
    with mlflow.start_run(run_name="summary", tags={"study": "privacy-utility"}):
        mlflow.log_artifact(str(png))
        mlflow.log_text(text, "RESULTS.md")
        for r in rows:
            key = r.name.replace(" ", "_").replace("=", "_")
            mlflow.log_metric(f"final_accuracy_{key}", r.final_accuracy)
    print(text)


def report(
    rows: list[Row],
    args: argparse.Namespace,
    started: dt.datetime,
    common: list[str],
    z_sgd: float,
    most_jobs: int,
) -> str:
    """RESULTS.md: command, date, machine, settings and the table."""
    command = "python experiments/privacy/utility.py " + " ".join(
        [f"--rounds {args.rounds}", f"--cohort {args.cohort}"]
        + ["--with-none"] * args.with_none
        + list(args.overrides)
    )
    total = sum(r.wall_s for r in rows)
    load = os.getloadavg()[0] if not rows else rows[0].load
    load_text = "" if math.isnan(load) else f", load average {load:.1f} at the start"
    return "\n".join(
        [
            "# Privacy-utility table (Shakespeare genre task, 6 classes)",
            "",
            f"Command: `{command}`  ",
            f"Started: {started:%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, 2 CPUs, "
            f"Python {platform.python_version()}{load_text}.  ",
            f"Shared settings: `{' '.join(o for o in common if not o.startswith('tracking.uri'))}`"
            f"; dp_fedavg adaptive clip from {CLIP} (median), delta {DELTA}; "
            f"dp_sgd z = {z_sgd:.4f} (max_grad_norm 1, "
            f"at most {most_jobs} jobs for one client), delta {DELTA}.",
            "",
            table(rows),
            "",
            f"Total wall {total / 60:.1f} min for {len(rows)} runs.",
        ]
    )


if __name__ == "__main__":
    main()
