"""Heterogeneity simulation: slow clients (time) and stragglers that do less work (work).

Time. A client with speed factor f >= 1 takes f times its measured compute time: after
training, the actor sleeps (f - 1) * compute_s. Factors are a function of (run seed, client id,
number of clients) only, so the same clients are slow in sync and async runs with the same seed.

    none:           every factor is 1 (no delay)
    lognormal:      f = max(1, exp(sigma * z)), z ~ N(0, 1) per client (a delay can only slow a
                    client down, so the faster half of the lognormal runs at its real speed)
    slow_fraction:  exactly round(slow_fraction * N) clients, drawn without replacement, get
                    f = slowdown; the others f = 1

Work (systems heterogeneity as Li et al. 2020 simulate it for FedProx, Sec. 5.2). In every
round, exactly round(stragglers * |cohort|) of the round's clients, drawn from (seed, round),
straggle: they run x local epochs, x uniform in 1..E-1, instead of E (with E = 1: x steps,
uniform in 1..S-1, of the S steps an epoch takes, capped by `client.max_steps`). A client that
cannot do less (E = 1 and S = 1) is no straggler. In async mode there is no round cohort: each
job straggles with probability `stragglers`. What becomes of a straggler's partial update is
`speed.partial_work`: `keep` (FedProx), `drop` (FedAvg: the client counts as failed, with the
reason), `auto` (the algorithm's `keeps_partial_work`: fedprox and fednova keep, the others drop).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from fedray.core.config import SpeedConfig
from fedray.core.registry import typed

KINDS = ("none", "lognormal", "slow_fraction")
PARTIAL_WORK = ("auto", "keep", "drop")
_STREAM = 0x5BEED  # separates this stream from every other use of the run seed
_WORK_STREAM = 0x57A661  # the straggler draws
R = TypeVar("R")  # a client Recipe (kept generic: this module must not import torch)


def speed_config(node: Any) -> SpeedConfig:
    """The `speed` node as a SpeedConfig (see :func:`fedray.core.registry.typed`)."""
    return typed(SpeedConfig, node, "speed")


def check_speed(s: SpeedConfig) -> str | None:
    """One line naming the first bad `speed.*` key and a fix, or None."""
    if s.kind not in KINDS:
        return f"speed.kind={s.kind!r} is unknown; use one of {', '.join(KINDS)}"
    if s.sigma < 0:
        return f"speed.sigma={s.sigma} must be >= 0"
    if not 0 <= s.slow_fraction <= 1:
        return f"speed.slow_fraction={s.slow_fraction} must be in [0, 1]"
    if s.slowdown < 1:
        return f"speed.slowdown={s.slowdown} must be >= 1 (a delay cannot speed a client up)"
    if not 0 <= s.stragglers <= 1:
        return f"speed.stragglers={s.stragglers} must be in [0, 1] (a share of each round)"
    if s.partial_work not in PARTIAL_WORK:
        return f"speed.partial_work={s.partial_work!r} is unknown; use {', '.join(PARTIAL_WORK)}"
    return None


def speed_factors(s: SpeedConfig, num_clients: int, seed: int) -> np.ndarray:
    """Factor per client id (float64, all >= 1), seeded from the run seed."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM]))
    if s.kind == "none":
        return np.ones(num_clients)
    if s.kind == "lognormal":
        return np.maximum(1.0, np.exp(s.sigma * rng.standard_normal(num_clients)))
    if s.kind == "slow_fraction":
        factors = np.ones(num_clients)
        n_slow = round(s.slow_fraction * num_clients)
        factors[rng.permutation(num_clients)[:n_slow]] = s.slowdown
        return factors
    raise ValueError(check_speed(s) or s.kind)


def delay_s(factor: float, compute_s: float) -> float:
    """Seconds a client with `factor` sleeps after `compute_s` seconds of real training."""
    return max(0.0, (factor - 1.0) * compute_s)


class Straggled(RuntimeError):
    """A straggler's partial update that the run drops (the client counts as failed)."""


@dataclass(frozen=True)
class Work:
    """Which jobs straggle and how much local work they do (see the module docstring)."""

    stragglers: float
    keep: bool  # partial updates are sent (True) or dropped (False)
    policy: str  # how `keep` was decided, for the drop message
    seed: int

    @classmethod
    def of(cls, s: SpeedConfig, seed: int, algorithm: str, keeps_partial_work: bool) -> Work:
        """The work plan of a run; `keeps_partial_work` is the algorithm's own policy."""
        if s.partial_work == "auto":
            keep, policy = keeps_partial_work, f"algorithm={algorithm}"
        else:
            keep, policy = s.partial_work == "keep", f"speed.partial_work={s.partial_work}"
        return cls(float(s.stragglers), keep, policy, int(seed))

    def straggles(self, round: int, client_id: int, cohort: Sequence[int]) -> bool:
        """Whether `client_id` straggles in `round` (exactly round(share * |cohort|) do)."""
        if self.stragglers <= 0:
            return False
        if not cohort:  # async: no round cohort, one draw per job
            rng = np.random.default_rng([self.seed, _WORK_STREAM, round, client_id])
            return bool(rng.random() < self.stragglers)
        members = sorted(cohort)
        rng = np.random.default_rng([self.seed, _WORK_STREAM, round])
        count = math.floor(self.stragglers * len(members) + 0.5)
        chosen = {members[i] for i in rng.permutation(len(members))[:count]}
        return client_id in chosen

    def recipe(self, recipe: R, round: int, client_id: int, cohort: Sequence[int], n: int) -> R:
        """The recipe this job runs: `recipe`, or less of it for a straggler whose partial
        update is kept; raises :class:`Straggled` when it is dropped. `n`: samples held."""
        if not self.straggles(round, client_id, cohort):
            return recipe
        r: Any = recipe
        rng = np.random.default_rng([self.seed, _WORK_STREAM, round, client_id, 1])
        if r.epochs > 1:
            did, of, unit = int(rng.integers(1, r.epochs)), int(r.epochs), "epochs"
            changed = dataclasses.replace(r, epochs=did)
        else:
            steps = max(1, math.ceil(n / r.batch_size))
            steps = min(steps, r.max_steps) if r.max_steps else steps
            if steps <= 1:
                return recipe  # nothing smaller than one step
            did, of, unit = int(rng.integers(1, steps)), steps, "steps"
            changed = dataclasses.replace(r, max_steps=did)
        if not self.keep:
            raise Straggled(
                f"client {client_id} straggled ({did} of {of} local {unit}); {self.policy} "
                "drops partial updates"
            )
        return changed
