"""Pure aggregation math on :data:`~fedray.types.State` dicts (numpy float32, no Ray, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedray.types import State


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


def weighted_sum(states: Sequence[State], weights: Sequence[float]) -> State:
    """sum_i weights[i] * states[i], key by key, accumulated in float32 in the given order.

    Large tensors are reduced block by block so the running sum stays in cache: every update is
    read from memory once, as in a single stacked reduction. Each element sees the same float32
    operations in the same order whatever the blocking, so the result does not depend on it.
    """
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    keys = check_same_keys(states)
    ws = [np.float32(w) for w in weights]
    out: State = {}
    for k in keys:
        first = np.asarray(states[0][k])
        acc = np.empty(first.shape, dtype=np.float32)
        flat_acc = acc.reshape(-1)
        flats = [np.asarray(s[k]).reshape(-1) for s in states]
        tmp = np.empty(min(flat_acc.size, _BLOCK), dtype=np.float32)
        for lo in range(0, flat_acc.size, _BLOCK):
            hi = min(lo + _BLOCK, flat_acc.size)
            a, t = flat_acc[lo:hi], tmp[: hi - lo]
            np.multiply(flats[0][lo:hi], ws[0], out=a, dtype=np.float32)
            for f, w in zip(flats[1:], ws[1:], strict=True):
                np.multiply(f[lo:hi], w, out=t, dtype=np.float32)
                a += t
        out[k] = acc
    return out


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
