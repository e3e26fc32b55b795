"""Sweep axes in Hydra's override grammar, read once for the sweep pre-check, the MLflow sweep
tags and `fedray tune`'s search space.

An axis is a key with several values: `key=a,b` or `choice(a,b)` (choices), `range(1,5)` (a
grid), `glob(fed*)` (config-group options), `interval(lo,hi)` (continuous; `tag(log, ...)` for
a log scale). Axes come from the command line and from the composed config's
`hydra.sweeper.params` (what `conf/experiment/` presets declare); the command line wins on a key
both name. Only an interval has no finite list of values: the pre-check validates its two ends.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedray.core.errors import ConfigError

MAX_COMBINATIONS = 256  # sweep combinations composed and validated up front
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the config groups (an editable install)


@dataclass(frozen=True)
class Axis:
    """One swept key: a finite list of override values, or an interval.

    Attributes:
        key: The config key (or group) as written in the override, with any `+`/`~` prefix.
        values: The override values as strings (choice, range, glob); empty for an interval.
        low, high: An interval's ends (inclusive).
        log: The interval is sampled on a log scale (`tag(log, interval(...))`).
        integer: Both interval ends are integers: sample integers.
        step: A `range(...)` grid's step (tune samples it as a stepped distribution).
    """

    key: str
    values: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    step: float | None = None

    @property
    def is_interval(self) -> bool:
        return self.low is not None

    def check_values(self) -> list[str]:
        """The values a pre-check composes: every listed value, or an interval's two ends."""
        if not self.is_interval:
            return list(self.values)
        ends = [self.low, self.high]
        return [str(int(v)) if self.integer else repr(float(v)) for v in ends]

    def describe(self) -> str:
        if self.is_interval:
            scale = "log " if self.log else ""
            return f"{self.key} in {scale}[{self.low:g}, {self.high:g}]"
        return f"{self.key} in {{{', '.join(self.values)}}}"


@dataclass
class Space:
    """A command line's (and preset's) fixed overrides plus its axes, in order."""

    fixed: list[str] = field(default_factory=list)
    axes: dict[str, Axis] = field(default_factory=dict)

    @property
    def size(self) -> int | None:
        """How many grid combinations (None when an axis is an interval)."""
        if any(a.is_interval for a in self.axes.values()):
            return None
        n = 1
        for axis in self.axes.values():
            n *= len(axis.values)
        return n

    def check_combinations(self, limit: int = MAX_COMBINATIONS) -> list[list[str]]:
        """Override lists to compose and validate: the grid (intervals at both ends), capped."""
        keys = list(self.axes)
        grids = [self.axes[k].check_values() for k in keys]
        out = []
        for values in itertools.islice(itertools.product(*grids), limit):
            pairs = zip(keys, values, strict=True)
            out.append([*self.fixed, *(f"{self.axes[k].key}={v}" for k, v in pairs)])
        return out or [list(self.fixed)]


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse_axis(override: Any, conf_dir: Path | None) -> Axis | None:
    """The axis of one parsed Hydra override, or None when it has a single value."""
    from hydra.core.override_parser.types import Glob, IntervalSweep, RangeSweep

    if not override.is_sweep_override():
        return None
    key, value = override.get_key_element(), override.value()
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if not (isinstance(low, int | float) and isinstance(high, int | float)) or low >= high:
            raise ConfigError(f"{key}=interval({low}, {high}): needs numbers with low < high")
        log = "log" in value.tags
        if log and low <= 0:
            raise ConfigError(f"{key}: a log-scale interval needs low > 0, got {low}")
        integer = isinstance(low, int) and isinstance(high, int)
        return Axis(key, low=low, high=high, log=log, integer=integer)
    if isinstance(value, Glob):
        group = override.key_or_group
        names = sorted(p.stem for p in (conf_dir / group).glob("*.yaml")) if conf_dir else []
        picked = value.filter(names)
        if not picked:
            raise ConfigError(f"{key}=glob(...): matches no option of conf/{group}/")
        return Axis(key, values=tuple(picked))
    values = tuple(override.sweep_string_iterator())
    if not values:
        raise ConfigError(f"{key}: the sweep lists no value")
    step = None
    if isinstance(value, RangeSweep) and not value.shuffle:
        step = value.step
    return Axis(key, values=values, step=step)


def parse_space(
    overrides: list[str], params: dict[str, str] | None = None, conf_dir: Path | None = CONF_DIR
) -> Space:
    """The fixed overrides and the axes of `params` (a preset's) then `overrides` (the CLI's)."""
    parser = _parser()
    space = Space()
    preset = [f"{k}={v}" for k, v in (params or {}).items()]
    cli_keys = set()
    for text in overrides:
        try:
            cli_keys.add(parser.parse_override(text).get_key_element().lstrip("+~"))
        except Exception:
            continue  # check_overrides names it
    for source, items in (("preset", preset), ("cli", overrides)):
        for text in items:
            try:
                parsed = parser.parse_override(text)
            except Exception as exc:
                raise ConfigError(f"{text}: not a valid sweep override ({_first(exc)})") from None
            key = parsed.get_key_element().lstrip("+~")
            if source == "preset" and key in cli_keys:
                continue  # the command line wins
            axis = parse_axis(parsed, conf_dir)
            if axis is None:
                space.fixed.append(text)
            else:
                space.axes[key] = axis
    return space


def job_values(job_overrides: list[str], axes: list[str]) -> dict[str, str]:
    """The value each axis takes in one job, from that job's override list."""
    parser = _parser()
    out: dict[str, str] = {}
    for text in job_overrides:
        try:
            parsed = parser.parse_override(text)
        except Exception:
            continue
        key = parsed.get_key_element().lstrip("+~")
        if key in axes and not parsed.is_sweep_override():
            out[key] = parsed.get_value_element_as_str()
    return out


def _first(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0].split("; See ")[0] if lines else type(exc).__name__


__all__ = ["MAX_COMBINATIONS", "Axis", "Space", "job_values", "parse_axis", "parse_space"]
