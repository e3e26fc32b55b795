"""Tiny saved models (GPT-2 causal LM, BERT encoder) for the model-layer tests."""

from __future__ import annotations

import pytest

from fedray.core.config import LoraConfig, ModelConfig
from fedray.models import save_tiny_causal_lm, save_tiny_classifier


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer GPT-2 with a BPE tokenizer, saved with save_pretrained."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_cls_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer BERT encoder (no head) with a WordPiece tokenizer, saved with save_pretrained."""
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def model_cfg(tiny_lm_dir: str, tiny_cls_dir: str):
    """Build a ModelConfig for 'lm' or 'cls' with the given finetune mode and LoRA targets."""

    def make(kind: str, finetune: str = "lora", targets: list[str] | None = None) -> ModelConfig:
        path, default = (
            (tiny_lm_dir, ["c_attn"]) if kind == "lm" else (tiny_cls_dir, ["query", "value"])
        )
        lora = LoraConfig(target_modules=targets if targets is not None else default)
        return ModelConfig(name_or_path=path, finetune=finetune, lora=lora)

    return make
