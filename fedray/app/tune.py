"""`fedray tune`: an Optuna study driven by fedray itself, with round-level pruning.

Hydra's Optuna sweeper cannot prune (hydra #1954) and, with n_jobs > 1, waits for the slowest
trial of each batch (hydra #3091). Here Optuna's ask/tell loop runs in `--concurrency` worker
threads over one Ray cluster: a worker asks for a trial as soon as its previous one ends (no
batch barrier), each round's objective is reported to the pruner through
:func:`fedray.app.run.run_experiment`'s round hook, and a pruned trial's driver and actors are
killed before its next round. Every trial's client actors fit its share of the cluster
(`client.num_actors` and `client.num_cpus` are set per trial), so trials never compete for the
same cores.

The search space is written in Hydra's override grammar (`key=a,b`, `range(...)`,
`interval(lo,hi)`, `tag(log, interval(lo,hi))`) on the command line, or declared by a preset as
`hydra.sweeper.params`; it is composed and validated (every choice, each interval's ends) before
the first trial. The objective and its direction are the task's (`Task.objective`). The study
lives in `<dir>/optuna.db`; running the same command again resumes it (trials left RUNNING by an
interrupted session are re-run with the same parameters). The study is one MLflow parent run,
each trial a child run tagged with its parameters and its Optuna state.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedray.app.console import VerbParser, fail
from fedray.app.space import Axis, Space
from fedray.core.errors import ConfigError, FedrayError

INTERRUPTED = "fedray_interrupted"  # user attr of a trial a killed session left RUNNING
# Runs one trial: (overrides, run_dir, run_name, tags, on_round) -> (objective, rounds run, stop).
Runner = Callable[[list[str], Path, str, dict[str, str], Any], tuple[float, int, str | None]]


@dataclass
class TuneOptions:
    """What `fedray tune` was asked for (its flags)."""

    trials: int = 8
    concurrency: int = 2
    pruner: str = "median"
    startup_trials: int = 2
    warmup_rounds: int = 1
    study: str | None = None
    dir: str | None = None
    seed: int | None = None

    def check(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials={self.trials} must be >= 1")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency={self.concurrency} must be >= 1")
        if self.pruner not in ("median", "none"):
            raise ConfigError(f"--pruner={self.pruner!r}: use median or none")
        if self.startup_trials < 0 or self.warmup_rounds < 0:
            raise ConfigError("--startup-trials and --warmup-rounds must be >= 0")


@dataclass
class TrialRecord:
    """One trial as the study ended it."""

    number: int
    params: dict[str, Any]
    state: str  # COMPLETE | PRUNED | FAIL
    value: float
    rounds_run: int
    started: float
    ended: float
    error: str = ""


@dataclass
class StudyResult:
    """The trials this session ran, and what pruning saved."""

    direction: str
    rounds: int  # rounds a full trial runs
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def rounds_run(self) -> int:
        return sum(t.rounds_run for t in self.trials)

    @property
    def rounds_saved(self) -> int:
        """Rounds pruned trials did not run (a full trial runs `rounds`)."""
        return sum(self.rounds - t.rounds_run for t in self.trials if t.state == "PRUNED")


def distribution(axis: Axis) -> Any:
    """The Optuna distribution of an axis (Float/IntDistribution on Optuna >= 3, else 2.x's)."""
    import optuna.distributions as d

    if not axis.is_interval and (axis.step is None or len(axis.values) < 2):
        return d.CategoricalDistribution(list(axis.values))
    if axis.is_interval:
        assert axis.low is not None and axis.high is not None
        low, high, step = axis.low, axis.high, None
        integer = axis.integer
    else:  # range(start, stop, step): a stepped grid
        low, high, step = float(axis.values[0]), float(axis.values[-1]), float(axis.step or 1)
        integer = all(v.lstrip("-").isdigit() for v in axis.values)
    if hasattr(d, "FloatDistribution"):  # Optuna >= 3
        if integer:
            return d.IntDistribution(int(low), int(high), log=axis.log, step=int(step or 1))
        return d.FloatDistribution(float(low), float(high), log=axis.log, step=step)
    if integer:
        if axis.log:
            return d.IntLogUniformDistribution(int(low), int(high))
        return d.IntUniformDistribution(int(low), int(high), step=int(step or 1))
    if axis.log:
        return d.LogUniformDistribution(float(low), float(high))
    if step is not None:
        return d.DiscreteUniformDistribution(float(low), float(high), step)
    return d.UniformDistribution(float(low), float(high))


def override_value(value: Any) -> str:
    """A sampled value as a Hydra override value."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def trial_resources(cpus: float, gpus: float, concurrency: int, client: Any) -> list[str]:
    """Overrides that fit one trial's client actors into 1/concurrency of the cluster."""
    share_cpu, share_gpu = cpus / concurrency, gpus / concurrency
    num_cpus = min(float(client.num_cpus), share_cpu)
    if num_cpus < 0.01:
        raise ConfigError(
            f"--concurrency={concurrency} leaves each trial {share_cpu:g} of the cluster's "
            f"{cpus:g} CPUs; lower --concurrency"
        )
    actors = int(share_cpu // num_cpus + 1e-9)
    if client.num_gpus > 0:
        if share_gpu < client.num_gpus:
            raise ConfigError(
                f"--concurrency={concurrency} leaves each trial {share_gpu:g} GPUs, less than "
                f"client.num_gpus={client.num_gpus:g}; lower --concurrency or client.num_gpus"
            )
        actors = min(actors, int(share_gpu // client.num_gpus + 1e-9))
    if client.num_actors is not None:
        actors = min(actors, int(client.num_actors))
    threads = max(1, int(num_cpus))
    return [
        f"client.num_actors={max(1, actors)}",
        f"client.num_cpus={num_cpus:g}",
        f"client.torch_threads={threads}",
    ]


def run_study(
    study: Any,
    space: Space,
    runner: Runner,
    options: TuneOptions,
    rounds: int,
    study_dir: Path,
    base_tags: dict[str, str],
    objective_key: str,
    out: Callable[[str], None] = print,
) -> StudyResult:
    """Ask/tell over `options.concurrency` workers until the study holds `options.trials`
    finished trials; prune through the runner's round hook."""
    import optuna
    from optuna.trial import TrialState

    lock = threading.Lock()
    result = StudyResult(direction=study.direction.name.lower(), rounds=rounds)
    dists = {key: distribution(axis) for key, axis in space.axes.items()}
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    done = sum(
        t.state in finished and not t.user_attrs.get(INTERRUPTED)
        for t in study.get_trials(deepcopy=False)
    )
    budget = [max(0, options.trials - done)]
    errors: list[BaseException] = []

    def ask() -> Any | None:
        with lock:
            if budget[0] <= 0:
                return None
            budget[0] -= 1
            trial = study.ask()
            for key, dist in dists.items():
                trial._suggest(key, dist)
            return trial

    def work() -> None:
        while (trial := ask()) is not None:
            try:
                result.trials.append(one_trial(trial))
            except BaseException as exc:  # surfaced by the main thread
                errors.append(exc)
                return

    def one_trial(trial: Any) -> TrialRecord:
        params = dict(trial.params)
        overrides = [f"{space.axes[k].key}={override_value(v)}" for k, v in params.items()]
        rounds_seen, pruned = [0], [False]

        def on_round(rnd: int, metrics: dict[str, float]) -> str | None:
            rounds_seen[0] = rnd
            value = metrics.get(objective_key)
            if value is None or not math.isfinite(value):
                return None
            with lock:
                trial.report(float(value), rnd)
                # the last round completes the trial: nothing left to save by pruning it
                prune = rnd < rounds and trial.should_prune()
            line = f"trial {trial.number} round {rnd}: {objective_key}={value:.4f}"
            out(line + (" -> pruned" if prune else ""))
            pruned[0] = prune
            return f"pruned by the {options.pruner} pruner after round {rnd}" if prune else None

        tags = {
            **base_tags,
            "fedray.trial": str(trial.number),
            **{f"sweep.{k}": override_value(v) for k, v in params.items()},
        }
        started = time.time()
        out(f"trial {trial.number} starts: {' '.join(overrides)}")
        state, error, value, ran = "COMPLETE", "", math.nan, 0
        try:
            value, ran, _stop = runner(
                overrides,
                study_dir / f"trial_{trial.number:04d}",
                f"trial-{trial.number}",
                tags,
                on_round,
            )
            ran = ran or rounds_seen[0]
            if pruned[0]:
                state = "PRUNED"
            elif not math.isfinite(value):
                state, error = "FAIL", f"{objective_key} was never evaluated (NaN)"
        except FedrayError as exc:
            state, error, ran = "FAIL", str(exc).splitlines()[0], rounds_seen[0]
        except Exception as exc:
            state, error, ran = "FAIL", f"{type(exc).__name__}: {exc}", rounds_seen[0]
        with lock:
            if state == "COMPLETE":
                study.tell(trial, value)
            else:
                study.tell(trial, state=getattr(TrialState, state))
        shown = "" if math.isnan(value) else f" {objective_key}={value:.4f}"
        out(
            f"trial {trial.number} {state.lower()} after {ran} rounds{shown}"
            + (f": {error}" if error else "")
        )
        return TrialRecord(trial.number, params, state, value, ran, started, time.time(), error)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workers = [threading.Thread(target=work, daemon=True) for _ in range(options.concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        while w.is_alive():  # short joins: SIGTERM / Ctrl-C reach the main thread
            w.join(timeout=0.5)
    if errors:
        raise errors[0]
    result.trials.sort(key=lambda t: t.number)
    return result


def _is_hydra(override: str) -> bool:
    return override.lstrip("+~").startswith("hydra")


def _parse(args: list[str]) -> tuple[TuneOptions, list[str]]:
    parser = VerbParser(
        prog="fedray tune",
        description="Optuna study over a search space in Hydra's override grammar, trials "
        "running concurrently on one Ray cluster, each pruned after any round whose objective "
        "is worse than the median of earlier trials at that round.",
        epilog="Example: fedray tune --trials 8 'client.lr=tag(log,interval(1e-4,1e-2))' "
        "partition.alpha=0.1,1.0 mode.rounds=6.  A preset's hydra.sweeper.params also "
        "declare axes (fedray tune experiment=noniid).",
    )
    o = TuneOptions()
    parser.add_argument("--trials", type=int, default=o.trials, help="finished trials in all")
    parser.add_argument(
        "--concurrency", type=int, default=o.concurrency, help="trials at once (cluster share)"
    )
    parser.add_argument("--pruner", default=o.pruner, help="median | none")
    parser.add_argument(
        "--startup-trials", type=int, default=o.startup_trials, help="trials never pruned"
    )
    parser.add_argument(
        "--warmup-rounds", type=int, default=o.warmup_rounds, help="rounds never pruned"
    )
    parser.add_argument("--study", default=None, help="study name (default: the config's name)")
    parser.add_argument("--dir", default=None, help="study directory (default: tune/STUDY)")
    parser.add_argument("--seed", type=int, default=None, help="TPE seed (default: seed=...)")
    parser.add_argument("overrides", nargs="*", help="search space and fixed config overrides")
    ns = parser.parse_args(args)
    opts = TuneOptions(
        trials=ns.trials,
        concurrency=ns.concurrency,
        pruner=ns.pruner,
        startup_trials=ns.startup_trials,
        warmup_rounds=ns.warmup_rounds,
        study=ns.study,
        dir=ns.dir,
        seed=ns.seed,
    )
    return opts, list(ns.overrides)


def main(args: list[str]) -> None:
    """`fedray tune [OPTIONS] OVERRIDES...`."""
    options, overrides = _parse(args)
    try:
        tune(options, overrides)
    except FedrayError as exc:
        fail(str(exc))


def tune(options: TuneOptions, overrides: list[str], out: Callable[[str], None] = print) -> Any:
    """Validate the space, open the study and its MLflow parent run, run the trials."""
    import os

    from fedray.app.cli import compose, sweep_space
    from fedray.app.cluster import ray_session
    from fedray.app.preflight import check_overrides, check_tracking_uri
    from fedray.app.spec import build_spec
    from fedray.core import registry

    options.check()
    check_overrides(overrides)
    space = sweep_space(overrides)
    if not space.axes:
        raise ConfigError(
            "fedray tune needs a search space: sweep at least one key, e.g. "
            "'client.lr=tag(log,interval(1e-4,1e-2))' or partition.alpha=0.1,1.0"
        )
    fixed = [o for o in space.fixed if not _is_hydra(o)]
    if not any(o.lstrip("+").startswith("mode.eval_every=") for o in fixed):
        fixed.append("mode.eval_every=1")  # the pruner judges a trial at each evaluation
    spec = build_spec(compose(fixed))
    checked = space.check_combinations()
    for combo in checked:  # every choice and each interval's ends, before any trial
        build_spec(compose([*fixed, *(o for o in combo if not _is_hydra(o))]))
    if spec.tracking.enabled:
        check_tracking_uri(spec.tracking.uri)
    task = registry.build("task", {"name": spec.data.task})
    objective = task.objective
    name = options.study or spec.name
    study_dir = Path(options.dir or Path("tune") / name).absolute()
    out(
        f"tune: study {name!r} in {study_dir}: {options.trials} trials, {options.concurrency} at "
        f"a time, {objective.direction} {objective.key}; "
        + "; ".join(a.describe() for a in space.axes.values())
        + f" ({len(checked)} configurations validated)"
    )
    with ray_session(spec.cluster):
        import ray

        res = ray.cluster_resources()
        per_trial = trial_resources(
            res.get("CPU", 0.0), res.get("GPU", 0.0), options.concurrency, spec.client
        )
        out(f"tune: each trial gets {' '.join(per_trial)} (cluster: {res.get('CPU', 0):g} CPUs)")
        study = open_study(options, name, study_dir, objective.direction, spec.seed)
        parent = _parent_run(spec, study_dir, name, space, options)
        tags = {"mlflow.parentRunId": parent.run_id} if parent.run_id else {}
        tags["fedray.tune_study"] = name

        def runner(trial_overrides, run_dir, run_name, trial_tags, on_round):
            from fedray.app.run import run_experiment

            cfg = compose([*fixed, *trial_overrides, *per_trial])
            res = run_experiment(
                cfg,
                run_dir,
                cwd=os.getcwd(),
                run_name=run_name,
                tags={**trial_tags, "fedray.overrides": " ".join(trial_overrides)},
                out=None,
                on_round=on_round,
            )
            ran = int(res.history[-1]["round"]) if res.history else 0
            return res.metric, ran, res.stop_reason

        try:
            result = run_study(
                study,
                space,
                runner,
                options,
                spec.mode.rounds,
                study_dir,
                tags,
                objective.key,
                out,
            )
        except BaseException as exc:
            parent.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        _close(parent, result, study, objective.key)
    _print_table(result, objective.key, out)
    return result


def open_study(options: TuneOptions, name: str, study_dir: Path, direction: str, seed: int):
    """The study at `<study_dir>/optuna.db` (created or resumed), TPE seeded, median pruner."""
    import optuna
    from optuna.trial import TrialState

    from fedray.app.optuna_storage import rdb_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = rdb_storage(f"sqlite:///{study_dir}/optuna.db")
    sampler = optuna.samplers.TPESampler(seed=options.seed if options.seed is not None else seed)
    pruner: Any = optuna.pruners.NopPruner()
    if options.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=options.startup_trials, n_warmup_steps=options.warmup_rounds
        )
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction=direction,
            load_if_exists=True,
        )
    except ValueError:  # optuna refuses to load a study under another direction
        study = optuna.load_study(study_name=name, storage=storage)
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"the study {name!r} in {study_dir} was created to {study.direction.name.lower()}, "
            f"this task's objective is to {direction}; use another --study or --dir"
        )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # an interrupted session's trial: failed, not counted, and its parameters run first
        optuna.trial.Trial(study, stale._trial_id).set_user_attr(INTERRUPTED, True)
        study.tell(stale.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(stale.params))
    return study


def _parent_run(spec: Any, study_dir: Path, name: str, space: Space, options: TuneOptions):
    """The study's MLflow parent run: resumed from `<dir>/fedray_tune.json`, else created."""
    import os

    from fedray.tracking.tracker import Tracker

    study_dir.mkdir(parents=True, exist_ok=True)
    info_file = study_dir / "fedray_tune.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    tracker = Tracker(spec.tracking, os.getcwd())
    tags = {
        "fedray.sweep_axes": ",".join(space.axes),
        "fedray.sweeper": "fedray tune",
        "fedray.tune_study": name,
        "fedray.sweep_dir": str(study_dir),
    }
    previous = info.get("parent_run_id") if info.get("tracking_uri") == tracker.uri else None
    tracker.start(run_name=f"{name}-tune", tags=tags if not previous else None, run_id=previous)
    if not previous:
        tracker.log_params(
            {
                "trials": options.trials,
                "concurrency": options.concurrency,
                "pruner": options.pruner,
                "startup_trials": options.startup_trials,
                "warmup_rounds": options.warmup_rounds,
            }
        )
    info_file.write_text(json.dumps({"parent_run_id": tracker.run_id, "tracking_uri": tracker.uri}))
    return tracker


def _close(parent: Any, result: StudyResult, study: Any, key: str) -> None:
    from fedray.app.sweep import JobRecord, SweepState, close_parent

    if not parent.active:
        return
    state = SweepState(parent_run_id=parent.run_id)
    state.axes = sorted({k for t in result.trials for k in t.params})
    state.jobs = [JobRecord(t.number, [], t.state != "FAIL", t.error) for t in result.trials]
    metrics = {
        "rounds_run": float(result.rounds_run),
        "rounds_saved": float(result.rounds_saved),
        "trials_pruned": float(sum(t.state == "PRUNED" for t in result.trials)),
    }
    try:
        best = study.best_trial
        metrics[f"best_{key}"] = float(best.value)
        parent.set_tags(
            {"fedray.best_trial": str(best.number), "fedray.best_params": json.dumps(best.params)}
        )
    except ValueError:  # no completed trial yet
        pass
    close_parent(parent, state, metrics)


def _print_table(result: StudyResult, key: str, out: Callable[[str], None]) -> None:
    keys = sorted({k for t in result.trials for k in t.params})
    out(f"{'trial':>6} {'state':>9} {'rounds':>7} {key:>14}  " + "  ".join(keys))
    for t in result.trials:
        value = "-" if math.isnan(t.value) else f"{t.value:.4f}"
        params = "  ".join(override_value(t.params.get(k, "")) for k in keys)
        out(f"{t.number:>6} {t.state:>9} {t.rounds_run:>7} {value:>14}  {params}")
    pruned = sum(t.state == "PRUNED" for t in result.trials)
    full = result.rounds * len(result.trials)
    out(
        f"tune: {len(result.trials)} trials ({pruned} pruned) ran {result.rounds_run} of "
        f"{full} rounds; pruning saved {result.rounds_saved} rounds"
    )


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
