"""Sample-weighted averaging through a sum-only mechanism (secagg, he): the public weight cap
and the clipped flat update.

A client with weight ``w`` (its sample count) sends ``[(w/W) x, (w/W) R]``: the sum over any
set of clients gives ``sum w_i x_i / W`` and ``R sum w_i / W`` for exactly that set, so the
server divides the weighted sum by the weights of the clients that are in it.
"""

from __future__ import annotations

import numpy as np

from fedray.core.context import RoundContext
from fedray.core.errors import ConfigError
from fedray.core.types import State, StateSpec


def cohort_weight_cap(ctx: RoundContext, fixed: float | None) -> float:
    """W: `fixed`, else the largest sample count in the round's cohort (public in fedray)."""
    if fixed is not None:
        return float(fixed)
    sizes = ctx.run.client_sizes
    if not sizes:
        raise ConfigError("privacy.max_weight is required: this run does not know client sizes")
    return float(max(max(sizes[c] for c in ctx.cohort), 1))


def check_weight(weight: float, cap: float) -> None:
    """One line when a client's weight exceeds the round's public cap."""
    if not 0 <= weight <= cap:
        raise ValueError(
            f"weight {weight:g} is outside [0, W={cap:g}], the round's public cap; raise "
            "privacy.max_weight (or leave it null: the cohort's largest sample count)"
        )


def clipped_flat(delta: State, spec: StateSpec, clip_norm: float | None) -> np.ndarray:
    """The delta as one float64 vector in spec order, L2-clipped to `clip_norm` if set."""
    flat = spec.flatten(delta).astype(np.float64)
    if not np.isfinite(flat).all():
        raise ValueError("the update has NaN or infinite entries; it cannot be aggregated")
    if clip_norm is not None:
        norm = float(np.linalg.norm(flat))
        if norm > clip_norm:
            flat *= clip_norm / norm
    return flat


def weighted_vector(flat: np.ndarray, weight: float, cap: float, bound: float) -> np.ndarray:
    """``[(w/W) clip(x, -R, R), (w/W) R]`` in float64 (every entry in ``[-R, R]``)."""
    check_weight(weight, cap)
    w = weight / cap
    return np.append(w * np.clip(flat, -bound, bound), w * bound)


def split_weighted(total: np.ndarray, cap: float, bound: float) -> tuple[np.ndarray, float]:
    """(``sum w_i x_i``, ``sum w_i``) from the sum of :func:`weighted_vector` outputs."""
    return np.asarray(total[:-1]) * cap, float(total[-1]) / bound * cap
