"""One shared frozen base: models built around zero-copy views of another model's export."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fedray.client.trainer import Recipe, Trainer
from fedray.core.config import LoraConfig, ModelConfig
from fedray.core.errors import ModelError
from fedray.models import save_llama, shared
from fedray.models.shared import BaseTensors


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny LLaMA-style model: rotary buffers are non-persistent (not in the state dict)."""
    return save_llama(tmp_path_factory.mktemp("tiny-llama"), "tiny")


def _read_only(base: BaseTensors) -> BaseTensors:
    """What Ray's object store hands an actor: a pickled copy whose arrays are read-only."""
    base = pickle.loads(pickle.dumps(base))
    for a in base.frozen.values():
        a.setflags(write=False)
    return base


CASES = {  # name -> (task, head labels, LoRA targets)
    "gpt2": ("causal_lm", None, ["c_attn"]),  # Conv1D layers, lm_head tied to wte
    "bert": ("classification", 3, ["query", "value"]),  # new head in modules_to_save
    "llama": ("causal_lm", None, ["q_proj", "v_proj"]),
}


def _cfg(case: str, dirs: dict[str, str], dtype: str = "float32") -> ModelConfig:
    targets = CASES[case][2]
    save = ["classifier"] if case == "bert" else None
    lora = LoraConfig(target_modules=targets, modules_to_save=save)
    return ModelConfig(name_or_path=dirs[case], lora=lora, dtype=dtype)


@pytest.fixture(scope="module")
def dirs(tiny_lm_dir: str, tiny_cls_dir: str, llama_dir: str) -> dict[str, str]:
    return {"gpt2": tiny_lm_dir, "bert": tiny_cls_dir, "llama": llama_dir}


def _data(case: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    data = {
        "input_ids": rng.integers(5, 100, size=(12, 10)),
        "attention_mask": np.ones((12, 10), np.int64),
    }
    if case == "bert":
        data["labels"] = (np.arange(12) % 3).astype(np.int64)
    return data


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_model_built_on_the_shared_base_trains_bit_identically(case, dirs) -> None:
    task, labels, _ = CASES[case]
    cfg = _cfg(case, dirs)
    own = Trainer(cfg, task, labels, seed=0)
    base = _read_only(own.export_base())
    other = Trainer(cfg, task, labels, seed=0, base=base)
    frozen = {n: p for n, p in other.model.named_parameters() if not p.requires_grad}
    assert frozen and all(shared.is_shared(p, base) for p in frozen.values())
    trainable = [p for p in other.model.parameters() if p.requires_grad]
    assert trainable and not any(shared.is_shared(p, base) for p in trainable)
    n = base.frozen_nbytes  # tied weights (gpt2's lm_head) count once
    assert shared.frozen_bytes([(other.model, base)]) == (n, n)
    assert shared.frozen_bytes([(own.model, base)]) == (n, 0)  # its own copy, not the base's
    recipe = Recipe(epochs=1, batch_size=4, lr=1e-2, weight_decay=0.01)
    a = own.fit(_data(case), seed=7, recipe=recipe)
    b = other.fit(_data(case), seed=7, recipe=recipe)
    assert a["loss"] == b["loss"]
    sa, sb = own.get_state(), other.get_state()
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert own.evaluate(_data(case), 4) == other.evaluate(_data(case), 4)


def test_tied_weights_stay_tied(dirs) -> None:
    own = Trainer(_cfg("gpt2", dirs), "causal_lm", None, seed=0)
    other = Trainer(_cfg("gpt2", dirs), "causal_lm", None, seed=0, base=own.export_base())
    inner = other.model.get_base_model()
    assert inner.lm_head.weight is inner.transformer.wte.weight


def test_the_exporter_adopts_the_shared_copy(dirs) -> None:
    own = Trainer(_cfg("llama", dirs), "causal_lm", None, seed=0)
    before = own.get_state()
    base = _read_only(own.export_base())
    own.adopt_base(base)
    frozen = [p for p in own.model.parameters() if not p.requires_grad]
    assert all(shared.is_shared(p, base) for p in frozen)
    assert shared.frozen_bytes([(own.model, base)]) == (base.frozen_nbytes,) * 2
    after = own.get_state()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_bfloat16_base_is_stored_as_bits_and_shared(dirs) -> None:
    own = Trainer(_cfg("llama", dirs, "bfloat16"), "causal_lm", None, seed=0)
    base = _read_only(own.export_base())
    assert {a.dtype for a in base.frozen.values()} == {np.dtype(np.uint16)}
    other = Trainer(_cfg("llama", dirs, "bfloat16"), "causal_lm", None, seed=0, base=base)
    dtypes = {(p.requires_grad, p.dtype) for p in other.model.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}
    recipe = Recipe(epochs=1, batch_size=4, lr=1e-2, weight_decay=0.0)
    a = own.fit(_data("llama"), seed=1, recipe=recipe)
    b = other.fit(_data("llama"), seed=1, recipe=recipe)
    assert a["loss"] == b["loss"] and np.isfinite(a["loss"])
    sa, sb = own.get_state(), other.get_state()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_a_base_of_another_config_is_refused_in_one_line(dirs) -> None:
    own = Trainer(_cfg("bert", dirs), "classification", 3, seed=0)
    base = own.export_base()
    other = _cfg("bert", dirs)
    other.lora.r = 4
    with pytest.raises(ModelError, match="shared base was built for") as info:
        Trainer(other, "classification", 3, seed=0, base=base)
    assert "\n" not in str(info.value)


def test_full_fine_tuning_has_nothing_to_share(dirs) -> None:
    cfg = _cfg("bert", dirs)
    cfg.finetune = "full"
    own = Trainer(cfg, "classification", 3, seed=0)
    with pytest.raises(ModelError, match="no frozen parameter"):
        own.export_base()
