"""Tiny saved models and tiny token datasets for the trainer tests."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.core.config import LoraConfig, ModelConfig
from fedray.models import encode, load_tokenizer, save_tiny_causal_lm, save_tiny_classifier

WORDS = (  # two disjoint vocabularies: the class of a text is which one it uses
    ["to", "be", "or", "not", "that", "is", "the", "question"],
    ["quick", "brown", "fox", "jumps", "over", "lazy", "dog"],
)


@pytest.fixture(scope="session")
def lm_cfg(tmp_path_factory: pytest.TempPathFactory) -> ModelConfig:
    """LoRA on the c_attn layers of a tiny saved GPT-2."""
    path = save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-gpt2"))
    return ModelConfig(name_or_path=path, lora=LoraConfig(target_modules=["c_attn"]))


@pytest.fixture(scope="session")
def cls_cfg(tmp_path_factory: pytest.TempPathFactory) -> ModelConfig:
    """LoRA on query/value of a tiny saved BERT encoder (new classifier head)."""
    return ModelConfig(name_or_path=save_tiny_classifier(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def cls_data(cls_cfg: ModelConfig) -> dict[str, np.ndarray]:
    """48 separable two-class texts of 3..7 words, tokenized to length 12."""
    rng = np.random.default_rng(0)
    labels = np.arange(48) % 2
    texts = [" ".join(rng.choice(WORDS[y], size=rng.integers(3, 8))) for y in labels]
    data = encode(load_tokenizer(cls_cfg), texts, 12)
    return {**data, "labels": labels.astype(np.int64)}


@pytest.fixture(scope="session")
def lm_data(lm_cfg: ModelConfig) -> dict[str, np.ndarray]:
    """24 short sentences (padded with eos to length 16) for next-token training."""
    texts = [" ".join(WORDS[i % 2][j % 4 :]) for i in range(6) for j in range(4)]
    return encode(load_tokenizer(lm_cfg), texts, 16)
