"""`model.arch.name=logreg`: multinomial logistic regression on feature vectors.

The model of the FedProx paper's Synthetic(alpha, beta) experiments (Li et al. 2020): one
linear layer ``linear`` (weight [classes, in_features], bias [classes]) whose logits go into
softmax cross-entropy. Initialised at zero, as the paper's code does (the loss is convex).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedray.core.errors import ModelError
from fedray.core.registry import register
from fedray.models.paths import SCRATCH

if TYPE_CHECKING:
    from fedray.core.config import ModelConfig


@dataclass
class LogRegOptions:
    """Options of `model.arch=logreg`."""

    name: str = "logreg"
    in_features: int = 60  # the Synthetic(alpha, beta) dimension; must match the data's
    zero_init: bool = True  # false: torch's default (Kaiming-uniform) init, seeded

    def check(self) -> None:
        if self.in_features < 1:
            raise ValueError(f"in_features={self.in_features} must be >= 1")

    def check_against(self, model: ModelConfig) -> str | None:
        if model.name_or_path != SCRATCH or model.finetune != "full":
            return (
                "arch=logreg has no pretrained checkpoints: set model.name_or_path=scratch "
                "and model.finetune=full"
            )
        return None


@register("arch", "logreg", LogRegOptions)
class LogRegArchitecture:
    """Linear(in_features, classes)."""

    kinds = ("vector_classification",)

    def __init__(self, options: LogRegOptions | None = None) -> None:
        self.options = options or LogRegOptions()

    def build(self, model: ModelConfig, kind: str, num_labels: int | None, seed: int) -> Any:
        import torch

        from fedray.models.nets import LogisticRegression

        if not num_labels or num_labels < 2:
            raise ModelError(f"num_labels={num_labels}: classification needs >= 2 classes")
        torch.manual_seed(seed)
        net = LogisticRegression(self.options.in_features, num_labels)
        if self.options.zero_init:
            with torch.no_grad():
                net.linear.weight.zero_()
                net.linear.bias.zero_()
        return net
