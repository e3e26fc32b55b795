"""Client rules of exact LoRA aggregation on a tiny model: FLoRA's merged delta in the forward
pass and in the export, FFA-LoRA's frozen A."""

from __future__ import annotations

import numpy as np
import torch
from peft.tuners.lora import LoraLayer

from fedray.client.rules import LocalJob
from fedray.client.trainer import Recipe, Trainer
from fedray.core import registry
from fedray.core.config import LoraConfig, ModelConfig


def _trainer(cls_cfg: ModelConfig) -> Trainer:
    cfg = ModelConfig(
        name_or_path=cls_cfg.name_or_path,
        lora=LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]),
    )
    return Trainer(cfg, "classification", 2, seed=0)


def test_merged_delta_layer_computes_w_plus_scaled_d_plus_ba(cls_cfg: ModelConfig) -> None:
    trainer = _trainer(cls_cfg)
    registry.build("rule", {"name": "merged_delta"}, trainer=trainer)
    state = trainer.get_state()
    deltas = [k for k in state if k.endswith("lora_delta")]
    assert len(deltas) == 4 and not any(state[k].any() for k in deltas)  # 2 layers x q, v
    rng = np.random.default_rng(0)
    state = {
        k: (rng.normal(size=v.shape).astype(np.float32) if "lora_" in k else v)
        for k, v in state.items()
    }
    trainer.set_state(state)
    name, layer = next((n, m) for n, m in trainer.model.named_modules() if isinstance(m, LoraLayer))
    d = torch.from_numpy(state[f"{name}.lora_delta"])
    a = layer.lora_A["default"].weight.detach()
    b = layer.lora_B["default"].weight.detach()
    x = torch.randn(3, a.shape[1])
    base = layer.base_layer
    expected = base(x) + layer.scaling["default"] * x @ (d + b @ a).T
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_merged_delta_is_exported_beside_the_adapter(cls_cfg: ModelConfig) -> None:
    trainer = _trainer(cls_cfg)
    registry.build("rule", {"name": "merged_delta"}, trainer=trainer)
    files = trainer.export_adapter(trainer.get_state())
    assert "attached_state.safetensors" in files and "adapter_model.safetensors" in files


def test_frozen_a_rule_trains_b_only(cls_cfg: ModelConfig, cls_data) -> None:
    trainer = _trainer(cls_cfg)
    rule = registry.build("rule", {"name": "frozen_a"}, trainer=trainer)
    full = trainer.get_state()
    shared = {k: v for k, v in full.items() if ".lora_A." not in k}
    batch = {k: v[:16] for k, v in cls_data.items()}
    result = rule.run(trainer, LocalJob(0, 1, batch, shared), Recipe(1, 8, 0.05, 0.01))
    assert set(result.trained) == set(shared)  # A does not travel
    after = trainer.get_state()
    a_keys = [k for k in full if ".lora_A." in k]
    assert a_keys and all(np.array_equal(after[k], full[k]) for k in a_keys)
    b_keys = [k for k in shared if ".lora_B." in k]
    assert all(not np.array_equal(result.trained[k], shared[k]) for k in b_keys)
