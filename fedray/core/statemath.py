"""Pure math on :data:`~fedray.core.types.State` dicts (numpy float32, no Ray, no I/O)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from fedray.core.types import Aggregate, Contribution, State


def check_same_keys(states: Sequence[State]) -> list[str]:
    """The shared key list of `states`, or ValueError naming the first mismatch."""
    if not states:
        raise ValueError("no states to aggregate")
    keys = list(states[0])
    for i, s in enumerate(states[1:], start=1):
        if s.keys() != states[0].keys():
            missing = sorted(set(keys) ^ set(s))[:3]
            raise ValueError(f"update {i} has different keys than update 0 (e.g. {missing})")
    return keys


_BLOCK = 1 << 16  # elements per block: the accumulator and one scaled block stay in L2 cache
_THREADED_MIN = 1 << 22  # elements read (updates x parameters) below which one thread is used
T = TypeVar("T")


def reduction_threads() -> int:
    """Threads for large reductions: the CPUs this process may run on, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def deal(work: Callable[[list[T]], None], items: list[T], threads: int) -> None:
    """work(part) for `items` dealt round-robin into `threads` parts, each part on its own
    thread (all in this thread when threads < 2); the first error is raised."""
    workers = min(threads, len(items))
    if workers < 2:
        work(items)
        return
    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(work, items[i::workers]) for i in range(workers)]:
            done.result()


def weighted_sum(
    states: Sequence[State], weights: Sequence[float], threads: int | None = None
) -> State:
    """sum_i weights[i] * states[i], key by key, accumulated in float32 in the given order.

    Large tensors are reduced block by block so the running sum stays in cache: every update is
    read from memory once, as in a single stacked reduction. Each element sees the same float32
    operations in the same order whatever the blocking, so the result does not depend on it, nor
    on `threads` (default: the usable CPUs, at most 8), to which the blocks are dealt when the
    job is large (numpy releases the GIL inside each block's arithmetic).
    """
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    keys = check_same_keys(states)
    ws = [np.float32(w) for w in weights]
    out: State = {k: np.empty(np.shape(states[0][k]), dtype=np.float32) for k in keys}
    # flat views, made once per key (a copy only for an update that is not contiguous)
    flat = {k: [np.asarray(s[k]).reshape(-1) for s in states] for k in keys}
    blocks = [
        (k, lo, min(lo + _BLOCK, out[k].size)) for k in keys for lo in range(0, out[k].size, _BLOCK)
    ]
    total = sum(v.size for v in out.values())
    workers = (threads or reduction_threads()) if total * len(states) >= _THREADED_MIN else 1
    deal(lambda part: _sum_blocks(flat, ws, out, part), blocks, workers)
    return out


def _sum_blocks(
    flat: dict[str, list[np.ndarray]],
    ws: list[np.float32],
    out: State,
    blocks: list[tuple[str, int, int]],
) -> None:
    """Fill out[k][lo:hi] = sum_i ws[i] * flat[k][i][lo:hi] for each block, in update order."""
    tmp = np.empty(_BLOCK, dtype=np.float32)
    for k, lo, hi in blocks:
        a, t, fs = out[k].reshape(-1)[lo:hi], tmp[: hi - lo], flat[k]
        np.multiply(fs[0][lo:hi], ws[0], out=a, dtype=np.float32)
        for f, w in zip(fs[1:], ws[1:], strict=True):
            np.multiply(f[lo:hi], w, out=t, dtype=np.float32)
            a += t


def sample_weights(num_samples: Sequence[int]) -> list[float]:
    """n_i / sum_j n_j; ValueError if the total is not positive."""
    total = float(sum(num_samples))
    if total <= 0:
        raise ValueError("updates carry no samples; cannot weight them")
    return [n / total for n in num_samples]


def add(a: State, b: State, scale: float = 1.0) -> State:
    """a + scale * b, key by key (float32)."""
    return {k: (a[k] + np.float32(scale) * b[k]).astype(np.float32, copy=False) for k in a}


def subtract(a: State, b: State) -> State:
    """a - b, key by key (float32)."""
    return {k: np.subtract(a[k], b[k], dtype=np.float32) for k in a}


def nbytes(state: State) -> int:
    """Bytes held by the arrays of a state."""
    return int(sum(v.nbytes for v in state.values()))


def mean_of(contributions: Sequence[Contribution]) -> Aggregate:
    """The plaintext aggregate of a cohort: the sample-weighted mean delta (FedAvg's
    ``sum_i (n_i / sum_j n_j) * delta_i`` in float32, in the given order) and the unweighted
    mean of the extra states (when the updates carry them).

    Tables whose rows the updates counted (``row_counts``, `client.embedding_rows=lookups`) are
    averaged row by row instead: :func:`row_weighted_mean`.
    """
    if not contributions:
        raise ValueError("no updates to aggregate")
    weights = sample_weights([c.num_samples for c in contributions])
    mean = weighted_sum([c.delta for c in contributions], weights)
    counted = [c.row_counts for c in contributions]
    if any(rc is not None for rc in counted):
        if any(rc is None for rc in counted):
            raise ValueError("some updates carry embedding row counts and some do not")
        none = (np.zeros(0, np.int64), np.zeros(0, np.float32))  # a table it never looked up
        for key in sorted(set().union(*counted)):  # type: ignore[arg-type]
            if key in mean:
                mean[key] = row_weighted_mean(
                    [c.delta[key] for c in contributions],
                    [rc.get(key, none) for rc in counted],  # type: ignore[union-attr]
                )
    extras = [c.extra for c in contributions]
    extra_mean = None
    if any(e is not None for e in extras):
        if any(e is None for e in extras):
            raise ValueError("some updates carry extra state and some do not")
        extra_mean = weighted_sum(extras, [1.0 / len(extras)] * len(extras))  # type: ignore[arg-type]
    total = float(sum(c.num_samples for c in contributions))
    return Aggregate(mean, total, len(contributions), extra_mean)


def row_weighted_mean(
    deltas: Sequence[np.ndarray], counts: Sequence[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Row r of the result is ``sum_i c_ir * delta_i[r] / sum_i c_ir`` over the updates that
    counted row r (`counts[i]` = (rows, their counts)); rows nobody counted get 0 (no move).

    Accumulated in float64 in update order, returned as float32.
    """
    shape = np.shape(deltas[0])
    num = np.zeros(shape, dtype=np.float64)
    den = np.zeros(shape[0], dtype=np.float64)
    for delta, (rows, cnt) in zip(deltas, counts, strict=True):
        if len(rows) and (rows.min() < 0 or rows.max() >= shape[0]):
            raise ValueError(f"row counts name rows outside [0, {shape[0]})")
        if len(np.unique(rows)) != len(rows) or len(cnt) != len(rows) or (cnt < 0).any():
            raise ValueError("row counts must name distinct rows with non-negative counts")
        w = cnt.astype(np.float64).reshape((-1,) + (1,) * (len(shape) - 1))
        num[rows] += w * np.asarray(delta, dtype=np.float64)[rows]
        den[rows] += cnt
    seen = den > 0
    num[seen] /= den[seen].reshape((-1,) + (1,) * (len(shape) - 1))
    return num.astype(np.float32)


def split_local(state: State, patterns: list[str]) -> tuple[State, State]:
    """(shared part, local part): keys containing one of `patterns` are local.

    ValueError if either part would be empty (FedPer and any personalization by parameter
    group: the local part never leaves its client).
    """
    local = {k: v for k, v in state.items() if any(p in k for p in patterns)}
    shared = {k: v for k, v in state.items() if k not in local}
    if not local:
        example = next(iter(state), "none")
        raise ValueError(
            f"local_keys={patterns} match no trainable key (keys look like {example!r}); "
            "name a substring of the head's keys, e.g. classifier"
        )
    if not shared:
        raise ValueError(f"local_keys={patterns} match every trainable key; nothing is shared")
    return shared, local
