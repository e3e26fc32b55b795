"""The options of `privacy=dp_fedavg` (:mod:`fedray.privacy.dp_fedavg`) and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedray.core.registry import entry
from fedray.privacy.lib.accounting import DEFAULT_VALUE_DISCRETIZATION, FIXED_SIZE, POISSON
from fedray.privacy.lib.clipping import DEFAULT_COUNT_NOISE_FRACTION

ACCOUNTABLE = {"poisson": POISSON, "fixed": FIXED_SIZE}  # selector sampling -> accountant


@dataclass
class DpFedAvgOptions:
    """Options of `privacy=dp_fedavg`."""

    name: str = "dp_fedavg"
    noise_multiplier: float | None = None  # z; 0 = clipping only (epsilon = inf)
    target_epsilon: float | None = None  # calibrate z for mode.rounds rounds instead
    delta: float | None = None  # null: 1 / population^1.1
    max_epsilon: float | None = None  # stop cleanly before a round that would spend more
    clip: float = 0.1  # L2 clip norm C of a client's update (the initial C when adaptive)
    adaptive: bool = False  # track the target quantile of update norms (Andrew et al. 2021)
    target_quantile: float = 0.5  # the median: the paper's default across tasks
    clip_learning_rate: float = 0.2  # geometric step of the adaptive clip (the paper's 0.2)
    count_noise_std: float | None = None  # sigma_b of the bit count; null: cohort / 20
    min_clip: float | None = None  # adaptive: C never falls below this (null: no bound)
    max_clip: float | None = None  # adaptive: C never grows past this (null: no bound)
    weighting: str = "uniform"  # uniform (w_i = 1) | capped (w_i = min(n_i / weight_cap, 1))
    weight_cap: float = 0.0  # capped: samples at which a client's weight reaches 1
    accounting_resolution: float = DEFAULT_VALUE_DISCRETIZATION  # PLD grid; coarser = faster

    def check(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                "noise_multiplier: set exactly one of privacy.noise_multiplier (z) and "
                "privacy.target_epsilon (z calibrated for mode.rounds rounds)"
            )
        z, eps = self.noise_multiplier, self.target_epsilon
        if z is not None and not (math.isfinite(z) and z >= 0):
            raise ValueError(f"noise_multiplier={z} must be a finite number >= 0")
        if eps is not None and not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"target_epsilon={eps} must be a finite number > 0")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"delta={self.delta} must be in (0, 1); typical: 1/population^1.1")
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ValueError(f"max_epsilon={self.max_epsilon} must be > 0 (null: no limit)")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip={self.clip} must be a finite number > 0")
        if not 0 < self.target_quantile < 1:
            raise ValueError(f"target_quantile={self.target_quantile} must be in (0, 1)")
        if not self.clip_learning_rate > 0:
            raise ValueError(f"clip_learning_rate={self.clip_learning_rate} must be > 0")
        if self.count_noise_std is not None and not self.count_noise_std >= 0:
            raise ValueError(f"count_noise_std={self.count_noise_std} must be >= 0")
        self._check_bounds()
        if self.weighting not in ("uniform", "capped"):
            raise ValueError(f"weighting={self.weighting!r}: use uniform or capped")
        if (self.weighting == "capped") != (self.weight_cap > 0):
            raise ValueError(
                f"weight_cap={self.weight_cap}: set it > 0 with weighting=capped (w_i = "
                "min(n_i / weight_cap, 1)) and leave it 0 with weighting=uniform"
            )
        if not 0 < self.accounting_resolution <= 0.1:
            raise ValueError(f"accounting_resolution={self.accounting_resolution} not in (0, 0.1]")

    def _check_bounds(self) -> None:
        """min_clip / max_clip: positive, ordered, around the initial clip, adaptive only."""
        low, high = self.min_clip, self.max_clip
        for key, bound in (("min_clip", low), ("max_clip", high)):
            if bound is None:
                continue
            if not (math.isfinite(bound) and bound > 0):
                raise ValueError(f"{key}={bound} must be a finite number > 0 (null: no bound)")
            if not self.adaptive:
                raise ValueError(
                    f"{key}={bound} bounds the adaptive clip, but privacy.adaptive=false keeps C "
                    "fixed at privacy.clip; set privacy.adaptive=true or leave it null"
                )
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_clip={low} must be <= max_clip={high}")
        if not (low or 0.0) <= self.clip <= (high or math.inf):
            raise ValueError(
                f"clip={self.clip}, the adaptive clip's start, must lie in [min_clip, max_clip] "
                f"= [{low}, {high}]"
            )

    def count_std(self, expected_cohort: float) -> float:
        """sigma_b, the noise of the adaptive clip's bit count."""
        if self.count_noise_std is not None:
            return self.count_noise_std
        return DEFAULT_COUNT_NOISE_FRACTION * expected_cohort

    def check_against(self, spec: Any) -> str | None:
        """Combinations that would break the guarantee, refused before anything starts."""
        me = f"name={self.name}"
        algo = entry("algorithm", spec.algorithm.name).factory
        algorithm = f"algorithm={spec.algorithm.name}"
        selection = spec.selection.name
        sampling = entry("selection", selection).factory.sampling
        if spec.mode.name != "sync":
            return f"{me} needs mode=sync: async merges single updates, there is no round to noise"
        if algo.requires_individual_updates:
            return f"{me} cannot run with {algorithm}, which reads individual updates: use fedavg"
        if algo.sends_extra:
            return (
                f"{me} cannot run with {algorithm}, whose clients send extra state in the "
                "clear beside the clipped update; use fedavg, fedprox or a server optimizer"
            )
        if sampling not in ACCOUNTABLE:
            return (
                f"{me} cannot account selection={selection} (sampling={sampling}): only "
                "uniformly drawn cohorts are covered; use selection=poisson or selection=uniform"
            )
        if spec.mode.max_norm_ratio > 0:
            return (
                f"{me} with mode.max_norm_ratio={spec.mode.max_norm_ratio}: screening updates "
                "against the cohort's median lets one client change which others are summed; "
                "set mode.max_norm_ratio=0 (the clip bounds every update)"
            )
        if spec.mode.min_clients != 1:
            return (
                f"{me} releases every round, whatever the number of updates (skipping one "
                f"would reveal the cohort size): mode.min_clients={spec.mode.min_clients} "
                "would not apply; leave it at 1"
            )
        z = self.noise_multiplier
        sigma_b = self.count_std(spec.mode.clients_per_round)
        if self.adaptive and z and not sigma_b > z / 2:
            return (
                f"count_noise_std={sigma_b:g} must exceed noise_multiplier / 2 = {z / 2:g} or the "
                "adaptive clip's count spends the whole budget; raise privacy.count_noise_std"
            )
        return None
