"""Per-class Dirichlet label skew (WORKLOAD.md W1 "Partition", reproduced exactly)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from fedray.core.errors import DataError
from fedray.data.partition import register_partitioner, require_labels


@register_partitioner("dirichlet")
def dirichlet(
    pool: list[int],
    labels: np.ndarray | None,
    groups: list[str] | None,
    cfg: Any,
    rng: random.Random,
) -> list[list[int]]:
    """For each class c: shuffle its pool, split it by ``p ~ Dirichlet(alpha)`` over clients.

    ``p`` is drawn as normalised ``rng.gammavariate(alpha, 1.0)``; client k receives the
    items between ``int(n_c * (p_0 + ... + p_{k-1}))`` and ``int(n_c * (p_0 + ... + p_k))``
    (the last client ends at ``n_c``). Smaller ``alpha`` means more label skew.
    """
    labels = require_labels(labels, "dirichlet")
    alpha, k_clients = float(cfg.alpha), int(cfg.num_clients)
    if not alpha > 0:
        raise DataError(f"partition.alpha={alpha} must be > 0 (smaller = more label skew)")
    label_of = labels.tolist()
    by_class: list[list[int]] = [[] for _ in range(int(labels.max()) + 1)]
    for i in pool:  # keeps pool (split) order within each class
        by_class[label_of[i]].append(i)
    clients: list[list[int]] = [[] for _ in range(k_clients)]
    for items in by_class:
        rng.shuffle(items)
        n = len(items)
        weights = [rng.gammavariate(alpha, 1.0) for _ in range(k_clients)]
        total = sum(weights)
        if total == 0.0:
            raise DataError(f"partition.alpha={alpha} is too small (weights underflow); raise it")
        start, cum = 0, 0.0
        for k in range(k_clients):
            cum += weights[k] / total
            end = n if k == k_clients - 1 else int(n * cum)
            clients[k].extend(items[start:end])
            start = end
    return clients
