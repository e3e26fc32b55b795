"""Quantity skew: power-law client sizes, samples assigned IID."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from fedray.core.errors import DataError
from fedray.data.partition import register_partitioner
from fedray.data.partitioners.iid import cut
from fedray.data.split import apportion


@register_partitioner("quantity")
def quantity(
    pool: list[int],
    labels: np.ndarray | None,
    groups: list[str] | None,
    cfg: Any,
    rng: random.Random,
) -> list[list[int]]:
    """Cut the shuffled pool into power-law sized parts.

    Client k gets ``min_samples_per_client`` plus a share of the rest proportional to
    ``rng.paretovariate(power)`` (largest remainder), so sizes sum to the pool.
    """
    k_clients, power = int(cfg.num_clients), float(cfg.power)
    low = max(int(cfg.min_samples_per_client), 0)
    if not power > 0:
        raise DataError(f"partition.power={power} must be > 0 (smaller = more size skew)")
    spare = len(pool) - k_clients * low
    if spare < 0:
        raise DataError(
            f"partition.num_clients={k_clients} x partition.min_samples_per_client={low} exceeds "
            f"the {len(pool)} training samples; lower one of them"
        )
    weights = [rng.paretovariate(power) for _ in range(k_clients)]
    sizes = [low + extra for extra in apportion(spare, weights)]
    items = list(pool)
    rng.shuffle(items)
    return cut(items, sizes)
