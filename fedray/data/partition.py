"""Partitioners, registered by name: ``partition.name`` picks one.

A partitioner is a pure function ``(pool, labels, groups, cfg, rng) -> client lists`` that
assigns each training-pool index to at most one client. :func:`partition` creates
``rng = random.Random(seed)``, calls it, then for each client k in order ``rng.shuffle``s its
list and keeps the first ``max_samples_per_client`` (if > 0), continuing the same rng.

A draw that leaves a client with fewer than ``min_samples_per_client`` samples is re-drawn, as
NIID-Bench (Li et al. 2022) re-draws its Dirichlet split until every client holds enough: draw
``d >= 1`` uses ``random.Random(f"{seed}:redraw:{d}")``, up to :data:`MAX_DRAWS` draws in all,
then the partition is refused with one line. The first draw is the one above, so a partition
that already satisfies the minimum is unchanged (the benchmark fingerprints rest on it).
Partitioners whose client sizes do not depend on the draw (``random_sizes=False``: iid, shard)
are not re-drawn. Adding a partitioner is one module under ``fedray/data/partitioners/``
decorated with :func:`register_partitioner`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from fedray.core import registry
from fedray.core.config import PartitionConfig
from fedray.core.errors import ConfigError, DataError

Partitioner = Callable[
    [list[int], np.ndarray | None, list[str] | None, Any, random.Random], list[list[int]]
]

MAX_DRAWS = 100  # draws of a random-size partition before it is refused

log = logging.getLogger(__name__)

_USES_NUM_CLIENTS: dict[str, bool] = {}
_RANDOM_SIZES: dict[str, bool] = {}


def register_partitioner(
    name: str, uses_num_clients: bool = True, random_sizes: bool = True
) -> Callable[[Partitioner], Partitioner]:
    """Decorator: make a partitioner available as ``partition.name=<name>`` (on the registry).

    ``random_sizes``: whether client sizes depend on the draw, i.e. whether re-drawing can
    bring a too-small client up to ``min_samples_per_client``.
    """

    def wrap(fn: Partitioner) -> Partitioner:
        _USES_NUM_CLIENTS[name] = uses_num_clients
        _RANDOM_SIZES[name] = random_sizes
        return registry.register("partition", name, PartitionConfig)(fn)

    return wrap


def partitioner_names() -> list[str]:
    """The registered partitioner names, sorted."""
    return registry.names("partition")


def get_partitioner(name: str) -> Partitioner:
    """The partitioner registered as ``name``; DataError listing the alternatives otherwise."""
    try:
        return registry.entry("partition", name).factory
    except ConfigError as exc:
        raise DataError(str(exc)) from None


def require_labels(labels: np.ndarray | None, name: str) -> np.ndarray:
    """The labels, or a DataError saying that ``name`` needs a classification task."""
    if labels is None:
        raise DataError(
            f"partition.name={name} needs class labels but the data has none (data.task="
            "causal_lm); use partition.name=iid, natural or quantity"
        )
    return labels


def _check(cfg: Any, pool_size: int, uses_num_clients: bool) -> None:
    k, cap, low = (
        int(cfg.num_clients),
        int(cfg.max_samples_per_client),
        int(cfg.min_samples_per_client),
    )
    if pool_size == 0:
        raise DataError("the training pool is empty; add data or lower data.test_fraction")
    if uses_num_clients and k < 1:
        raise DataError(f"partition.num_clients={k} must be >= 1")
    if uses_num_clients and k > pool_size:
        raise DataError(
            f"partition.num_clients={k} exceeds the {pool_size} training samples; "
            "lower partition.num_clients or add data"
        )
    if cap < 0 or (cap and cap < low):
        raise DataError(
            f"partition.max_samples_per_client={cap} must be 0 (no cap) or >= "
            f"partition.min_samples_per_client={low}"
        )


def partition(
    pool: np.ndarray, labels: np.ndarray | None, groups: list[str] | None, cfg: Any, seed: int
) -> list[np.ndarray]:
    """Split the training pool into client index lists (int64, in training order).

    Args:
        pool: Training-pool corpus indices, in split order (as ``load_source`` returns them).
        labels: Class index of every corpus sample, or None.
        groups: Natural owner of every corpus sample, or None.
        cfg: A ``PartitionConfig`` (dataclass or DictConfig).
        seed: Seed of the one ``random.Random`` the partitioner and the shuffle/cap share.
    """
    name = str(cfg.name)
    fn = get_partitioner(name)
    _check(cfg, len(pool), _USES_NUM_CLIENTS[name])
    low = int(cfg.min_samples_per_client)
    draws = MAX_DRAWS if _RANDOM_SIZES[name] else 1
    smallest: tuple[int, int] = (0, 0)
    for draw in range(draws):
        rng = random.Random(seed if draw == 0 else f"{seed}:redraw:{draw}")
        clients = _draw(fn, pool, labels, groups, cfg, rng)
        sizes = [len(c) for c in clients]
        k = int(np.argmin(sizes)) if sizes else 0
        if not sizes or sizes[k] >= low:
            if draw:
                log.info(
                    "partition.name=%s: draw %d of %d gives every client >= %d samples",
                    name,
                    draw + 1,
                    draws,
                    low,
                )
            return clients
        smallest = (k, sizes[k])
    k, size = smallest
    tried = f" in each of {draws} seeded draws" if draws > 1 else ""
    raise DataError(
        f"partition.name={name}: client {k} gets {size} samples, fewer than "
        f"partition.min_samples_per_client={low}{tried}; lower partition.num_clients"
        + (" or raise partition.alpha" if name == "dirichlet" else "")
    )


def _draw(
    fn: Partitioner,
    pool: np.ndarray,
    labels: np.ndarray | None,
    groups: list[str] | None,
    cfg: Any,
    rng: random.Random,
) -> list[np.ndarray]:
    """One draw: the partitioner, then each client's seeded shuffle and cap (same rng)."""
    clients = fn([int(i) for i in pool], labels, groups, cfg, rng)
    cap = int(cfg.max_samples_per_client)
    out: list[np.ndarray] = []
    for items in clients:
        rng.shuffle(items)
        if cap > 0:
            del items[cap:]
        out.append(np.array(items, dtype=np.int64))
    return out
