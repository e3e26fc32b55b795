"""Pathological shards (McMahan et al. 2017): each client holds a few label-sorted shards."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from fedray.core.errors import DataError
from fedray.data.partition import register_partitioner, require_labels
from fedray.data.partitioners.iid import cut, even_sizes


@register_partitioner("shard", random_sizes=False)
def shard(
    pool: list[int],
    labels: np.ndarray | None,
    groups: list[str] | None,
    cfg: Any,
    rng: random.Random,
) -> list[list[int]]:
    """Give each client ``classes_per_client`` shards of the label-sorted pool.

    The pool is sorted by label (stable) and cut into ``num_clients * classes_per_client``
    near-equal shards; a seeded permutation of the shard ids deals them to clients in order.
    """
    labels = require_labels(labels, "shard")
    k_clients, per = int(cfg.num_clients), int(cfg.classes_per_client)
    if per < 1:
        raise DataError(f"partition.classes_per_client={per} must be >= 1")
    n_shards = k_clients * per
    if n_shards > len(pool):
        raise DataError(
            f"partition.num_clients*classes_per_client={n_shards} shards exceed the {len(pool)} "
            "training samples; lower partition.num_clients or partition.classes_per_client"
        )
    ordered = sorted(pool, key=lambda i: labels[i])
    shards = cut(ordered, even_sizes(len(ordered), n_shards))
    order = list(range(n_shards))
    rng.shuffle(order)
    return [
        [i for s in order[k * per : (k + 1) * per] for i in shards[s]] for k in range(k_clients)
    ]
