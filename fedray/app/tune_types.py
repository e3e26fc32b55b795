"""`fedray tune`'s options and results, and the Optuna distribution of a search-space axis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedray.app.space import Axis
from fedray.core.errors import ConfigError

INTERRUPTED = "fedray_interrupted"  # user attr of a trial a killed session left RUNNING


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
