"""Model resolution, loading (lora/full), tokenizers and encoding, plus one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import peft
import pytest
import torch

from fedray.core.config import LoraConfig, ModelConfig
from fedray.core.errors import ModelError
from fedray.models import (
    encode,
    get_trainable_state,
    load_model,
    load_tokenizer,
    resolve_model_path,
)

CASES = [  # kind, task, finetune, trainable tensors
    ("lm", "causal_lm", "lora", 4),  # 2 layers x c_attn x (A, B)
    ("lm", "causal_lm", "full", None),
    ("cls", "classification", "lora", 10),  # 2 layers x (query, value) x (A, B) + head w, b
    ("cls", "classification", "full", None),
]


def test_resolve_builtin_and_local(tiny_cls_dir: str) -> None:
    builtin = Path(resolve_model_path("builtin:minilm"))
    assert (builtin / "config.json").is_file() and builtin.name == "model"
    assert resolve_model_path(tiny_cls_dir) == tiny_cls_dir
    assert resolve_model_path("some-org/some-model") == "some-org/some-model"  # a hub name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("builtin:nope", "unknown builtin model"),
        ("/nonexistent/model", "not a model directory (no config.json)"),
        ("./relative/missing", "not a model directory (no config.json)"),
    ],
)
def test_resolve_errors(name: str, fragment: str) -> None:
    with pytest.raises(ModelError) as info:
        resolve_model_path(name)
    message = str(info.value)
    assert message.startswith(f"model.name_or_path={name!r}: ") and fragment in message
    assert "\n" not in message


def test_dir_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path))


def test_unknown_hub_name_is_one_line_model_error() -> None:
    cfg = ModelConfig(name_or_path="fedray-no-such-org/no-such-model")
    with pytest.raises(ModelError) as info:
        load_model(cfg, "classification", 2, 0)
    message = str(info.value)
    assert "\n" not in message and "not found on the Hugging Face Hub" in message
    assert message.startswith("model.name_or_path='fedray-no-such-org/no-such-model': ")


@pytest.mark.parametrize(("kind", "task", "finetune", "n_tensors"), CASES)
def test_load_trainable_params(model_cfg, kind, task, finetune, n_tensors) -> None:
    model = load_model(model_cfg(kind, finetune), task, 3, seed=0)
    state = get_trainable_state(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(a.dtype == np.float32 and isinstance(a, np.ndarray) for a in state.values())
    if finetune == "lora":
        assert isinstance(model, peft.PeftModel) and len(state) == n_tensors
        assert sum(a.size for a in state.values()) == sum(p.numel() for p in trainable.values())
        for key in state:  # only adapters and the new head travel
            assert "lora_A" in key or "lora_B" in key or ".classifier." in key, key
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert frozen and not any("lora_" in n for n in frozen)
    else:
        assert not isinstance(model, peft.PeftModel)
        assert set(state) == set(model.state_dict())
        assert len(trainable) == len(list(model.parameters()))


def test_seed_fixes_new_head_and_lora_init(model_cfg) -> None:
    states = [
        get_trainable_state(load_model(model_cfg("cls"), "classification", 3, s)) for s in (0, 0, 1)
    ]
    key = next(k for k in states[0] if k.endswith("classifier.weight"))
    lora_a = next(k for k in states[0] if "lora_A" in k)
    assert all(np.array_equal(states[0][k], states[1][k]) for k in states[0])
    assert not np.array_equal(states[0][key], states[2][key])
    assert not np.array_equal(states[0][lora_a], states[2][lora_a])


@pytest.mark.parametrize(
    ("kind", "task", "targets", "listed"),
    [
        ("lm", "causal_lm", ["query", "value"], "c_attn"),
        ("cls", "classification", ["query", "q_proj"], "value"),
        ("cls", "classification", [], "query"),
    ],
)
def test_bad_target_modules(model_cfg, kind, task, targets, listed) -> None:
    with pytest.raises(ModelError) as info:
        load_model(model_cfg(kind, "lora", targets), task, 2, 0)
    message = str(info.value)
    assert message.startswith(f"model.lora.target_modules={targets}") and "\n" not in message
    assert listed in message


def test_all_linear_targets(model_cfg) -> None:
    model = load_model(model_cfg("cls", "lora", ["all-linear"]), "classification", 2, 0)
    adapted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in get_trainable_state(model)}
    assert {"query", "key", "value", "dense"} <= adapted


def test_bad_modules_to_save(tiny_cls_dir: str) -> None:
    cfg = ModelConfig(name_or_path=tiny_cls_dir, lora=LoraConfig(modules_to_save=["head_x"]))
    with pytest.raises(ModelError, match=r"modules_to_save=\['head_x'\]"):
        load_model(cfg, "classification", 2, 0)


def test_classification_needs_labels(model_cfg) -> None:
    with pytest.raises(ModelError, match="num_labels=None"):
        load_model(model_cfg("cls"), "classification", None, 0)


def test_gpt2_conv1d_lora_changes_output_after_update(model_cfg) -> None:
    model = load_model(model_cfg("lm"), "causal_lm", None, 0).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    before = model(input_ids=ids).logits
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    assert not torch.allclose(before, model(input_ids=ids).logits)


@pytest.mark.parametrize("kind", ["lm", "cls"])
def test_tokenizer_and_encode(model_cfg, kind: str) -> None:
    tokenizer = load_tokenizer(model_cfg(kind))
    assert tokenizer.pad_token is not None
    if kind == "lm":
        assert tokenizer.pad_token == tokenizer.eos_token  # GPT-2 has no pad token of its own
    texts = ["to be or not to be", "the winter of our discontent " * 10]
    out = encode(tokenizer, texts, 12)
    assert set(out) == {"input_ids", "attention_mask"}
    for a in out.values():
        assert a.dtype == np.int64 and a.shape == (2, 12)
    assert out["attention_mask"][1].all()  # truncated to max_length
    assert 0 < out["attention_mask"][0].sum() < 12  # padded
    assert (out["input_ids"][0][out["attention_mask"][0] == 0] == tokenizer.pad_token_id).all()


def test_builtin_minilm_tokenizer() -> None:
    tokenizer = load_tokenizer(ModelConfig())
    out = encode(tokenizer, ["Now is the winter of our discontent"], 64)
    assert out["input_ids"].shape == (1, 64) and out["input_ids"][0, 0] == tokenizer.cls_token_id
