"""A `fedray tune` study's storage (Optuna, resumable), its MLflow parent run and its table."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedray.app.space import Space
from fedray.app.tune_types import (
    INTERRUPTED,
    StudyResult,
    TuneOptions,
    override_value,
)
from fedray.core.errors import ConfigError


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


def parent_run(spec: Any, study_dir: Path, name: str, space: Space, options: TuneOptions):
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


def close_study(parent: Any, result: StudyResult, study: Any, key: str) -> None:
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


def print_table(result: StudyResult, key: str, out: Callable[[str], None]) -> None:
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
