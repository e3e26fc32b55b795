"""Fixtures for the data-layer tests; the Hugging Face libraries are kept offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest

from fedray.core.config import DataConfig, PartitionConfig
from fedray.data import FederatedData, build_federated_data


@pytest.fixture(scope="session")
def w1() -> FederatedData:
    """WORKLOAD.md W1 data: shakespeare, 20 Dirichlet(0.5) clients capped at 64, seed 0."""
    part = PartitionConfig(name="dirichlet", num_clients=20, alpha=0.5, max_samples_per_client=64)
    return build_federated_data(DataConfig(name="shakespeare"), part, 0)


@pytest.fixture(scope="session")
def w2() -> FederatedData:
    """WORKLOAD.md W2 data: shakespeare, natural partition by speaker capped at 8, seed 0."""
    part = PartitionConfig(name="natural", max_samples_per_client=8)
    return build_federated_data(DataConfig(name="shakespeare"), part, 0)
