"""Shared pieces of the sparsifiers: how many values each tensor keeps, magnitude selection, and
the mapping between kept positions and per-tensor segments."""

from __future__ import annotations

import numpy as np

from fedray.compression.lib.spec import StateSpec


def keep_counts(sizes: np.ndarray, fraction: float | None, k: int | None) -> np.ndarray:
    """Kept entries per unit of size `n`: `min(k, n)` if `k` is set, else `ceil(fraction n)`
    (at least 1 for a non-empty unit); `fraction n` is rounded to 6 decimals first so that
    e.g. `0.1 * 30` keeps 3, not 4."""
    sizes = np.asarray(sizes, np.int64)
    if k is not None:
        return np.minimum(sizes, int(k))
    want = np.ceil(np.round(float(fraction) * sizes, 6)).astype(np.int64)  # type: ignore[arg-type]
    return np.minimum(sizes, np.maximum(want, (sizes > 0).astype(np.int64)))


def largest(score: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the `k` largest entries of `score` (NaN counts as largest)."""
    n = score.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, np.int64)
    return np.sort(np.argpartition(score, n - k)[n - k :]).astype(np.int64)


def largest_per_tensor(score: np.ndarray, offsets: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Sorted flat positions of the `ks[t]` largest entries of each tensor `t` (loop over
    tensors, vectorised within)."""
    parts = [
        o + largest(score[o:e], int(kt))
        for o, e, kt in zip(offsets[:-1], offsets[1:], ks, strict=True)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def segments(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """How many of the sorted `positions` fall in each `[offsets[t], offsets[t+1])`."""
    return np.diff(np.searchsorted(positions, offsets)).astype(np.int64)


def row_layout(spec: StateSpec) -> tuple[np.ndarray, np.ndarray]:
    """(first global row of each tensor plus the total, row length of each tensor)."""
    rows = spec.rows
    row_offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    lengths = np.where(rows > 0, spec.sizes // np.maximum(rows, 1), 0).astype(np.int64)
    return row_offsets, lengths


def expand_rows(rows: np.ndarray, spec: StateSpec) -> tuple[np.ndarray, np.ndarray]:
    """Sorted global row ids -> (sorted flat positions of their elements, elements per tensor)."""
    row_offsets, lengths = row_layout(spec)
    owner = np.searchsorted(row_offsets, rows, side="right") - 1
    length = lengths[owner]
    start = spec.offsets[:-1][owner] + (rows - row_offsets[owner]) * length
    first = np.cumsum(length) - length
    total = int(length.sum())
    positions = np.repeat(start - first, length) + np.arange(total, dtype=np.int64)
    seg = np.bincount(owner, weights=length, minlength=len(spec.keys)).astype(np.int64)
    return positions.astype(np.int64), seg
