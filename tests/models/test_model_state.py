"""Trainable state get/set: exact round trips, copies, read-only input, key checks, counts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fedray.core.config import LoraConfig, ModelConfig
from fedray.core.errors import ModelError
from fedray.models import get_trainable_state, load_model, set_trainable_state

KINDS = [
    ("lm", "causal_lm", "lora"),
    ("lm", "causal_lm", "full"),
    ("cls", "classification", "lora"),
    ("cls", "classification", "full"),
]


def _random_like(
    model: torch.nn.Module, state: dict[str, np.ndarray], seed: int
) -> dict[str, np.ndarray]:
    """Random values of the state's shapes; tied weights (GPT-2 wte / lm_head) stay tied."""
    rng = np.random.default_rng(seed)
    ptr = {k: t.data_ptr() for k, t in model.state_dict().items()}
    by_ptr: dict[int, np.ndarray] = {}
    return {
        k: by_ptr.setdefault(ptr.get(k, -1 - i), rng.standard_normal(v.shape).astype(np.float32))
        for i, (k, v) in enumerate(state.items())
    }


@pytest.mark.parametrize(("kind", "task", "finetune"), KINDS)
def test_round_trip_exact_and_read_only(model_cfg, kind, task, finetune) -> None:
    model = load_model(model_cfg(kind, finetune), task, 3, 0)
    new = _random_like(model, get_trainable_state(model), 1)
    for a in new.values():
        a.flags.writeable = False  # as Ray's zero-copy reads come
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_trainable_state(model, new)
    got = get_trainable_state(model)
    assert got.keys() == new.keys()
    assert all(np.array_equal(got[k], new[k]) for k in new)
    # Returned arrays are copies: writing to them leaves the model alone.
    for a in got.values():
        a += 1.0
    again = get_trainable_state(model)
    assert all(np.array_equal(again[k], new[k]) for k in new)


def test_set_changes_model_output(model_cfg) -> None:
    model = load_model(model_cfg("cls"), "classification", 3, 0).eval()
    ids = torch.tensor([[2, 40, 41, 3]])
    before = model(input_ids=ids).logits.detach().clone()
    set_trainable_state(model, _random_like(model, get_trainable_state(model), 2))
    assert not torch.allclose(before, model(input_ids=ids).logits)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_set_rejects_wrong_keys_and_shapes(model_cfg, finetune: str) -> None:
    model = load_model(model_cfg("cls", finetune), "classification", 3, 0)
    state = get_trainable_state(model)
    first = next(iter(state))
    missing = {k: v for k, v in state.items() if k != first}
    with pytest.raises(ModelError, match="missing"):
        set_trainable_state(model, missing)
    with pytest.raises(ModelError, match="unexpected"):
        set_trainable_state(model, {**state, "extra.weight": np.zeros(3, np.float32)})
    bad = {**state, first: np.zeros((1, 1), np.float32)}
    with pytest.raises(ModelError, match="does not fit"):
        set_trainable_state(model, bad)


@pytest.mark.parametrize(
    ("finetune", "n_params", "n_tensors"),
    [("lora", 76_038, 26), ("full", 22_715_526, 105)],  # WORKLOAD.md W1 and W3
)
def test_minilm_workload_counts(finetune: str, n_params: int, n_tensors: int) -> None:
    lora = LoraConfig(r=8, alpha=16, dropout=0.0, target_modules=["query", "value"])
    model = load_model(ModelConfig(finetune=finetune, lora=lora), "classification", 6, 0)
    state = get_trainable_state(model)
    assert len(state) == n_tensors
    assert sum(a.size for a in state.values()) == n_params
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == n_params
