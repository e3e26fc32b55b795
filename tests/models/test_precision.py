"""Base precision: model.dtype stores the frozen base in bf16/fp16 (trainables float32, autocast
on CPU too), gradient checkpointing, and 4/8-bit bitsandbytes bases (CUDA only)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from fedray.client.trainer import Recipe, Trainer
from fedray.core.config import LoraConfig, ModelConfig
from fedray.core.errors import ModelError
from fedray.models import save_llama

CUDA = torch.cuda.is_available()
BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_llama(tmp_path_factory.mktemp("tiny-llama"), "tiny")


def _cfg(path: str, **kw) -> ModelConfig:
    return ModelConfig(
        name_or_path=path, lora=LoraConfig(target_modules=["q_proj", "v_proj"]), **kw
    )


def _data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(5, 300, (8, 12)), "attention_mask": np.ones((8, 12), int)}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_base_with_float32_trainables(llama_dir: str, dtype: str) -> None:
    trainer = Trainer(_cfg(llama_dir, dtype=dtype), "causal_lm", None, seed=0)
    kinds = {(p.requires_grad, p.dtype) for p in trainer.model.parameters()}
    assert kinds == {(False, getattr(torch, dtype)), (True, torch.float32)}
    before = trainer.get_state()
    metrics = trainer.fit(_data(), seed=0, recipe=Recipe(1, 4, 1e-2, 0.0))
    after = trainer.get_state()
    assert np.isfinite(metrics["loss"]) and metrics["steps"] == 2
    assert all(v.dtype == np.float32 for v in after.values())
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # it trained
    assert np.isfinite(trainer.evaluate(_data(), 4)["loss"])


def test_bfloat16_halves_the_frozen_bytes(llama_dir: str) -> None:
    sizes = {}
    for dtype in ("float32", "bfloat16"):
        model = Trainer(_cfg(llama_dir, dtype=dtype), "causal_lm", None, seed=0).model
        frozen = [p for p in model.parameters() if not p.requires_grad]
        sizes[dtype] = sum(p.numel() * p.element_size() for p in frozen)
    assert sizes["bfloat16"] * 2 == sizes["float32"]


def test_gradient_checkpointing_computes_the_same_update(llama_dir: str) -> None:
    states = []
    for checkpointing in (False, True):
        cfg = _cfg(llama_dir, gradient_checkpointing=checkpointing)
        trainer = Trainer(cfg, "causal_lm", None, seed=0)
        trainer.fit(_data(), seed=3, recipe=Recipe(1, 4, 1e-2, 0.0))
        states.append(trainer.get_state())
    plain, checkpointed = states
    assert all(np.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


def test_quantize_without_cuda_is_one_line(llama_dir: str) -> None:
    if CUDA:
        pytest.skip("this machine has CUDA: the error path is for CPU-only machines")
    with pytest.raises(ModelError, match="needs a CUDA device") as info:
        Trainer(_cfg(llama_dir, quantize="4bit"), "causal_lm", None, seed=0)
    assert "\n" not in str(info.value)


def test_quantize_needs_gpu_actors_in_the_config(tmp_path) -> None:
    from fedray.app.cli import compose
    from fedray.app.spec import build_spec
    from fedray.core.errors import ConfigError

    with pytest.raises(ConfigError, match="runs on CUDA only"):
        build_spec(compose([f"tracking.uri=sqlite:///{tmp_path}/m.db", "model.quantize=4bit"]))


@pytest.mark.skipif(
    not (CUDA and BNB), reason="4-bit QLoRA needs a CUDA GPU and bitsandbytes (GPU-only here)"
)
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantized_base_trains_its_adapters(llama_dir: str, bits: str) -> None:
    cfg = _cfg(llama_dir, dtype="bfloat16", quantize=bits, gradient_checkpointing=True)
    trainer = Trainer(cfg, "causal_lm", None, seed=0, device="cuda")
    before = trainer.get_state()
    metrics = trainer.fit(_data(), seed=0, recipe=Recipe(1, 4, 1e-2, 0.0))
    after = trainer.get_state()
    assert np.isfinite(metrics["loss"])
    assert any(not np.array_equal(before[k], after[k]) for k in before)
