"""`fedray tune`'s loop without Ray: pruning within one round, no batch barrier, resuming a
study from its sqlite storage, per-trial resources."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedray.app.space import parse_space
from fedray.app.tune import run_study, trial_resources
from fedray.app.tune_study import open_study
from fedray.app.tune_types import TuneOptions
from fedray.core.errors import ConfigError

ROUNDS = 5


class FakeRunner:
    """A trial whose objective at every round is its sampled x; the first trial is slow."""

    def __init__(self) -> None:
        self.calls: dict[str, dict] = {}
        self.lock = threading.Lock()

    def __call__(self, overrides, run_dir, run_name, tags, on_round):
        x = float(overrides[0].split("=")[1])
        slow = run_name == "trial-0"
        record = {"start": time.monotonic(), "stopped_at": None}
        with self.lock:
            self.calls[run_name] = record
        ran, stop = 0, None
        for rnd in range(1, ROUNDS + 1):
            time.sleep(0.3 if slow else 0.01)
            ran = rnd
            stop = on_round(rnd, {"eval_accuracy": x, "train_loss": 1.0})
            if stop:
                record["stopped_at"] = rnd
                break
        record["end"] = time.monotonic()
        return x, ran, stop


def _study(tmp_path: Path, **kw):
    options = TuneOptions(trials=8, concurrency=2, startup_trials=2, warmup_rounds=0, **kw)
    study = open_study(options, "t", tmp_path, "maximize", seed=0)
    return options, study


def test_pruned_trials_stop_within_one_round_and_no_batch_barrier(tmp_path: Path) -> None:
    options, study = _study(tmp_path)
    space = parse_space(["x=interval(0.0,1.0)"])
    runner = FakeRunner()
    lines: list[str] = []
    result = run_study(
        study, space, runner, options, ROUNDS, tmp_path, {}, "eval_accuracy", lines.append
    )
    assert len(result.trials) == 8 and len(study.trials) == 8
    pruned = [t for t in result.trials if t.state == "PRUNED"]
    assert pruned, lines
    for t in pruned:  # stopped at the very round whose report the pruner rejected
        call = runner.calls[f"trial-{t.number}"]
        assert call["stopped_at"] == t.rounds_run < ROUNDS
    assert result.rounds_saved == sum(ROUNDS - t.rounds_run for t in pruned) > 0
    assert result.rounds_run + result.rounds_saved == ROUNDS * 8
    # no barrier: while slow trial 0 ran, the other worker went through several trials
    slow = runner.calls["trial-0"]
    during = [c for n, c in runner.calls.items() if n != "trial-0" and c["end"] < slow["end"]]
    assert len(during) >= 2


def test_study_resumes_and_reruns_an_interrupted_trial(tmp_path: Path) -> None:
    options, study = _study(tmp_path, pruner="none")
    options.trials = 3
    space = parse_space(["x=interval(0.0,1.0)"])
    run_study(study, space, FakeRunner(), options, ROUNDS, tmp_path, {}, "eval_accuracy")
    interrupted = study.ask()  # left RUNNING, as by a killed session
    interrupted.suggest_float("x", 0.0, 1.0)
    options2, again = _study(tmp_path, pruner="none")
    options2.trials = 5
    runner = FakeRunner()
    result = run_study(again, space, runner, options2, ROUNDS, tmp_path, {}, "eval_accuracy")
    states = [t.state.name for t in again.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 5
    assert len(result.trials) == 2  # 3 finished before, 5 wanted; the FAIL does not count
    assert result.trials[0].params["x"] == interrupted.params["x"]  # re-run first


def test_a_study_keeps_its_direction(tmp_path: Path) -> None:
    _study(tmp_path)
    with pytest.raises(ConfigError, match="created to maximize"):
        open_study(TuneOptions(), "t", tmp_path, "minimize", seed=0)


@dataclass
class _Client:
    num_cpus: float = 2.0
    num_gpus: float = 0.0
    num_actors: int | None = None


@pytest.mark.parametrize(
    ("cpus", "gpus", "k", "client", "expected"),
    [
        (
            2,
            0,
            2,
            _Client(),
            ["client.num_actors=1", "client.num_cpus=1", "client.torch_threads=1"],
        ),
        (
            8,
            0,
            2,
            _Client(),
            ["client.num_actors=2", "client.num_cpus=2", "client.torch_threads=2"],
        ),
        (
            2,
            0,
            4,
            _Client(),
            ["client.num_actors=1", "client.num_cpus=0.5", "client.torch_threads=1"],
        ),
        (
            16,
            4,
            2,
            _Client(num_cpus=1, num_gpus=1),
            ["client.num_actors=2", "client.num_cpus=1", "client.torch_threads=1"],
        ),
        (
            8,
            0,
            1,
            _Client(num_actors=3),
            ["client.num_actors=3", "client.num_cpus=2", "client.torch_threads=2"],
        ),
    ],
)
def test_trial_resources_fit_the_share(cpus, gpus, k, client, expected) -> None:
    assert trial_resources(cpus, gpus, k, client) == expected


def test_trial_resources_refuse_a_share_too_small() -> None:
    with pytest.raises(ConfigError, match=r"GPUs, less than client\.num_gpus=1"):
        trial_resources(8, 1, 2, _Client(num_cpus=1, num_gpus=1))


@pytest.mark.parametrize(
    ("override", "low", "high", "log", "kind"),
    [
        ("lr=tag(log,interval(1e-4,1e-2))", 1e-4, 1e-2, True, float),
        ("k=interval(1,8)", 1, 8, False, int),
        ("n=range(2,10,2)", 2, 8, False, int),
    ],
)
def test_axes_become_optuna_distributions(override, low, high, log, kind) -> None:
    from fedray.app.tune_types import distribution

    [axis] = parse_space([override]).axes.values()
    dist = distribution(axis)
    sample = dist.to_external_repr(dist.to_internal_repr(low))
    assert (dist.low, dist.high) == (low, high) and isinstance(sample, kind)
    assert getattr(dist, "log", log) == log or type(dist).__name__.startswith("Log")


def test_choice_axis_is_categorical_and_space_errors_are_one_line() -> None:
    from fedray.app.tune_types import distribution

    [axis] = parse_space(["partition.alpha=0.1,1.0"]).axes.values()
    assert list(distribution(axis).choices) == ["0.1", "1.0"]
    with pytest.raises(ConfigError, match=r"needs low > 0"):
        parse_space(["lr=tag(log,interval(0.0,1.0))"])
    with pytest.raises(ConfigError, match=r"low < high"):
        parse_space(["lr=interval(1.0,0.5)"])
