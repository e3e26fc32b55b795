"""Client update rules: loss terms and SCAFFOLD's c_i update by hand; rules on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.client.rules import (
    LocalJob,
    LocalRule,
    ProximalOptions,
    ProximalRule,
    ScaffoldRule,
    linear_loss,
    proximal_loss,
    scaffold_control_update,
)
from fedray.client.trainer import Recipe, Trainer
from fedray.core.config import ModelConfig
from fedray.core.extra import tagged

RECIPE = Recipe(epochs=1, batch_size=8, lr=3e-2, weight_decay=0.0, max_steps=3)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _param(*values: float) -> dict[str, torch.nn.Parameter]:
    return {"w": torch.nn.Parameter(torch.tensor(values))}


def test_proximal_loss_value_and_gradient() -> None:
    params = _param(1.0, 2.0)
    loss = proximal_loss(params, {"w": torch.tensor([0.0, 1.0])}, mu=0.5)(torch.nn.Module())
    assert loss.item() == pytest.approx(0.5)  # 0.5 / 2 * (1 + 1)
    loss.backward()
    assert params["w"].grad.tolist() == pytest.approx([0.5, 0.5])  # mu * (p - anchor)


def test_linear_loss_adds_the_direction_to_the_gradient() -> None:
    params = _param(3.0, -1.0)
    linear_loss(params, {"w": torch.tensor([0.25, -2.0])})(torch.nn.Module()).backward()
    assert params["w"].grad.tolist() == [0.25, -2.0]


def test_scaffold_control_update_is_option_two_under_sgd() -> None:
    c_i, c = np.float32([1.0, 0.0]), np.float32([0.5, 1.0])
    d = c - c_i  # the correction each step's gradient carried
    raw = [np.float32([0.2, -0.4]), np.float32([0.6, 0.0])]  # uncorrected minibatch gradients
    grad_sum = sum(g + d for g in raw)
    out = scaffold_control_update({"w": grad_sum}, {"w": d}, steps=2)
    np.testing.assert_allclose(out["w"], [0.4, -0.2], rtol=1e-6)  # mean of `raw`
    lr, x = 0.25, np.float32([2.0, 2.0])  # SGD: y = x - lr * sum(g + d)
    y = x - lr * grad_sum
    option_two = c_i - c + (x - y) / (2 * lr)
    np.testing.assert_allclose(out["w"], option_two, rtol=1e-6)
    with pytest.raises(ValueError, match="no local step"):
        scaffold_control_update({"w": grad_sum}, {"w": d}, steps=0)


@pytest.fixture()
def trainer(cls_cfg: ModelConfig) -> Trainer:
    return Trainer(cls_cfg, "classification", 2, seed=0)


def test_local_rule_is_plain_fit(trainer: Trainer, cls_data) -> None:
    g = trainer.get_state()
    result = LocalRule().run(trainer, LocalJob(3, 7, cls_data, g, client_state=None), RECIPE)
    trainer.set_state(g)
    metrics = trainer.fit(cls_data, seed=7, recipe=RECIPE)
    assert _same(result.trained, trainer.get_state())
    assert result.metrics["loss"] == metrics["loss"] and result.num_samples == 48
    assert result.client_state is None and result.extra is None


def test_fedprox_with_mu_zero_is_local_and_mu_pulls_toward_global(
    trainer: Trainer, cls_data
) -> None:
    g = trainer.get_state()
    job = LocalJob(0, 1, cls_data, g)
    local = LocalRule().run(trainer, job, RECIPE).trained
    assert _same(ProximalRule(ProximalOptions(mu=0.0)).run(trainer, job, RECIPE).trained, local)
    prox = ProximalRule(ProximalOptions(mu=10.0)).run(trainer, job, RECIPE).trained

    def dist(s: dict[str, np.ndarray]) -> float:
        return sum(float(((s[k] - g[k]) ** 2).sum()) for k in g)

    assert dist(prox) < dist(local)


def _zero_c_job(trainer: Trainer, cls_data) -> tuple[dict[str, np.ndarray], LocalJob]:
    """The trainer's state and a SCAFFOLD job for client 0 whose server control variate is 0."""
    g = trainer.get_state()
    zeros = {k: np.zeros_like(v) for k, v in g.items()}
    return g, LocalJob(0, 1, cls_data, g, client_state=None, server_extra=tagged(zeros, "c"))


def test_scaffold_rule_with_zero_variates_is_local_and_returns_delta_c(
    trainer: Trainer, cls_data
) -> None:
    g, job = _zero_c_job(trainer, cls_data)
    local = LocalRule().run(trainer, job, RECIPE)
    out = ScaffoldRule().run(trainer, job, RECIPE)
    assert _same(out.trained, local.trained)
    assert int(out.metrics["steps"]) == 3
    for k in g:  # delta c = c_i+ - 0
        np.testing.assert_array_equal(out.extra[f"c/{k}"], out.client_state[k])


def test_scaffold_control_variate_is_the_gradient_not_the_displacement(
    trainer: Trainer, cls_data
) -> None:
    """One step: c_i+ is the minibatch gradient at x, whatever the learning rate."""
    g, job = _zero_c_job(trainer, cls_data)
    one_step = [Recipe(1, 8, lr, 0.0, max_steps=1) for lr in (1e-3, 1e-1)]
    small, large = (ScaffoldRule().run(trainer, job, r).client_state for r in one_step)
    assert _same(small, large)
    trainer.set_state(g)  # the same first minibatch by hand: seed, randperm, forward, backward
    model = trainer.model
    model.train()
    model.zero_grad()
    torch.manual_seed(1)
    idx = torch.randperm(48)[:8]
    ids, mask, labels = (
        torch.as_tensor(cls_data[k])[idx] for k in ("input_ids", "attention_mask", "labels")
    )
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    params = dict(model.named_parameters())
    grads = {n: p.grad for n, p in params.items() if p.requires_grad}
    flat_small = np.sort(np.concatenate([v.ravel() for v in small.values()]))
    flat_hand = np.sort(np.concatenate([t.numpy().ravel() for t in grads.values()]))
    np.testing.assert_allclose(flat_small, flat_hand, rtol=1e-5, atol=1e-7)


def test_scaffold_correction_changes_training(trainer: Trainer, cls_data) -> None:
    g = trainer.get_state()
    c = {k: np.full_like(v, 0.1) for k, v in g.items()}
    zeros = {k: np.zeros_like(v) for k, v in g.items()}
    plain = ScaffoldRule().run(
        trainer, LocalJob(0, 1, cls_data, g, None, tagged(zeros, "c")), RECIPE
    )
    corrected = ScaffoldRule().run(
        trainer, LocalJob(0, 1, cls_data, g, None, tagged(c, "c")), RECIPE
    )
    assert not _same(plain.trained, corrected.trained)
    with pytest.raises(ValueError, match="no extra state"):
        ScaffoldRule().run(trainer, LocalJob(0, 1, cls_data, g), RECIPE)
