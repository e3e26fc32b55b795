"""Sources ``hf`` (a Hugging Face dataset by name) and ``files`` (local csv/json/jsonl/parquet)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np

from fedray.core.errors import DataError
from fedray.data.base import Corpus
from fedray.data.sources import register_source
from fedray.data.sources.columns import Table, to_corpus

SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _read_one(path: Path, key: str) -> Any:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        try:
            return pd.read_json(path)
        except ValueError:
            return pd.read_json(path, lines=True)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except Exception as exc:
        raise DataError(f"{key}: cannot read {path} as {suffix[1:]}: {_first_line(exc)}") from None


def read_frame(pattern: str, key: str) -> tuple[Any, Path]:
    """(one pandas DataFrame of a file or glob of csv/json/jsonl/parquet files, concatenated in
    sorted order; the folder of the first file, against which relative paths in it resolve)."""
    import pandas as pd

    where = f"{key}={pattern!r}"
    expanded = str(Path(pattern).expanduser())
    paths = [Path(p) for p in sorted(glob.glob(expanded))] if glob.has_magic(expanded) else []
    if not glob.has_magic(expanded) and Path(expanded).is_file():
        paths = [Path(expanded)]
    if not paths:
        raise DataError(
            f"{where}: no such file; give an existing {'/'.join(SUFFIXES)} file or glob"
        )
    for path in paths:
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"{where}: {path.name} is not one of {', '.join(SUFFIXES)}")
    frames = [_read_one(p, key) for p in paths]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return frame, paths[0].resolve().parent


def read_files(pattern: str, key: str) -> Table:
    """Read a file or glob of csv/json/jsonl/parquet files (concatenated in sorted order)."""
    frame, root = read_frame(pattern, key)
    where = f"{key}={pattern!r}"
    return Table([str(c) for c in frame.columns], lambda c: frame[c].tolist(), where, root=root)


@register_source("files")
def files(cfg: Any, seed: int) -> tuple[Corpus, np.ndarray, np.ndarray]:
    """Local files at ``data.path``; ``data.test_split`` (a path or glob) is the test set."""
    if not cfg.path:
        raise DataError("data.name=files needs data.path (a csv/json/jsonl/parquet file or glob)")
    test = read_files(str(cfg.test_split), "data.test_split") if cfg.test_split else None
    return to_corpus(read_files(str(cfg.path), "data.path"), test, cfg, seed)


def _hub_table(cfg: Any, split: str, key: str) -> Table:
    import datasets

    where = f"data.path={cfg.path!r} ({key}={split!r})"
    try:
        ds = datasets.load_dataset(str(cfg.path), cfg.subset, split=split)
    except Exception as exc:
        raise DataError(
            f"{where}: cannot load the Hugging Face dataset ({_first_line(exc)}); check the name, "
            "data.subset and the network"
        ) from None
    if isinstance(ds, datasets.DatasetDict | datasets.IterableDataset):
        raise DataError(f"{where}: give a single map-style split in {key}")
    names = None
    if cfg.label_column is not None and cfg.label_column in ds.column_names:
        names = getattr(ds.features[cfg.label_column], "names", None)
    return Table(list(ds.column_names), lambda c: list(ds[c]), where, names)


@register_source("hf")
def hf(cfg: Any, seed: int) -> tuple[Corpus, np.ndarray, np.ndarray]:
    """``datasets.load_dataset(data.path, data.subset, split=data.split)`` (needs the network)."""
    if not cfg.path:
        raise DataError("data.name=hf needs data.path (a Hugging Face dataset name)")
    test = _hub_table(cfg, str(cfg.test_split), "data.test_split") if cfg.test_split else None
    return to_corpus(_hub_table(cfg, str(cfg.split), "data.split"), test, cfg, seed)
