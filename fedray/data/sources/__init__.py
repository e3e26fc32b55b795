"""Data sources, registered by name: ``data.name`` picks one.

A source is a function ``(cfg: DataConfig, seed: int) -> (corpus, train_pool_idx, test_idx)``.
Adding one is one module in this package that decorates its function with
:func:`register_source`. Heavy libraries (datasets, pandas) are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedray.core import registry
from fedray.core.config import DataConfig
from fedray.core.errors import ConfigError, DataError
from fedray.data.base import Corpus

Source = Callable[[Any, int], tuple[Corpus, np.ndarray, np.ndarray]]


def register_source(name: str) -> Callable[[Source], Source]:
    """Decorator: make a source function available as ``data.name=<name>`` (on the registry)."""
    return registry.register("source", name, DataConfig)


def get_source(name: str) -> Source:
    """The source registered as ``name``; DataError listing the alternatives otherwise."""
    try:
        return registry.entry("source", name).factory
    except ConfigError as exc:
        raise DataError(str(exc)) from None


def load_source(cfg: Any, seed: int) -> tuple[Corpus, np.ndarray, np.ndarray]:
    """Load ``cfg.name`` and hold out its test set.

    Args:
        cfg: A ``DataConfig`` (dataclass or DictConfig; only attributes are read).
        seed: The run seed; the hold-out uses ``random.Random(seed)``.

    Returns:
        ``(corpus, train_pool_idx, test_idx)``: int64 corpus indices in split order
        (stratum by stratum, each in its seeded shuffled order, as WORKLOAD.md W1 defines).
    """
    return get_source(str(cfg.name))(cfg, seed)
