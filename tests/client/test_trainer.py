"""Trainer: learning, determinism, step caps, extra loss, causal-LM metrics, adapter export."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from fedray.client.trainer import Recipe, Trainer
from fedray.core.config import ModelConfig

FIT = {"recipe": Recipe(epochs=1, batch_size=8, lr=3e-2, weight_decay=0.0)}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_fit_learns_separable_classes(cls_cfg: ModelConfig, cls_data) -> None:
    trainer = Trainer(cls_cfg, "classification", 2, seed=0)
    start = trainer.evaluate(cls_data, batch_size=16)
    fits = [trainer.fit(cls_data, seed=s, **FIT) for s in range(4)]
    end = trainer.evaluate(cls_data, batch_size=16)
    assert fits[0] == {**fits[0], "steps": 6.0, "samples": 48.0}
    assert fits[-1]["loss"] < 0.5 * fits[0]["loss"]
    assert end["loss"] < 0.3 * start["loss"] and end["accuracy"] == 1.0
    assert start["accuracy"] < 1.0


def test_fit_is_deterministic_and_seed_dependent(cls_cfg: ModelConfig, cls_data) -> None:
    a, b = (Trainer(cls_cfg, "classification", 2, seed=0) for _ in range(2))
    initial = a.get_state()
    assert _same(initial, b.get_state())
    ma, mb = a.fit(cls_data, seed=7, **FIT), b.fit(cls_data, seed=7, **FIT)
    assert ma["loss"] == mb["loss"] and _same(a.get_state(), b.get_state())
    # A reused trainer reset to the start state reproduces the fresh result (actor reuse).
    trained = a.get_state()
    a.set_state(initial)
    a.fit(cls_data, seed=7, **FIT)
    assert _same(a.get_state(), trained)
    b.set_state(initial)
    b.fit(cls_data, seed=8, **FIT)
    assert not _same(b.get_state(), trained)


def test_max_steps_epochs_and_read_only_inputs(cls_cfg: ModelConfig, cls_data) -> None:
    trainer = Trainer(cls_cfg, "classification", 2, seed=0)
    assert (
        trainer.fit(
            cls_data, seed=0, recipe=Recipe(epochs=2, batch_size=8, lr=3e-2, weight_decay=0.0)
        )["steps"]
        == 12
    )
    frozen = {k: v.copy() for k, v in cls_data.items()}
    for a in frozen.values():
        a.flags.writeable = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = trainer.fit(frozen, seed=0, recipe=Recipe(2, 8, 3e-2, 0.0, max_steps=5))
        trainer.evaluate(frozen)
    assert out["steps"] == 5 and out["samples"] == 48
    assert not [w for w in caught if "writable" in str(w.message)]


def test_extra_loss_is_applied_but_not_reported(cls_cfg: ModelConfig, cls_data) -> None:
    plain, prox = (Trainer(cls_cfg, "classification", 2, seed=0) for _ in range(2))
    calls: list[int] = []

    def penalty(model: torch.nn.Module) -> torch.Tensor:
        calls.append(1)
        return 10.0 * sum(p.pow(2).sum() for p in model.parameters() if p.requires_grad)

    m_plain = plain.fit(cls_data, seed=3, **FIT)
    m_prox = prox.fit(cls_data, seed=3, extra_loss=penalty, **FIT)
    assert len(calls) == 6
    assert not _same(plain.get_state(), prox.get_state())
    assert m_prox["loss"] < 5.0 and m_plain["loss"] < 5.0  # the task loss only (about ln 2)


def test_causal_lm_fit_and_evaluate(lm_cfg: ModelConfig, lm_data) -> None:
    trainer = Trainer(lm_cfg, "causal_lm", None, seed=0)
    before = trainer.evaluate(lm_data, batch_size=64)
    assert before["perplexity"] == pytest.approx(math.exp(before["loss"]))
    assert 0.0 <= before["accuracy"] <= 1.0
    # Token-mean CE over non-pad next tokens equals HF's own loss on one batch holding all rows.
    ids, mask = (torch.from_numpy(lm_data[k]) for k in ("input_ids", "attention_mask"))
    with torch.inference_mode():
        hf = trainer.model(
            input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)
        )
    assert before["loss"] == pytest.approx(hf.loss.item(), rel=1e-5)
    # More right padding changes nothing: pad positions are neither inputs nor targets.
    padded = {k: np.pad(v, ((0, 0), (0, 5))) for k, v in lm_data.items()}
    padded["input_ids"][:, -5:] = lm_data["input_ids"][0, -1]
    assert trainer.evaluate(padded, batch_size=7)["loss"] == pytest.approx(before["loss"], rel=1e-5)
    for seed in range(3):
        out = trainer.fit(lm_data, seed=seed, recipe=Recipe(2, 8, 1e-2, 0.0))
        assert out["steps"] == 6
    assert trainer.evaluate(lm_data)["loss"] < before["loss"] - 0.05


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft on v5
@pytest.mark.parametrize(("kind", "finetune"), [("cls", "lora"), ("cls", "full"), ("lm", "lora")])
def test_export_reloads_with_same_logits(
    kind: str, finetune: str, cls_cfg, lm_cfg, cls_data, lm_data, tmp_path: Path
) -> None:
    cfg = cls_cfg if kind == "cls" else lm_cfg
    cfg = ModelConfig(name_or_path=cfg.name_or_path, finetune=finetune, lora=cfg.lora)
    task, data = ("classification", cls_data) if kind == "cls" else ("causal_lm", lm_data)
    trainer = Trainer(cfg, task, 2, seed=0)
    trainer.fit(data, seed=1, **FIT)
    files = trainer.export_adapter(trainer.get_state())
    expected = (
        {"adapter_config.json", "adapter_model.safetensors"}
        if finetune == "lora"
        else {
            "config.json",
            "model.safetensors",
        }
    )
    assert expected <= set(files)
    for name, blob in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(blob)
    auto = AutoModelForSequenceClassification if kind == "cls" else AutoModelForCausalLM
    kwargs = {"num_labels": 2} if kind == "cls" else {}
    if finetune == "lora":
        torch.manual_seed(123)  # a different fresh head: the adapter must carry the trained one
        base = auto.from_pretrained(cfg.name_or_path, **kwargs)
        reloaded = peft.PeftModel.from_pretrained(base, str(tmp_path))
    else:
        reloaded = auto.from_pretrained(str(tmp_path))
    inputs = {k: torch.from_numpy(data[k][:8]) for k in ("input_ids", "attention_mask")}
    trainer.model.eval()
    reloaded.eval()
    with torch.inference_mode():
        want, got = trainer.model(**inputs).logits, reloaded(**inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_threads_are_set(cls_cfg: ModelConfig) -> None:
    old = torch.get_num_threads()
    try:
        Trainer(cls_cfg, "classification", 2, seed=0, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("kind", ["cls", "lm"])
def test_sharded_evaluation_is_bit_identical(kind: str, request) -> None:
    from fedray.tasks.base import add_sums, shard_rows

    cfg, data = request.getfixturevalue(f"{kind}_cfg"), request.getfixturevalue(f"{kind}_data")
    task = "classification" if kind == "cls" else "causal_lm"
    trainer = Trainer(cfg, task, 2 if kind == "cls" else None, seed=0)
    whole = trainer.evaluate(data, batch_size=5)
    n = len(data["input_ids"])
    for shards in (2, 3, n):
        parts = [trainer.eval_sums(data, 5, *shard_rows(n, 5, i, shards)) for i in range(shards)]
        assert trainer.task.metrics(add_sums(parts)) == whole


def test_opacus_wraps_the_trainer_seams_without_a_copied_loop(cls_cfg: ModelConfig, cls_data):
    """The trainer's factories are what `PrivacyEngine.make_private` takes and returns."""
    from opacus import GradSampleModule, PrivacyEngine
    from opacus.data_loader import DPDataLoader
    from opacus.optimizers import DPOptimizer

    trainer = Trainer(cls_cfg, "classification", 2, seed=0)
    engine = PrivacyEngine(accountant="rdp")
    seen: dict[str, object] = {}
    clip, lr = 1e-3, 0.1

    def wrap(model, optimizer, loader):
        out = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=0.0,
            max_grad_norm=clip,
            poisson_sampling=True,
        )
        seen.update(zip(("model", "optimizer", "loader"), out, strict=True))
        return out

    def sgd(params, recipe):
        return torch.optim.SGD(params, lr=recipe.lr)

    before = trainer.get_state()
    out = trainer.fit(cls_data, seed=0, recipe=Recipe(1, 8, lr, 0.0), make_optimizer=sgd, wrap=wrap)
    assert isinstance(seen["model"], GradSampleModule)
    assert isinstance(seen["optimizer"], DPOptimizer)
    assert isinstance(seen["loader"], DPDataLoader)
    seen["model"]._close()  # type: ignore[attr-defined]  # hooks off: the trainer is reusable
    after = trainer.get_state()
    moved = math.sqrt(sum(float(np.sum((after[k] - before[k]) ** 2)) for k in after))
    # every per-sample gradient was clipped to `clip`: a step moves at most lr * clip * |B| / 8
    # (|B| <= 48 samples in a Poisson batch of expected size 8)
    assert 0 < moved <= out["steps"] * lr * clip * 48 / 8
    assert engine.accountant.history  # the accountant saw the steps
    assert trainer.evaluate(cls_data)["accuracy"] >= 0.0
