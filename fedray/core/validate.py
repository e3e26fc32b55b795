"""Checks on client updates before aggregation: reject what would corrupt the global state."""

from __future__ import annotations

import numpy as np

from fedray.core.types import Contribution, State


def update_problem(delta: State, reference: State) -> str | None:
    """One line naming the first key that makes `delta` unusable against `reference`, or None."""
    for label, keys in (
        ("missing key", set(reference) - set(delta)),
        ("unexpected key", set(delta) - set(reference)),
    ):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            return f"{label} {min(keys)!r}{more}"
    for key, ref in reference.items():
        arr = delta[key]
        if not isinstance(arr, np.ndarray):
            return f"key {key!r}: expected a numpy array, got {type(arr).__name__}"
        if arr.shape != ref.shape:
            return f"key {key!r}: shape {arr.shape} but the global state has {ref.shape}"
        if arr.dtype != ref.dtype:
            return f"key {key!r}: dtype {arr.dtype} but the global state has {ref.dtype}"
        if arr.dtype.kind == "f" and not _all_finite(arr):
            bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
            return f"key {key!r}: {bad} of {arr.size} values are NaN or Inf"
    return None


def _all_finite(arr: np.ndarray) -> bool:
    """True iff no NaN/Inf; for float32 and narrower, via one float64 sum (no boolean copy)."""
    if arr.dtype.itemsize <= 4:
        # a float64 sum of float32 values cannot overflow: it is finite iff every value is
        return bool(np.isfinite(np.sum(arr, dtype=np.float64)))
    return bool(np.isfinite(arr).all())


def split_valid(
    contributions: list[Contribution], reference_state: State
) -> tuple[list[Contribution], list[tuple[int, str]]]:
    """Split into (usable contributions, [(client_id, one-line reason)]), both in input order.

    An update is rejected if its delta has NaN/Inf values, keys missing from or not in
    `reference_state` (the global state), or an array whose shape or dtype differs from it.
    """
    valid: list[Contribution] = []
    rejected: list[tuple[int, str]] = []
    for c in contributions:
        problem = update_problem(c.delta, reference_state)
        if problem is None:
            valid.append(c)
        else:
            rejected.append((c.client_id, problem))
    return valid, rejected


def check_like(state: State, reference: State, what: str) -> None:
    """ValueError unless `state` has exactly the keys and shapes of `reference`."""
    if set(state) != set(reference):
        diff = sorted(set(state) ^ set(reference))[:3]
        raise ValueError(f"{what}: keys differ from the global state (e.g. {diff})")
    for key, ref in reference.items():
        if np.shape(state[key]) != np.shape(ref):
            raise ValueError(
                f"{what}: key {key!r} has shape {np.shape(state[key])}, "
                f"the global state has {np.shape(ref)}"
            )


def update_norm(delta: State) -> float:
    """The L2 norm of a whole delta (all keys together), accumulated in float64."""
    return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in delta.values())))


def norm_outliers(
    contributions: list[Contribution], max_ratio: float
) -> tuple[list[Contribution], list[tuple[int, str]]]:
    """Split off updates whose norm exceeds `max_ratio` x the median norm of `contributions`.

    `max_ratio` <= 0 turns the check off. Use on updates that passed :func:`split_valid`
    (finite values), so every norm is finite.
    """
    if max_ratio <= 0 or len(contributions) < 2:
        return list(contributions), []
    norms = [update_norm(c.delta) for c in contributions]
    median = float(np.median(norms))
    kept: list[Contribution] = []
    rejected: list[tuple[int, str]] = []
    for c, norm in zip(contributions, norms, strict=True):
        if norm > max_ratio * median:
            rejected.append(
                (c.client_id, f"norm {norm:.4g} > {max_ratio:g} x the median norm {median:.4g}")
            )
        else:
            kept.append(c)
    return kept, rejected
