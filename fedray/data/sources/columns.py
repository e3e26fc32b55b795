"""Column mapping shared by the ``hf`` and ``files`` sources: a table -> Corpus + split."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedray.core.errors import DataError
from fedray.data.base import Corpus, needs_labels
from fedray.data.split import by_label, holdout


@dataclass
class Table:
    """A column store as read from disk or the hub.

    Attributes:
        columns: Column names.
        get: Column name -> its values, one per row.
        where: How the user named it in the config, for messages (``data.path='a.csv'``).
        label_names: Class names the table declares (an HF ``ClassLabel``), if any.
        root: The folder relative image paths in the table resolve against (files), if any.
    """

    columns: list[str]
    get: Callable[[str], Sequence[Any]]
    where: str
    label_names: list[str] | None = None
    root: Path | None = None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _column(table: Table, key: str, name: str) -> list[Any]:
    if name not in table.columns:
        raise DataError(
            f"data.{key}={name!r} not in columns [{', '.join(map(str, table.columns))}] "
            f"of {table.where}; set data.{key} to one of them"
        )
    return list(table.get(name))


def encode_labels(
    values: list[Any], hint: list[str] | None, column: str = "label"
) -> tuple[np.ndarray, list[str]]:
    """Integer labels kept as they are; string labels -> index in their sorted unique names."""
    key = f"data.label_column={column!r}"
    bad = sum(_missing(v) for v in values)
    if bad:
        raise DataError(f"{key} has {bad} missing values; fill or drop those rows")
    if all(isinstance(v, str) for v in values):
        names = sorted(set(values))
        index = {name: i for i, name in enumerate(names)}
        return np.array([index[v] for v in values], dtype=np.int64), names
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise DataError(f"{key} must hold integers or strings; map the labels first")
    labels = arr.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"{key} has negative labels; use class indices 0..C-1")
    n = int(labels.max()) + 1 if labels.size else 0
    names = hint if hint is not None and len(hint) >= n else [str(i) for i in range(n)]
    return labels, list(names)


def _image(value: Any, root: Path | None) -> Any:
    """An image value as the task reads it; a relative file path resolves against `root`."""
    if isinstance(value, str) and root is not None and not Path(value).is_absolute():
        return str(root / value)
    return value


def _rows(table: Table, cfg: Any, labeled: bool) -> dict[str, list[Any]]:
    empty = DataError(f"{table.where} has no rows; point it at a non-empty dataset")
    if not table.columns:
        raise empty
    if cfg.image_column is not None:  # images instead of text: no word filter
        images = _column(table, "image_column", cfg.image_column)
        if not images:
            raise empty
        bad = sum(_missing(v) for v in images)
        if bad:
            raise DataError(
                f"data.image_column={cfg.image_column!r} has {bad} missing values in "
                f"{table.where}; fill or drop those rows"
            )
        rows: dict[str, list[Any]] = {"images": [_image(v, table.root) for v in images]}
        if labeled:
            rows["labels"] = _column(table, "label_column", cfg.label_column)
        if cfg.id_column is not None:
            rows["groups"] = [str(g) for g in _column(table, "id_column", cfg.id_column)]
        return rows
    texts = _column(table, "text_column", cfg.text_column)
    if not texts:
        raise empty
    rows = {"texts": ["" if _missing(t) else str(t) for t in texts]}
    if labeled:
        rows["labels"] = _column(table, "label_column", cfg.label_column)
    if cfg.id_column is not None:
        rows["groups"] = [str(g) for g in _column(table, "id_column", cfg.id_column)]
    min_words = int(cfg.min_words)
    if min_words > 0:
        keep = [i for i, t in enumerate(rows["texts"]) if len(t.split()) >= min_words]
        rows = {k: [v[i] for i in keep] for k, v in rows.items()}
    if not rows["texts"]:
        raise DataError(
            f"{table.where}: no row has data.min_words={min_words} words in "
            f"data.text_column={cfg.text_column!r}; lower data.min_words"
        )
    return rows


def to_corpus(
    train: Table, test: Table | None, cfg: Any, seed: int
) -> tuple[Corpus, np.ndarray, np.ndarray]:
    """Map columns, filter by ``min_words``, and split (``test`` given: its rows are the test set).

    With ``data.image_column`` the inputs are the images in that column (``features["image"]``:
    file paths, resolved against the table's folder when relative, bytes or HF images) and
    no text is read.

    Without ``test``, the test set is held out per label (classification) or over all rows
    (causal_lm) as :func:`fedray.data.split.holdout` does. A given test table is subsampled
    to ``max_test`` rows (seeded, kept in file order).
    """
    task = str(cfg.task)
    labeled = needs_labels(task)
    if labeled and cfg.label_column is None:
        raise DataError(f"data.task={task} needs data.label_column (or a task without labels)")
    parts = [_rows(train, cfg, labeled)]
    if test is not None:
        rows = _rows(test, cfg, labeled)
        n_test, cap = len(rows["texts"]), int(cfg.max_test)
        if 0 < cap < n_test:
            keep = sorted(random.Random(seed).sample(range(n_test), cap))
            rows = {k: [v[i] for i in keep] for k, v in rows.items()}
        parts.append(rows)
    merged = {k: [x for p in parts for x in p[k]] for k in parts[0]}
    labels, names = None, None
    if labeled:
        labels, names = encode_labels(merged["labels"], train.label_names, str(cfg.label_column))
    features: dict[str, Any] = {}
    if "images" in merged:
        features["image"] = np.empty(len(merged["images"]), dtype=object)
        features["image"][:] = merged["images"]
    corpus = Corpus(merged.get("texts", []), labels, merged.get("groups"), names, task, features)
    n_train = len(parts[0].get("texts", parts[0].get("images", [])))
    if test is not None:
        return (
            corpus,
            np.arange(n_train, dtype=np.int64),
            np.arange(n_train, len(corpus), dtype=np.int64),
        )
    strata = by_label(labels, len(names)) if labels is not None and names else [range(n_train)]
    pool, held = holdout(strata, float(cfg.test_fraction), int(cfg.max_test), seed)
    return corpus, pool, held
