"""`data.task=classification`: one label per text, cross-entropy, accuracy.

Training loss is the Hugging Face model's own loss (cross-entropy of the classifier head), as in
the benchmark workloads; ``sample_losses`` gives the same cross-entropy per sample (its mean is
that loss: single-label classification, integer labels); evaluation sums each batch's
cross-entropy and correct argmax labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedray.core.config import ModelConfig
from fedray.core.registry import register
from fedray.data.base import EncodedData, FederatedData
from fedray.tasks._text import encode_text, token_inputs
from fedray.tasks.base import Batch, Objective, label_metrics, label_sums


@dataclass
class ClassificationOptions:
    """Options of `data.task=classification`: none."""

    name: str = "classification"


@register("task", "classification", ClassificationOptions)
class Classification:
    """Text classification with a sequence-classification head."""

    objective = Objective("accuracy", "maximize")
    display = ("accuracy", "loss")
    model_kind = "classification"
    needs_labels = True
    per_sample_loss = True

    def __init__(self, options: ClassificationOptions | None = None) -> None:
        self.options = options or ClassificationOptions()

    def encode(self, data: FederatedData, model: ModelConfig, max_length: int) -> EncodedData:
        return encode_text(data, model, max_length, labels=True)

    def build_model(self, model: ModelConfig, num_labels: int | None, seed: int) -> Any:
        from fedray.models import load_model

        return load_model(model, "classification", num_labels, seed)

    def loss(self, model: Any, batch: Batch) -> Any:
        return model(**token_inputs(batch), labels=batch["labels"]).loss

    def sample_losses(self, model: Any, batch: Batch) -> Any:
        import torch.nn.functional as F

        logits = model(**token_inputs(batch)).logits
        labels = batch["labels"]
        return F.cross_entropy(logits.view(len(labels), -1), labels.view(-1), reduction="none")

    def eval_batch(self, model: Any, batch: Batch) -> dict[str, float]:
        return label_sums(model(**token_inputs(batch)).logits.float(), batch["labels"])

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        return label_metrics(totals)
