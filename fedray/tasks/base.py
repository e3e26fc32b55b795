"""The task interface: what a task owns (batches, loss, metrics, the sweep objective).

A task is one module in this package, registered in group `task` and selected by `data.task`.
Nothing else in fedray branches on the task name: the trainer asks the task for the loss of a
batch, evaluation asks it for per-batch sums and turns totals into metrics, the tracker and the
round table show its `display` metrics, and sweepers optimise its `objective`. A task whose loss
is the mean of per-sample losses says so (``per_sample_loss``) and gives them
(:class:`PerSampleLoss`): per-sample gradient clipping (``privacy=dp_sgd``) needs that property,
and ghost clipping needs the losses themselves.

Task modules import torch only inside the methods that need it, so the coordinator (which turns
totals into metrics) never loads torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from fedray.core.config import ModelConfig
    from fedray.data.base import EncodedData, FederatedData

Batch = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class Objective:
    """The metric a sweep optimises (logged as ``eval_<metric>``) and its direction."""

    metric: str
    direction: str  # maximize | minimize

    @property
    def key(self) -> str:
        """The MLflow metric key."""
        return f"eval_{self.metric}"


class Task(Protocol):
    """One kind of learning problem."""

    objective: ClassVar[Objective]
    display: ClassVar[tuple[str, ...]]  # eval metrics shown in the round table, in order
    needs_labels: ClassVar[bool]  # whether samples carry class labels (label-skew partitions)
    model_kind: ClassVar[str]  # the model it trains; `model.arch` must build it (fedray.models)
    per_sample_loss: ClassVar[bool]  # loss() is the mean of sample_losses() (PerSampleLoss)

    def encode(self, data: FederatedData, model: ModelConfig, max_length: int) -> EncodedData:
        """Arrays of every sample a client or the test set uses (runs once, off the driver)."""
        ...

    def build_model(self, model: ModelConfig, num_labels: int | None, seed: int) -> Any:
        """The model to train (a torch module, peft-wrapped for LoRA)."""
        ...

    def loss(self, model: Any, batch: Batch) -> torch.Tensor:
        """The training loss of one batch (a scalar tensor)."""
        ...

    def eval_batch(self, model: Any, batch: Batch) -> dict[str, float]:
        """Additive sums over one evaluation batch (e.g. loss_sum, correct, count)."""
        ...

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        """Metrics from the sums over the whole test set."""
        ...


class PerSampleLoss(Task, Protocol):
    """A task whose training loss is the mean of per-sample losses, which it also gives
    (``per_sample_loss = True``): one sample's presence changes only its own term."""

    def sample_losses(self, model: Any, batch: Batch) -> torch.Tensor:
        """The training loss of each sample of a batch, shape [rows]: their mean is
        :meth:`Task.loss` of the batch (up to float rounding)."""
        ...


PERSONAL_SUM = "personal_sum_"  # a client's personal-evaluation sums, pooled by the driver


def add_sums(parts: list[list[dict[str, float]]]) -> dict[str, float]:
    """Totals of per-batch sums, added in batch order (shard by shard), so any sharding of the
    test set into whole batches gives bit-identical totals."""
    totals: dict[str, float] = {}
    for part in parts:
        for batch in part:
            for key, value in batch.items():
                totals[key] = totals.get(key, 0) + value
    return totals


def label_sums(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Per-batch sums of a classifier's evaluation: summed cross-entropy, correct, count."""
    import torch.nn.functional as F

    return {
        "loss_sum": F.cross_entropy(logits, labels, reduction="sum").item(),
        "correct": int((logits.argmax(-1) == labels).sum()),
        "count": labels.numel(),
    }


def label_metrics(totals: dict[str, float]) -> dict[str, float]:
    """Accuracy and mean loss from the totals of :func:`label_sums`."""
    count = max(totals.get("count", 0), 1)
    correct, loss_sum = totals.get("correct", 0), totals.get("loss_sum", 0.0)
    return {"accuracy": correct / count, "loss": loss_sum / count}


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


def num_rows(columns: dict[str, np.ndarray]) -> int:
    """Samples in a dict of column arrays (all share their first dimension)."""
    return len(next(iter(columns.values())))


def client_rows(data: FederatedData) -> tuple[np.ndarray, list[np.ndarray]]:
    """(corpus indices some client uses, ascending; each client's rows of that array, in the
    client's training order): what an encoder turns into the `train` columns."""
    used = np.unique(np.concatenate([c for c in data.clients if len(c)] or [np.empty(0, int)]))
    row_of = np.full(len(data.corpus), -1, dtype=np.int64)
    row_of[used] = np.arange(len(used))
    return used, [row_of[c] for c in data.clients]
