"""`data.task=causal_lm`: next-token language modelling; perplexity and next-token accuracy.

Targets are the input ids with padding masked out (Hugging Face shifts them inside the model);
evaluation scores position t's prediction of token t + 1 over non-padding targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedray.core.config import ModelConfig
from fedray.core.registry import register
from fedray.data.base import EncodedData, FederatedData
from fedray.tasks._text import encode_text, token_inputs
from fedray.tasks.base import Batch, Objective


@dataclass
class CausalLMOptions:
    """Options of `data.task=causal_lm`: none."""

    name: str = "causal_lm"


def _targets(batch: Batch) -> Any:
    return batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)


@register("task", "causal_lm", CausalLMOptions)
class CausalLM:
    """Causal language modelling with a Hugging Face LM head."""

    objective = Objective("perplexity", "minimize")
    display = ("perplexity", "accuracy")
    model_kind = "causal_lm"
    needs_labels = False
    per_sample_loss = False  # the mean over all tokens of a batch, not over samples

    def __init__(self, options: CausalLMOptions | None = None) -> None:
        self.options = options or CausalLMOptions()

    def encode(self, data: FederatedData, model: ModelConfig, max_length: int) -> EncodedData:
        return encode_text(data, model, max_length, labels=False)

    def build_model(self, model: ModelConfig, num_labels: int | None, seed: int) -> Any:
        from fedray.models import load_model

        return load_model(model, "causal_lm", None, seed)

    def loss(self, model: Any, batch: Batch) -> Any:
        return model(**token_inputs(batch), labels=_targets(batch)).loss

    def eval_batch(self, model: Any, batch: Batch) -> dict[str, float]:
        import torch.nn.functional as F

        logits = model(**token_inputs(batch)).logits.float()
        labels = _targets(batch)
        logits, labels = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
        keep = labels != -100
        logits, labels = logits[keep], labels[keep]
        return {
            "loss_sum": F.cross_entropy(logits, labels, reduction="sum").item(),
            "correct": int((logits.argmax(-1) == labels).sum()),
            "count": labels.numel(),
        }

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        count = max(totals.get("count", 0), 1)
        loss = totals.get("loss_sum", 0.0) / count
        return {
            "perplexity": math.exp(min(loss, 700.0)),
            "accuracy": totals.get("correct", 0) / count,
            "loss": loss,
        }
