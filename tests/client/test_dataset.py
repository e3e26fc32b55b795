"""Encoding federated data (a task's arrays), in this process or in a child that keeps torch
out of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedray.client.dataset import EncodeJob, encode, encode_in_child
from fedray.core.config import ModelConfig
from fedray.core.errors import ModelError
from fedray.data import Corpus, FederatedData


@pytest.fixture
def small() -> FederatedData:
    texts = [f"speech number {i} of the play" for i in range(10)]
    corpus = Corpus(texts, np.arange(10) % 2, None, ["a", "b"], "classification")
    clients = [np.array([3, 1]), np.array([5, 7, 9])]
    return FederatedData(corpus=corpus, test_idx=np.array([0, 2]), clients=clients)


def test_child_tokenizes_exactly_like_this_process(cls_cfg: ModelConfig, small) -> None:
    here = encode("classification", cls_cfg, small, 12)
    there = encode_in_child("classification", cls_cfg, small, 12)
    for part in ("train", "test"):
        a, b = getattr(here, part), getattr(there, part)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert all(np.array_equal(x, y) for x, y in zip(here.clients, there.clients, strict=True))
    assert there.num_samples(1) == 3 and there.client_batch(0)["labels"].tolist() == [1, 1]


def test_child_errors_come_back_as_themselves(tmp_path, small) -> None:
    bad = ModelConfig(name_or_path=str(tmp_path / "not-a-model"))
    with pytest.raises(ModelError, match="not-a-model"):
        encode_in_child("classification", bad, small, 12)


def test_job_left_early_stops_its_child_and_removes_its_files(cls_cfg: ModelConfig, small) -> None:
    with EncodeJob("classification", cls_cfg, small, 12, child=True) as job:
        proc, tmp = job._proc, Path(job._tmp.name)
        assert proc is not None and tmp.is_dir()
    assert proc.poll() is not None and not tmp.exists()  # killed (or done) and cleaned up


def test_job_hands_its_arrays_over_once(cls_cfg: ModelConfig, small) -> None:
    with EncodeJob("classification", cls_cfg, small, 12, child=False) as job:
        encoded = job.result()
        with pytest.raises(RuntimeError, match="once"):
            job.result()
    assert encoded.num_samples(1) == 3 and job._value is None
