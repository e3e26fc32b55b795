"""Data layer: sources (builtin Shakespeare, Hugging Face datasets, local files) and partitioners.

Light to import (numpy only); datasets and pandas load when a source needs them.
"""

from __future__ import annotations

from typing import Any

from fedray.data.base import Corpus, FederatedData
from fedray.data.partition import partition as partition_pool
from fedray.data.sources import load_source

__all__ = ["Corpus", "FederatedData", "build_federated_data", "load_source", "partition_pool"]


def build_federated_data(data: Any, partition: Any, seed: int) -> FederatedData:
    """Load ``data``, hold out its test set and partition the training pool.

    Args:
        data: A ``DataConfig`` (dataclass or DictConfig).
        partition: A ``PartitionConfig`` (dataclass or DictConfig).
        seed: The run seed; split and partition each use a fresh ``random.Random(seed)``.
    """
    corpus, pool, test_idx = load_source(data, seed)
    clients = partition_pool(pool, corpus.labels, corpus.groups, partition, seed)
    return FederatedData(corpus=corpus, test_idx=test_idx, clients=clients)
