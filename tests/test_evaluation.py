"""Sharded evaluation: batch-aligned shard ranges and order-preserving combination."""

from __future__ import annotations

import itertools
import math

import pytest

from fedray.evaluation import combine, shard_rows


@pytest.mark.parametrize(
    ("n", "size", "shards"), [(600, 64, 2), (600, 64, 3), (7, 3, 5), (0, 4, 2)]
)
def test_shards_cover_every_row_once_in_whole_batches(n: int, size: int, shards: int) -> None:
    ranges = [shard_rows(n, size, i, shards) for i in range(shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous
    assert all(start % size == 0 for start, stop in ranges if stop > start)  # batch-aligned
    batches = [-(-(stop - start) // size) for start, stop in ranges]
    assert max(batches) - min(batches) <= 1  # balanced to one batch


def test_w2_test_set_splits_five_batches_each() -> None:
    assert [shard_rows(600, 64, i, 2) for i in range(2)] == [(0, 320), (320, 600)]
    assert [shard_rows(100, 64, i, 3) for i in range(3)] == [(0, 0), (0, 64), (64, 100)]


def test_bad_shard_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"shard 2 is outside 0\.\.1"):
        shard_rows(10, 2, 2, 2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        shard_rows(10, 0, 0, 1)


def test_combine_adds_batch_sums_in_order() -> None:
    parts = [
        {"loss_sums": [0.1, 0.2], "correct": 3, "count": 8},
        {"loss_sums": [], "correct": 0, "count": 0},
        {"loss_sums": [0.3], "correct": 1, "count": 2},
    ]
    expected = ((0.0 + 0.1) + 0.2) + 0.3
    assert combine(parts, "classification") == {"loss": expected / 10, "accuracy": 0.4}
    lm = combine(parts, "causal_lm")
    assert lm["perplexity"] == math.exp(expected / 10)
    assert combine([], "classification") == {"loss": 0.0, "accuracy": 0.0}
