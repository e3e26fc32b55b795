"""Partitioner properties on synthetic labels (hypothesis) and their one-line errors."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from fedray.core.config import PartitionConfig
from fedray.core.errors import DataError
from fedray.data.partition import get_partitioner, partition, partitioner_names

NAMES = ["dirichlet", "iid", "natural", "quantity", "shard"]


@st.composite
def synthetic(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """(labels, pool, groups, num_clients): a corpus whose pool is a shuffled subset."""
    n = draw(st.integers(10, 300))
    n_labels = draw(st.integers(1, 6))
    labels = np.array(draw(st.lists(st.integers(0, n_labels - 1), min_size=n, max_size=n)))
    n_groups = draw(st.integers(1, 30))
    groups = [f"g{draw(st.integers(0, n_groups - 1))}" for _ in range(n)]
    seed = draw(st.integers(0, 2**16))
    pool = np.array(random.Random(seed).sample(range(n), draw(st.integers(4, n))), np.int64)
    num_clients = draw(st.integers(1, max(1, len(pool) // 2)))
    return labels, pool, groups, num_clients


def _cfg(name: str, num_clients: int, **kw: object) -> PartitionConfig:
    # num_clients <= pool // 2, so 2 shards per client always fit.
    base = PartitionConfig(name=name, num_clients=num_clients, min_samples_per_client=0)
    return replace(base, classes_per_client=2, **kw)


def _flat(clients: list[np.ndarray]) -> list[int]:
    return sorted(i for c in clients for i in c.tolist())


def test_all_builtins_registered() -> None:
    get_partitioner("iid")
    assert partitioner_names() == NAMES


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None)
@given(data=synthetic(), seed=st.integers(0, 10_000))
def test_each_sample_exactly_once_and_deterministic(
    name: str, data: tuple[np.ndarray, np.ndarray, list[str], int], seed: int
) -> None:
    labels, pool, groups, k = data
    cfg = _cfg(name, k)
    clients = partition(pool, labels, groups, cfg, seed)
    assert _flat(clients) == sorted(pool.tolist())
    assert all(c.dtype == np.int64 for c in clients)
    if name != "natural":
        assert len(clients) == k
    again = partition(pool, labels, groups, cfg, seed)
    assert [c.tolist() for c in clients] == [c.tolist() for c in again]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(data=synthetic(), seed=st.integers(0, 10_000), cap=st.integers(1, 5))
def test_cap_keeps_disjoint_prefix(
    name: str, data: tuple[np.ndarray, np.ndarray, list[str], int], seed: int, cap: int
) -> None:
    labels, pool, groups, k = data
    full = partition(pool, labels, groups, _cfg(name, k), seed)
    capped = partition(pool, labels, groups, _cfg(name, k, max_samples_per_client=cap), seed)
    assert [len(c) for c in capped] == [min(len(c), cap) for c in full]
    flat = _flat(capped)
    assert len(flat) == len(set(flat)) and set(flat) <= set(pool.tolist())
    for small, big in zip(capped, full, strict=True):
        assert set(small.tolist()) <= set(big.tolist())


def _max_share(alpha: float) -> float:
    labels = np.repeat(np.arange(6), 200)
    pool = np.arange(len(labels), dtype=np.int64)
    shares = []
    for seed in range(10):
        cfg = _cfg("dirichlet", 10, alpha=alpha)
        for c in partition(pool, labels, None, cfg, seed):
            if len(c):
                shares.append(np.bincount(labels[c]).max() / len(c))
    return float(np.mean(shares))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    skewed, mild, flat = _max_share(0.05), _max_share(1.0), _max_share(100.0)
    assert skewed > mild > flat
    assert skewed > 0.7 and flat < 0.3, (skewed, mild, flat)


def test_shard_limits_classes_per_client() -> None:
    labels = np.repeat(np.arange(10), 50)
    pool = np.arange(500, dtype=np.int64)
    cfg = PartitionConfig(name="shard", num_clients=25, classes_per_client=2)
    clients = partition(pool, labels, None, cfg, 0)
    assert [len(c) for c in clients] == [20] * 25
    assert max(len(set(labels[c].tolist())) for c in clients) <= 2


def test_iid_and_quantity_sizes() -> None:
    pool = np.arange(103, dtype=np.int64)
    iid = partition(pool, None, None, PartitionConfig(name="iid", num_clients=10), 3)
    assert sorted(len(c) for c in iid) == [10] * 7 + [11] * 3
    cfg = PartitionConfig(name="quantity", num_clients=10, min_samples_per_client=2, power=1.0)
    sizes = [len(c) for c in partition(pool, None, None, cfg, 3)]
    assert sum(sizes) == 103 and min(sizes) >= 2 and max(sizes) > 2 * min(sizes)


def test_natural_numbers_clients_by_first_training_sample() -> None:
    groups = ["b", "a", "b", "c", "a", "c", "d"]
    pool = np.array([6, 4, 2, 1, 0, 5], dtype=np.int64)  # 3 ("c") is held out
    clients = partition(pool, None, groups, PartitionConfig(name="natural", num_clients=1), 0)
    assert [sorted(c.tolist()) for c in clients] == [[0, 2], [1, 4], [5], [6]]
    cfg = PartitionConfig(name="natural", min_samples_per_client=2)
    assert [sorted(c.tolist()) for c in partition(pool, None, groups, cfg, 0)] == [[0, 2], [1, 4]]


def test_accepts_dictconfig() -> None:
    pool = np.arange(40, dtype=np.int64)
    labels = pool % 4
    node = OmegaConf.structured(PartitionConfig(num_clients=4, alpha=1.0))
    plain = partition(pool, labels, None, PartitionConfig(num_clients=4, alpha=1.0), 1)
    assert [c.tolist() for c in partition(pool, labels, None, node, 1)] == [
        c.tolist() for c in plain
    ]


POOL = np.arange(30, dtype=np.int64)
LABELS = POOL % 3


@pytest.mark.parametrize(
    ("cfg", "labels", "groups", "match"),
    [
        (PartitionConfig(name="iid", num_clients=31), None, None, "partition.num_clients=31 "),
        (PartitionConfig(name="dirichlet", alpha=0.0), LABELS, None, "partition.alpha=0.0"),
        (PartitionConfig(name="dirichlet", alpha=-1.0), LABELS, None, "partition.alpha=-1.0"),
        (PartitionConfig(name="dirichlet"), None, None, "needs class labels"),
        (PartitionConfig(name="shard", num_clients=20), LABELS, None, "classes_per_client=40"),
        (PartitionConfig(name="natural"), LABELS, None, "data.id_column"),
        (
            PartitionConfig(name="dirichlet", num_clients=30, alpha=0.05),
            LABELS,
            None,
            "min_samples_per_client=1 in each of 100 seeded draws; lower partition.num_clients "
            "or raise partition.alpha",
        ),
        (PartitionConfig(name="quantity", min_samples_per_client=2), None, None, "exceeds"),
        (
            PartitionConfig(name="iid", max_samples_per_client=1, min_samples_per_client=2),
            None,
            None,
            "max_samples_per_client=1",
        ),
        (PartitionConfig(name="nope"), None, None, "partition.name='nope' is unknown"),
    ],
)
def test_errors(cfg: PartitionConfig, labels: np.ndarray | None, groups: None, match: str) -> None:
    with pytest.raises(DataError, match=match.replace("(", r"\(").replace(".", r"\.")):
        partition(POOL, labels, groups, cfg, 0)


def test_dirichlet_function_rejects_alpha_itself() -> None:
    fn = get_partitioner("dirichlet")
    with pytest.raises(DataError, match=r"partition\.alpha=0\.0 must be > 0"):
        fn(list(range(30)), LABELS, None, PartitionConfig(alpha=0.0), random.Random(0))


def _skewed() -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(6), 100)
    return labels, np.arange(len(labels), dtype=np.int64)


def test_redraw_meets_the_minimum_and_keeps_a_first_draw_that_already_does() -> None:
    labels, pool = _skewed()
    cfg = _cfg("dirichlet", 24, alpha=0.1)
    first = partition(pool, labels, None, cfg, seed=0)
    assert min(len(c) for c in first) == 0  # the first draw leaves a client empty
    redrawn = partition(pool, labels, None, replace(cfg, min_samples_per_client=1), seed=0)
    assert min(len(c) for c in redrawn) >= 1
    assert _flat(redrawn) == sorted(pool.tolist())
    again = partition(pool, labels, None, replace(cfg, min_samples_per_client=1), seed=0)
    assert [c.tolist() for c in again] == [c.tolist() for c in redrawn]  # seeded re-draws
    easy = _cfg("dirichlet", 4, alpha=1.0)
    unchanged = partition(pool, labels, None, easy, seed=3)
    assert min(len(c) for c in unchanged) >= 1
    kept = partition(pool, labels, None, replace(easy, min_samples_per_client=1), seed=3)
    assert [c.tolist() for c in kept] == [c.tolist() for c in unchanged]


def test_redraw_gives_up_with_one_line() -> None:
    labels, pool = _skewed()
    cfg = _cfg("dirichlet", 24, alpha=0.1, min_samples_per_client=60)
    with pytest.raises(DataError, match=r"in each of 100 seeded draws; lower partition.num_"):
        partition(pool, labels, None, cfg, seed=0)
    fixed = _cfg("iid", 24, min_samples_per_client=60)  # sizes do not depend on the draw
    with pytest.raises(DataError, match=r"fewer than partition.min_samples_per_client=60; "):
        partition(pool, labels, None, fixed, seed=0)
