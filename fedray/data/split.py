"""Seeded stratified hold-out of a test set, shared by all sources (WORKLOAD.md W1 "Split")."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

from fedray.core.errors import DataError


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` over ``weights`` by largest remainder; ties go to the lower index.

    Integer weights are apportioned exactly (integer arithmetic).
    """
    denom = sum(weights)
    base = [int(total * w // denom) for w in weights]
    remainders = [total * w - b * denom for w, b in zip(weights, base, strict=True)]
    order = sorted(range(len(weights)), key=lambda g: (-remainders[g], g))
    for g in order[: total - sum(base)]:
        base[g] += 1
    return base


def holdout(
    strata: Sequence[Sequence[int]], test_fraction: float, max_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a test set per stratum; return ``(train_pool, test)`` as int64 index arrays.

    One ``random.Random(seed)`` shuffles each stratum in turn; the first
    ``floor(test_fraction * n + 0.5)`` are held out, the rest is the stratum's training pool.
    If more than ``max_test`` (> 0) are held out, stratum g keeps its first ``q_g``, with ``q``
    apportioning ``max_test`` by largest remainder. Both arrays are in *split order*:
    stratum by stratum, each in its shuffled order (this order feeds the partitioners).
    """
    rng = random.Random(seed)
    held: list[list[int]] = []
    pool: list[int] = []
    for stratum in strata:
        items = [int(i) for i in stratum]
        rng.shuffle(items)
        h = math.floor(test_fraction * len(items) + 0.5)
        held.append(items[:h])
        pool.extend(items[h:])
    sizes = [len(h) for h in held]
    if 0 < max_test < sum(sizes):
        sizes = apportion(max_test, sizes)
    test = [i for h, q in zip(held, sizes, strict=True) for i in h[:q]]
    n = sum(len(s) for s in strata)
    if not test:
        raise DataError(
            f"data.test_fraction={test_fraction} holds out no test sample from {n} samples; "
            "raise data.test_fraction or give data.test_split"
        )
    if not pool:
        raise DataError(
            f"data.test_fraction={test_fraction} leaves no training sample from {n} samples; "
            "lower data.test_fraction or add data"
        )
    return np.array(pool, dtype=np.int64), np.array(test, dtype=np.int64)


def by_label(labels: np.ndarray, n_labels: int) -> list[np.ndarray]:
    """Corpus indices of each class, in corpus order."""
    return [np.flatnonzero(labels == c) for c in range(n_labels)]
