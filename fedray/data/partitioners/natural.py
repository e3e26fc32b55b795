"""Natural partition: one client per group (speaker role, user id...), WORKLOAD.md W2 exactly."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from fedray.core.errors import DataError
from fedray.data.partition import register_partitioner


@register_partitioner("natural", uses_num_clients=False, random_sizes=False)
def natural(
    pool: list[int],
    labels: np.ndarray | None,
    groups: list[str] | None,
    cfg: Any,
    rng: random.Random,
) -> list[list[int]]:
    """One client per distinct group in the pool, numbered by first sample in corpus order.

    Each client's list is in corpus order. ``partition.num_clients`` is ignored (the data
    decides how many clients there are); groups with fewer than
    ``partition.min_samples_per_client`` training samples are dropped. ``rng`` is not used.
    """
    if groups is None:
        raise DataError(
            "partition.name=natural needs a group per sample; set data.id_column (or use "
            "data.name=shakespeare/shakespeare_lm, grouped by speaker)"
        )
    clients: dict[str, list[int]] = {}
    for i in sorted(pool):
        clients.setdefault(groups[i], []).append(i)
    low = int(cfg.min_samples_per_client)
    kept = [items for items in clients.values() if len(items) >= low]
    if not kept:
        raise DataError(
            f"partition.name=natural: no group has partition.min_samples_per_client={low} "
            "training samples; lower it"
        )
    return kept
