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

import math
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedray.app.console import VerbParser, fail
from fedray.app.space import Space
from fedray.app.tune_study import close_study, open_study, parent_run, print_table
from fedray.app.tune_types import (
    INTERRUPTED,
    StudyResult,
    TrialRecord,
    TuneOptions,
    distribution,
    override_value,
)
from fedray.core.errors import ConfigError, FedrayError

# Runs one trial: (overrides, run_dir, run_name, tags, on_round) -> (objective, rounds run, stop).
Runner = Callable[[list[str], Path, str, dict[str, str], Any], tuple[float, int, str | None]]


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
        parent = parent_run(spec, study_dir, name, space, options)
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
        close_study(parent, result, study, objective.key)
    print_table(result, objective.key, out)
    return result


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
