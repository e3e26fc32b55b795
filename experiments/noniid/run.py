"""Studies that rank the algorithms: one command per study, every cell an MLflow run.

Usage (see README.md in this folder):

    python experiments/noniid/run.py STUDY [--seeds 0 1 2] [--out DIR] [--settings ...]
        [--algorithms ...] [--report-only] [override ...]

STUDY is one of :data:`STUDIES`: ``synthetic`` (FedProx's Synthetic(alpha, beta) with 0/50/90%
stragglers), ``digits`` (a ViT on scikit-learn's digits under Dirichlet 0.1 / 0.5 / IID),
``movielens`` (rating models, one client per user, with the central baseline), ``selection``
(power-of-choice vs uniform on Synthetic(1, 1)) and ``shakespeare`` (the LLM-scale workload of
the earlier table). A cell is (setting, algorithm, seed); all cells of a study run in one Ray
session, one after the other. Each is an MLflow run (experiment ``noniid-<study>``, store
``--out``/mlflow.db) tagged with its study, setting, algorithm and seed, with the usual
per-round metrics plus ``final_<metric>`` and ``rounds_to_target``. A cell that already has a
FINISHED run in the store is not run again, so an interrupted study continues where it stopped.
The report (mean and spread over seeds, rounds to target, a plot per setting) is rebuilt from the
store: ``--out``/<study>.md and ``--out``/plots/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Overrides = list[str]


@dataclass(frozen=True)
class Study:
    """A table: settings x algorithms x seeds, one metric ranked, a target for rounds-to-target."""

    title: str
    base: Overrides
    settings: dict[str, Overrides]
    algorithms: dict[str, Overrides]
    metric: str  # the MLflow key ranked (eval_accuracy, eval_rmse ...)
    higher_is_better: bool
    target: float
    columns: tuple[str, ...] = ()  # further final metrics shown (personalized metrics ...)
    window: int = 1  # the columns are the mean of their last `window` logged values
    skip: Callable[[str, str], str | None] = lambda setting, algorithm: None  # why not run
    curve: str | None = None  # a metric plotted instead of `metric` by the runs that logged it
    notes: tuple[str, ...] = field(default_factory=tuple)


def _synthetic_settings() -> dict[str, Overrides]:
    out = {}
    for ab in ("1", "0.5", "0"):
        for share in (0, 50, 90):
            out[f"synthetic({ab},{ab}) {share}% stragglers"] = [
                f"data.synthetic.alpha={ab}",
                f"data.synthetic.beta={ab}",
                f"speed.stragglers={share / 100:g}",
            ]
    return out


def _synthetic_skip(setting: str, algorithm: str) -> str | None:
    if algorithm == "fedprox (mu=0)" and " 0% " in setting:
        return "equals fedavg without stragglers"
    return None


ALGORITHMS_SGD: dict[str, Overrides] = {
    "fedavg": ["algorithm=fedavg"],
    "fedprox (mu=1)": ["algorithm=fedprox", "algorithm.mu=1"],
    "fedprox (mu=0)": ["algorithm=fedprox", "algorithm.mu=0"],
    "scaffold": ["algorithm=scaffold"],
    "fedadam": ["algorithm=fedadam", "algorithm.server_lr=0.03"],
    "fedavgm": ["algorithm=fedavgm"],
    "ditto": ["algorithm=ditto"],
    "fednova": ["algorithm=fednova"],
}
ALGORITHMS_ADAMW: dict[str, Overrides] = {
    "fedavg": ["algorithm=fedavg"],
    "fedprox (mu=0.01)": ["algorithm=fedprox", "algorithm.mu=0.01"],
    "scaffold": ["algorithm=scaffold"],
    "fedadam": ["algorithm=fedadam"],
    "fedavgm": ["algorithm=fedavgm"],
    "ditto": ["algorithm=ditto"],
}

# what the MovieLens studies rank and show
RATINGS: dict[str, Any] = {
    "metric": "eval_rmse",
    "higher_is_better": False,
    "target": 1.0,
    "columns": (
        "eval_hr10",
        "eval_ndcg10",
        "eval_personal_rmse",
        "eval_personal_hr10",
        "eval_personal_ndcg10",
    ),
}

STUDIES: dict[str, Study] = {
    "synthetic": Study(
        title="Synthetic(alpha, beta) with stragglers (FedProx's setting)",
        base=["experiment=synthetic"],
        settings=_synthetic_settings(),
        algorithms=ALGORITHMS_SGD,
        metric="eval_accuracy",
        higher_is_better=True,
        target=0.60,
        skip=_synthetic_skip,
    ),
    "digits": Study(
        title="ViT on scikit-learn's digits under label skew",
        # 30 rounds, half the preset's 60: the budget the 3-seed table was run with (2026-11-30)
        base=["experiment=digits", "mode.rounds=30"],
        settings={
            "dirichlet(0.1)": ["partition.alpha=0.1"],
            "dirichlet(0.5)": ["partition.alpha=0.5"],
            "iid": ["partition=iid", "partition.num_clients=20"],
        },
        algorithms={**ALGORITHMS_ADAMW, "fedper": ["algorithm=fedper"]},
        metric="eval_accuracy",
        higher_is_better=True,
        target=0.90,
        columns=("eval_personal_accuracy",),
        window=5,  # a round evaluates 10 of the 20 clients: average the last 5 rounds
        skip=lambda s, a: (
            "personalization table only" if a == "fedper" and s != "dirichlet(0.1)" else None
        ),
    ),
    "movielens": Study(
        title="MovieLens latest-small, one client per user",
        base=["experiment=movielens"],
        settings={"by user": []},
        algorithms={
            **ALGORITHMS_ADAMW,
            "fedper": ["algorithm=fedper", "algorithm.local_keys=[user]"],
            "central": ["experiment=movielens_central"],
        },
        **RATINGS,
    ),
    "movielens_l2": Study(
        title="MovieLens by user: FedPer against central training, per-rating L2",
        # Koren's per-rating L2 in place of AdamW's weight decay: a sum over ratings, so the
        # clients' objectives add up to the central one (weight decay scales with step counts)
        base=["experiment=movielens", "client.weight_decay=0", "model.arch.l2=0.1"],
        settings={"by user": []},
        algorithms={
            "fedper (item rows by lookups, 5 local epochs, 24 rounds)": [
                "algorithm=fedper",
                "algorithm.local_keys=[user]",
                "client.embedding_rows=lookups",
                "client.epochs=5",
                "mode.rounds=24",
            ],
            "central": ["experiment=movielens_central"],
        },
        **RATINGS,
        curve="eval_personal_rmse",  # FedPer's own models; central logs only eval_rmse
    ),
    "selection": Study(
        title="Client selection on Synthetic(1,1): power-of-choice vs uniform",
        base=["experiment=synthetic"],
        settings={"synthetic(1,1)": []},
        algorithms={
            "uniform": ["selection=uniform"],
            "power_of_choice (d=20)": ["selection=power_of_choice", "selection.d=20"],
            # pow-d proper: the candidates score the current global model before each round
            "power_of_choice (d=20, fresh losses)": [
                "selection=power_of_choice",
                "selection.d=20",
                "selection.loss=fresh",
            ],
            # the rule before 2026-12-01: size-proportional draw, then sample weights again
            "power_of_choice (d=20, sample weights)": [
                "selection=power_of_choice",
                "selection.d=20",
                "selection.weights=samples",
            ],
        },
        metric="eval_accuracy",
        higher_is_better=True,
        target=0.60,
    ),
    "shakespeare": Study(
        title="Shakespeare genre task, MiniLM + LoRA (the LLM-scale workload)",
        base=[
            "mode.rounds=6",
            "partition.num_clients=20",
            "mode.clients_per_round=3",
            "mode.eval_every=2",
            "data.max_test=150",
            "data.max_length=32",
            "client.batch_size=8",
            "client.max_steps=2",
            "client.round_stride=10000",
            "tracking.log_model=false",
        ],
        settings={
            "dirichlet(0.1)": ["partition=dirichlet", "partition.alpha=0.1"],
            "dirichlet(1.0)": ["partition=dirichlet", "partition.alpha=1.0"],
            "natural (roles)": ["partition=natural"],
        },
        algorithms={
            "fedavg": ["algorithm=fedavg"],
            "fedprox": ["algorithm=fedprox"],
            "scaffold": ["algorithm=scaffold"],
            "fedadam": ["algorithm=fedadam"],
        },
        metric="eval_accuracy",
        higher_is_better=True,
        target=0.30,
    ),
}


def personal_rmse(metrics: dict[str, float]) -> float | None:
    """sqrt of the clients' personal MSE: the RMSE over their pooled held-out rows. Since
    2026-12-01 fedray logs exactly that as eval_personal_rmse; stores written before logged the
    mean of per-client RMSEs (with one held-out rating per client, a mean absolute error), so
    the report recomputes it from eval_personal_loss, which was and is the pooled MSE."""
    loss = metrics.get("eval_personal_loss")
    return None if loss is None else math.sqrt(loss)


# -- running ---------------------------------------------------------------------------------


def cell_name(study: str, setting: str, algorithm: str, seed: int) -> str:
    return f"{study} | {setting} | {algorithm} | seed {seed}"


def rounds_to_target(history: list[tuple[int, float]], target: float, higher: bool) -> int | None:
    """The first evaluated round whose metric reaches `target` (None: never)."""
    for rnd, value in history:
        if (value >= target) if higher else (value <= target):
            return rnd
    return None


def run_study(name: str, args: argparse.Namespace) -> None:
    """Run every cell of the study that has no FINISHED run in the store yet."""
    from mlflow.tracking import MlflowClient

    from fedray.app.cli import compose
    from fedray.app.cluster import ray_session
    from fedray.app.run import run_experiment

    study = STUDIES[name]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out}/mlflow.db"
    tracking = [f"tracking.uri={uri}", f"tracking.experiment=noniid-{name}"]
    done = {r.info.run_name for r in finished_runs(uri, name)}
    cells = [  # seed by seed: a whole table per seed before the next seed starts
        (setting, algo, seed)
        for seed in args.seeds
        for setting in args.settings or study.settings
        for algo in args.algorithms or study.algorithms
        if study.skip(setting, algo) is None and cell_name(name, setting, algo, seed) not in done
    ]
    print(f"{name}: {len(cells)} cells to run ({len(done)} done)", flush=True)
    if not cells:
        return
    client = MlflowClient(uri)
    first = compose([*study.base, *tracking, *args.overrides])
    with ray_session(first.cluster):
        for setting, algo, seed in cells:
            overrides = [
                *study.base,
                *study.settings[setting],
                *study.algorithms[algo],
                f"seed={seed}",
                *tracking,
                *args.overrides,
            ]
            run_name = cell_name(name, setting, algo, seed)
            print(f"== {run_name}: {' '.join(overrides)}", flush=True)
            t0 = time.perf_counter()
            result = run_experiment(
                compose(overrides),
                out / "runs" / re.sub(r"[^A-Za-z0-9.=-]+", "_", run_name),
                cwd=out,
                run_name=run_name,
                tags={"study": name, "setting": setting, "algorithm": algo, "seed": str(seed)},
                out=None,
            )
            wall = time.perf_counter() - t0
            history = [(r["round"], r[study.metric]) for r in result.history if study.metric in r]
            reached = rounds_to_target(history, study.target, study.higher_is_better)
            if result.run_id:
                if history:
                    client.log_metric(result.run_id, f"final_{study.metric}", history[-1][1])
                if reached is not None:
                    client.log_metric(result.run_id, "rounds_to_target", reached)
                client.log_metric(result.run_id, "cell_wall_s", wall)
                client.set_tag(result.run_id, "target", str(study.target))
            last = history[-1][1] if history else math.nan
            print(
                f"   {study.metric}={last:.4f} rounds_to_target={reached} {wall:.0f} s", flush=True
            )


# -- reporting -------------------------------------------------------------------------------


@dataclass
class Cell:
    """One finished run as the report reads it."""

    setting: str
    algorithm: str
    seed: int
    curve: list[tuple[int, float]]
    final: dict[str, float]
    wall_s: float


def finished_runs(uri: str, study: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"noniid-{study}")
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'FINISHED'"
    )
    return [r for r in runs if r.data.tags.get("study") == study]


def read_cells(uri: str, name: str) -> list[Cell]:
    from mlflow.tracking import MlflowClient

    study = STUDIES[name]
    client = MlflowClient(uri)
    cells = []
    for run in finished_runs(uri, name):
        tags = run.data.tags
        history = client.get_metric_history(run.info.run_id, study.curve or study.metric)
        if not history:  # the run did not log the preferred curve (e.g. no personal models)
            history = client.get_metric_history(run.info.run_id, study.metric)
        curve = sorted((int(m.step), float(m.value)) for m in history if m.step > 0)
        final = dict(run.data.metrics)
        for key in (*study.columns, "eval_personal_loss"):
            values = [
                m.value
                for m in sorted(
                    client.get_metric_history(run.info.run_id, key), key=lambda m: m.step
                )
            ]
            if values:
                last = values[-study.window :]
                final[key] = sum(last) / len(last)
        if (rmse := personal_rmse(final)) is not None:
            final["eval_personal_rmse"] = rmse
        cells.append(
            Cell(
                tags["setting"],
                tags["algorithm"],
                int(tags["seed"]),
                curve,
                final,
                float(final.get("cell_wall_s", 0.0)),
            )
        )
    return cells


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4f} ± {std:.4f}"


def report(name: str, args: argparse.Namespace) -> str:
    """The study's markdown: command, settings, the table and the plots (written to --out)."""
    study = STUDIES[name]
    out = Path(args.out).resolve()
    uri = f"sqlite:///{out}/mlflow.db"
    cells = read_cells(uri, name)
    plots = plot_curves(name, cells, out / "plots")
    metric = study.metric.removeprefix("eval_")
    if study.curve is not None:
        metric = f"{study.curve.removeprefix('eval_')} where logged, else {metric}"
    header = [
        "setting",
        "algorithm",
        "seeds",
        f"final {metric} (mean ± sd)",
        f"rounds to {study.target:g} (mean; reached)",
        *(
            c.removeprefix("eval_") + (f" (last {study.window})" if study.window > 1 else "")
            for c in study.columns
        ),
        "wall s / run",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    order = {a: i for i, a in enumerate(study.algorithms)}
    settings = {s: i for i, s in enumerate(study.settings)}
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.setting, c.algorithm), []).append(c)
    for (setting, algo), group in sorted(
        groups.items(), key=lambda kv: (settings.get(kv[0][0], 99), order.get(kv[0][1], 99))
    ):
        finals = [c.curve[-1][1] for c in group if c.curve]
        reached = [
            r
            for c in group
            if (r := rounds_to_target(c.curve, study.target, study.higher_is_better)) is not None
        ]
        rtt = (
            f"{sum(reached) / len(reached):.0f}; {len(reached)}/{len(group)}"
            if reached
            else (f"-; 0/{len(group)}")
        )
        extra = [_mean_std([c.final[k] for c in group if k in c.final]) for k in study.columns]
        wall = sum(c.wall_s for c in group) / len(group)
        row = [setting, algo, str(len(group)), _mean_std(finals), rtt, *extra, f"{wall:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    body = [
        f"## {study.title}",
        "",
        f"Command: `python experiments/noniid/run.py {name} --seeds "
        f"{' '.join(map(str, args.seeds))}{''.join(' ' + o for o in args.overrides)}`  ",
        f"Report written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from {len(cells)} finished "
        f"runs; machine: {platform.machine()}, Python {platform.python_version()}.  ",
        f"Base: `{' '.join(study.base)}`; per setting: "
        + "; ".join(f"{s}: `{' '.join(o) or '-'}`" for s, o in study.settings.items())
        + ".  ",
        "Algorithms: "
        + "; ".join(f"{a}: `{' '.join(o)}`" for a, o in study.algorithms.items())
        + ".",
        "",
        *lines,
        "",
        *(f"![{s}]({p})" for s, p in plots.items()),
        "",
    ]
    text = "\n".join(body)
    (out / f"{name}.md").write_text(text)
    return text


def plot_curves(name: str, cells: list[Cell], folder: Path) -> dict[str, str]:
    """One PNG per setting: the metric against the round, mean over seeds, min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = STUDIES[name]
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for setting in study.settings:
        mine = [c for c in cells if c.setting == setting and c.curve]
        if not mine:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for algo in study.algorithms:
            curves = [dict(c.curve) for c in mine if c.algorithm == algo]
            if not curves:
                continue
            rounds = sorted(set.intersection(*(set(c) for c in curves)))
            values = [[c[r] for c in curves] for r in rounds]
            mean = [sum(v) / len(v) for v in values]
            (line,) = ax.plot(rounds, mean, label=f"{algo} ({len(curves)})")
            ax.fill_between(
                rounds,
                [min(v) for v in values],
                [max(v) for v in values],
                alpha=0.15,
                color=line.get_color(),
            )
        ax.axhline(study.target, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("round")
        ax.set_ylabel(study.metric if study.curve is None else f"{study.curve} or {study.metric}")
        ax.set_title(f"{name}: {setting}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        slug = re.sub(r"[^A-Za-z0-9.]+", "_", f"{name}-{setting}").strip("_")
        path = folder / f"{slug}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths[setting] = f"plots/{path.name}"
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="experiments/noniid/out")
    parser.add_argument("--settings", nargs="+", default=None, help="a subset of the settings")
    parser.add_argument("--algorithms", nargs="+", default=None, help="a subset of algorithms")
    parser.add_argument(
        "--report-only", action="store_true", help="only rebuild the report from the store"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_intermixed_args()  # overrides may follow the options
    study = STUDIES[args.study]
    for key, chosen, known in (
        ("--settings", args.settings, study.settings),
        ("--algorithms", args.algorithms, study.algorithms),
    ):
        unknown = sorted(set(chosen or []) - set(known))
        if unknown:
            parser.error(f"{key}: {unknown} not in {args.study}'s {sorted(known)}")
    if not args.report_only:
        run_study(args.study, args)
    print(report(args.study, args))


if __name__ == "__main__":
    main()
