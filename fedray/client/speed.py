"""Heterogeneity simulation: per-client speed factors, realized as a delay after local training.

A client with speed factor f >= 1 takes f times its measured compute time: after training, the
actor sleeps (f - 1) * compute_s. Factors are a function of (run seed, client id, number of
clients) only, so the same clients are stragglers in sync and async runs with the same seed.

    none:           every factor is 1 (no delay)
    lognormal:      f = max(1, exp(sigma * z)), z ~ N(0, 1) per client (a delay can only slow a
                    client down, so the faster half of the lognormal runs at its real speed)
    slow_fraction:  exactly round(slow_fraction * N) clients, drawn without replacement, get
                    f = slowdown; the others f = 1
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedray.core.config import SpeedConfig
from fedray.core.registry import typed

KINDS = ("none", "lognormal", "slow_fraction")
_STREAM = 0x5BEED  # separates this stream from every other use of the run seed


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
