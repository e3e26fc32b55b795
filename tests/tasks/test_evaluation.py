"""Sharded evaluation: batch-aligned shard ranges, order-preserving sums, task metrics."""

from __future__ import annotations

import itertools
import math

import pytest

from fedray.core import registry
from fedray.tasks.base import add_sums, shard_rows


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


def _metrics(task: str, parts: list[list[dict]]) -> dict[str, float]:
    return registry.build("task", {"name": task}).metrics(add_sums(parts))


def test_sums_are_added_in_batch_order_and_give_the_task_metrics() -> None:
    parts = [
        [{"loss_sum": 0.1, "correct": 1, "count": 4}, {"loss_sum": 0.2, "correct": 2, "count": 4}],
        [],
        [{"loss_sum": 0.3, "correct": 1, "count": 2}],
    ]
    expected = ((0.0 + 0.1) + 0.2) + 0.3
    assert add_sums(parts) == {"loss_sum": expected, "correct": 4, "count": 10}
    assert _metrics("classification", parts) == {"loss": expected / 10, "accuracy": 0.4}
    lm = _metrics("causal_lm", parts)
    assert lm["perplexity"] == math.exp(expected / 10) and lm["accuracy"] == 0.4
    assert _metrics("classification", []) == {"loss": 0.0, "accuracy": 0.0}


def test_tasks_declare_their_objective_and_display() -> None:
    cls, lm = (registry.build("task", {"name": n}) for n in ("classification", "causal_lm"))
    assert (cls.objective.key, cls.objective.direction) == ("eval_accuracy", "maximize")
    assert (lm.objective.key, lm.objective.direction) == ("eval_perplexity", "minimize")
    assert lm.display[0] == "perplexity" and cls.display[0] == "accuracy"
    assert cls.needs_labels and not lm.needs_labels
