"""Sharded evaluation of the global model: which rows each actor scores, and the combined metrics.

Torch-free, so the driver can combine shards without importing torch. An actor scores whole
evaluation batches and returns one summed loss per batch; :func:`combine` adds those sums in
batch order, so the metrics are bit-identical whatever the number of shards (given the same
per-batch forward passes).
"""

from __future__ import annotations

import math
from typing import Any, TypedDict


class EvalSums(TypedDict):
    """What one shard returns: summed loss per batch, correct predictions, scored targets."""

    loss_sums: list[float]
    correct: int
    count: int


def shard_rows(n: int, batch_size: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows [start, stop) of shard `shard` of `shards`: contiguous whole batches, balanced.

    Batches are the same as an unsharded pass over `n` rows (the last may be short); shard i
    gets batches [i * b // shards, (i + 1) * b // shards) of the b batches, possibly none.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is outside 0..{shards - 1}")
    batches = -(-n // batch_size)
    first, last = shard * batches // shards, (shard + 1) * batches // shards
    return min(first * batch_size, n), min(last * batch_size, n)


def combine(parts: list[EvalSums], task: str) -> dict[str, float]:
    """Metrics from shard sums given in shard order: loss (mean CE), accuracy, perplexity (LM)."""
    loss_sum, correct, count = 0.0, 0, 0
    for part in parts:
        for batch_loss in part["loss_sums"]:  # the order of an unsharded pass
            loss_sum += batch_loss
        correct += part["correct"]
        count += part["count"]
    loss = loss_sum / max(count, 1)
    metrics: dict[str, Any] = {"loss": loss, "accuracy": correct / max(count, 1)}
    if task == "causal_lm":
        metrics["perplexity"] = math.exp(min(loss, 700.0))
    return metrics
