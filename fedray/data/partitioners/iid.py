"""IID: a seeded shuffle of the pool cut into near-equal parts."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from fedray.data.partition import register_partitioner


def cut(items: list[int], sizes: list[int]) -> list[list[int]]:
    """Consecutive slices of ``items`` with the given sizes."""
    out, start = [], 0
    for size in sizes:
        out.append(items[start : start + size])
        start += size
    return out


def even_sizes(n: int, parts: int) -> list[int]:
    """``np.array_split`` sizes: the first ``n % parts`` parts get one more."""
    return [n // parts + (1 if k < n % parts else 0) for k in range(parts)]


@register_partitioner("iid", random_sizes=False)
def iid(
    pool: list[int],
    labels: np.ndarray | None,
    groups: list[str] | None,
    cfg: Any,
    rng: random.Random,
) -> list[list[int]]:
    """Shuffle the pool, split it into ``num_clients`` parts whose sizes differ by <= 1."""
    items = list(pool)
    rng.shuffle(items)
    return cut(items, even_sizes(len(items), int(cfg.num_clients)))
