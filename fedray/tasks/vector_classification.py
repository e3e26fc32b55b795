"""`data.task=vector_classification`: a class per feature vector, cross-entropy, accuracy.

Samples come from the source as ``features["x"]`` (float [N, d]); the model (``model.arch=
logreg``) maps a batch of vectors to logits. The FedProx paper's Synthetic(alpha, beta) task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.config import ModelConfig
from fedray.core.errors import DataError, ModelError
from fedray.core.registry import register
from fedray.data.base import EncodedData, FederatedData
from fedray.tasks.base import Batch, Objective, client_rows, label_metrics, label_sums


@dataclass
class VectorClassificationOptions:
    """Options of `data.task=vector_classification`: none."""

    name: str = "vector_classification"


@register("task", "vector_classification", VectorClassificationOptions)
class VectorClassification:
    """Classification of dense feature vectors (multinomial logistic regression)."""

    objective = Objective("accuracy", "maximize")
    display = ("accuracy", "loss")
    needs_labels = True
    model_kind = "vector_classification"
    per_sample_loss = True

    def __init__(self, options: VectorClassificationOptions | None = None) -> None:
        self.options = options or VectorClassificationOptions()

    def encode(self, data: FederatedData, model: ModelConfig, max_length: int) -> EncodedData:
        corpus = data.corpus
        x = corpus.features.get("x")
        if x is None or corpus.labels is None:
            raise DataError(
                "data.task=vector_classification needs feature vectors (features 'x') and "
                f"labels; data.name gives {sorted(corpus.features) or 'text'}"
            )
        x = np.asarray(x, dtype=np.float32)
        expected = model.architecture.in_features
        if x.ndim != 2 or x.shape[1] != expected:
            raise ModelError(
                f"model.arch.in_features={expected} but the data's vectors have "
                f"{x.shape[1:]} features; set model.arch.in_features={x.shape[-1]}"
            )
        used, clients = client_rows(data)

        def columns(rows: np.ndarray) -> dict[str, np.ndarray]:
            return {"x": x[rows], "labels": corpus.labels[rows].astype(np.int64)}

        return EncodedData(columns(used), columns(data.test_idx), clients)

    def build_model(self, model: ModelConfig, num_labels: int | None, seed: int) -> Any:
        from fedray.models import build_model

        return build_model(model, self.model_kind, num_labels, seed)

    def loss(self, model: Any, batch: Batch) -> Any:
        import torch.nn.functional as F

        return F.cross_entropy(model(batch["x"]), batch["labels"])

    def sample_losses(self, model: Any, batch: Batch) -> Any:
        import torch.nn.functional as F

        return F.cross_entropy(model(batch["x"]), batch["labels"], reduction="none")

    def eval_batch(self, model: Any, batch: Batch) -> dict[str, float]:
        return label_sums(model(batch["x"]).float(), batch["labels"])

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        return label_metrics(totals)
