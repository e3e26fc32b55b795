"""The ``files`` and ``hf`` sources: column mapping, splits and one-line errors (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedray.core.config import DataConfig, PartitionConfig
from fedray.core.errors import DataError
from fedray.data import build_federated_data, load_source

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def _frame(n: int = 40, labels: list[object] | None = None) -> pd.DataFrame:
    labels = labels or ["pos", "neg", "mid", "neg"]
    return pd.DataFrame(
        {
            "text": [" ".join(WORDS[: 2 + i % 8]) + f" row{i}" for i in range(n)],
            "label": [labels[i % len(labels)] for i in range(n)],
            "user": [f"u{i % 5}" for i in range(n)],
        }
    )


def _files(path: Path, **kw: object) -> DataConfig:
    return DataConfig(name="files", path=str(path), min_words=0, **kw)


def test_csv_round_trip_maps_string_labels(tmp_path: Path) -> None:
    frame = _frame()
    frame.to_csv(tmp_path / "d.csv", index=False)
    corpus, pool, test = load_source(_files(tmp_path / "d.csv", id_column="user"), 0)
    assert corpus.texts == frame["text"].tolist()
    assert corpus.label_names == ["mid", "neg", "pos"]
    assert corpus.labels is not None and corpus.labels.dtype == np.int64
    names = np.array(corpus.label_names)[corpus.labels].tolist()
    assert names == frame["label"].tolist()
    assert corpus.groups == frame["user"].tolist()
    assert sorted(pool.tolist() + test.tolist()) == list(range(40))
    # per-label hold-out: floor(0.15 * n + 0.5) of each of the 10 mid / 20 neg / 10 pos rows
    assert np.bincount(corpus.labels[test]).tolist() == [2, 3, 2]


def test_parquet_round_trip_keeps_int_labels(tmp_path: Path) -> None:
    frame = _frame(labels=[0, 2, 3])
    frame.to_parquet(tmp_path / "d.parquet")
    corpus, _, _ = load_source(_files(tmp_path / "d.parquet"), 0)
    assert corpus.labels is not None and corpus.labels.tolist() == frame["label"].tolist()
    assert corpus.label_names == ["0", "1", "2", "3"] and corpus.groups is None


def test_json_jsonl_and_glob(tmp_path: Path) -> None:
    frame = _frame(20)
    records = frame.to_dict(orient="records")
    (tmp_path / "a.json").write_text(json.dumps(records[:10]))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records[10:]))
    corpus, _, _ = load_source(_files(tmp_path / "*.json*"), 0)
    assert corpus.texts == frame["text"].tolist()


def test_test_split_min_words_and_lm(tmp_path: Path) -> None:
    _frame(30).to_csv(tmp_path / "train.csv", index=False)
    _frame(50).to_csv(tmp_path / "test.csv", index=False)
    cfg = _files(tmp_path / "train.csv", test_split=str(tmp_path / "test.csv"), max_test=20)
    _, pool, test = load_source(cfg, 0)
    assert pool.tolist() == list(range(30)) and test.tolist() == list(range(30, 50))
    cfg = _files(tmp_path / "train.csv", task="causal_lm", label_column=None)
    cfg.min_words = 9  # keeps the rows with >= 8 WORDS + "rowN"
    lm, pool, test = load_source(cfg, 0)
    assert lm.labels is None and lm.task == "causal_lm"
    assert all(len(t.split()) >= 9 for t in lm.texts) and len(lm.texts) == 6
    assert len(test) == 1 and len(pool) == 5


def test_files_end_to_end_natural(tmp_path: Path) -> None:
    _frame().to_csv(tmp_path / "d.csv", index=False)
    data = _files(tmp_path / "d.csv", id_column="user")
    fd = build_federated_data(data, PartitionConfig(name="natural"), 0)
    assert fd.num_clients() == 5 and fd.client_sizes().sum() == 40 - len(fd.test_idx)
    assert fd.label_histogram().sum() == fd.client_sizes().sum()


def test_hf_source_maps_classlabel(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "y": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    ds = datasets.Dataset.from_dict(
        {"sentence": _frame()["text"].tolist(), "y": [i % 2 for i in range(40)]}, features
    )
    seen: list[tuple[object, ...]] = []

    def fake_load(path: str, name: str | None = None, split: str | None = None) -> object:
        seen.append((path, name, split))
        return ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = DataConfig(
        name="hf", path="org/set", subset="s", text_column="sentence", label_column="y", min_words=0
    )
    corpus, _, _ = load_source(cfg, 0)
    assert seen == [("org/set", "s", "train")]
    assert corpus.label_names == ["a", "b", "c"] and corpus.labels is not None
    assert corpus.labels.tolist() == [i % 2 for i in range(40)]


def test_hf_offline_unknown_dataset_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    hub = pytest.importorskip("huggingface_hub")
    # conftest sets the env vars, but they are read at import: force offline mode here too.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"data\.path='fedray-no/such-dataset'"):
        load_source(DataConfig(name="hf", path="fedray-no/such-dataset"), 0)


def _write(tmp_path: Path, name: str, frame: pd.DataFrame) -> Path:
    frame.to_csv(tmp_path / name, index=False)
    return tmp_path / name


@pytest.mark.parametrize(
    ("make_cfg", "match"),
    [
        (lambda p: _files(p / "missing.csv"), r"data\.path='.*missing\.csv': no such file"),
        (lambda p: _files(p / "*.parquet"), r"data\.path=.*: no such file"),
        (
            lambda p: _files(_write(p, "d.csv", _frame()), label_column="lbl"),
            r"data\.label_column='lbl' not in columns \[text, label, user\]",
        ),
        (
            lambda p: _files(_write(p, "d.csv", _frame()), text_column="body"),
            r"data\.text_column='body' not in columns",
        ),
        (
            lambda p: _files(_write(p, "d.csv", _frame()), id_column="who"),
            r"data\.id_column='who'",
        ),
        (lambda p: _files(_write(p, "e.csv", _frame().iloc[:0])), "has no rows"),
        (lambda p: _files(p / "void.csv"), "has no rows"),
        (
            lambda p: DataConfig(
                name="files", path=str(_write(p, "d.csv", _frame())), min_words=11
            ),
            "no row has data.min_words=11 words",
        ),
        (lambda p: _files(_write(p, "d.txt", _frame())), r"d\.txt is not one of"),
        (
            lambda p: _files(_write(p, "d.csv", _frame()), label_column=None),
            "needs data.label_column",
        ),
        (lambda p: _files(_write(p, "d.csv", _frame(labels=[1.5]))), "integers or strings"),
        (lambda p: _files(_write(p, "d.csv", _frame(labels=[None, 1]))), "missing values"),
        (lambda p: DataConfig(name="files"), "needs data.path"),
        (lambda p: DataConfig(name="nope"), "data.name='nope' is unknown"),
    ],
)
def test_source_errors(tmp_path: Path, make_cfg: object, match: str) -> None:
    (tmp_path / "void.csv").write_text("")
    with pytest.raises(DataError, match=match):
        load_source(make_cfg(tmp_path), 0)  # type: ignore[operator]
