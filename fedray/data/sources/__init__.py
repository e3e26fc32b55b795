"""Data sources, registered by name: ``data.name`` picks one.

A source is a function ``(cfg: DataConfig, seed: int) -> (corpus, train_pool_idx, test_idx)``.
Adding one is one module that decorates its function with :func:`register_source` and is
listed in ``_BUILTIN``. Heavy libraries (datasets, pandas) are imported inside the functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from fedray.data.base import Corpus
from fedray.errors import DataError

Source = Callable[[Any, int], tuple[Corpus, np.ndarray, np.ndarray]]

SOURCES: dict[str, Source] = {}
_BUILTIN = ("fedray.data.sources.shakespeare", "fedray.data.sources.tabular")


def register_source(name: str) -> Callable[[Source], Source]:
    """Decorator: make a source function available as ``data.name=<name>``."""

    def wrap(fn: Source) -> Source:
        SOURCES[name] = fn
        return fn

    return wrap


def get_source(name: str) -> Source:
    """The source registered as ``name``; DataError listing the alternatives otherwise."""
    for module in _BUILTIN:
        importlib.import_module(module)
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(
            f"data.name={name!r} is unknown; choose one of: {', '.join(sorted(SOURCES))}"
        ) from None


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
