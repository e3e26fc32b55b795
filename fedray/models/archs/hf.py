"""`model.arch.name=hf`: the Hugging Face checkpoint at `model.name_or_path` (text models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedray.core.registry import register
from fedray.models.paths import SCRATCH

if TYPE_CHECKING:
    from fedray.core.config import ModelConfig


@dataclass
class HfOptions:
    """Options of `model.arch=hf`: none (the checkpoint, LoRA and dtype are `model.*`)."""

    name: str = "hf"

    def check_against(self, model: ModelConfig) -> str | None:
        if model.name_or_path == SCRATCH:
            return (
                "arch=hf loads a pretrained checkpoint; set model.name_or_path to a hub name "
                "or a local model directory"
            )
        return None


@register("arch", "hf", HfOptions)
class HfArchitecture:
    """`AutoModelForSequenceClassification` / `AutoModelForCausalLM`, LoRA or full (W1-W3)."""

    kinds = ("classification", "causal_lm")

    def __init__(self, options: HfOptions | None = None) -> None:
        self.options = options or HfOptions()

    def build(self, model: ModelConfig, kind: str, num_labels: int | None, seed: int) -> Any:
        from fedray.models.loading import load_model

        return load_model(model, kind, num_labels, seed)
