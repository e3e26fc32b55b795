"""Client rules on the non-text tasks: SGD recipes, FedNova's client, and personalized rules that
evaluate on the data's own per-client test rows (leave-one-out)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.client.fednova import FedNovaRule, normaliser
from fedray.client.personal import DittoOptions, DittoRule, FedPerOptions, FedPerRule
from fedray.client.rules import LocalJob, LocalRule
from fedray.client.trainer import Recipe, Trainer, default_optimizer
from fedray.core.config import ModelConfig
from fedray.data.base import ClientBatch

MF = ModelConfig(name_or_path="scratch", finetune="full", arch={"name": "mf", "num_items": 30})
LOGREG = ModelConfig(name_or_path="scratch", finetune="full", arch={"name": "logreg"})


def _ratings(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user": np.zeros(n, np.int64),
        "item": rng.integers(0, 30, n),
        "rating": rng.uniform(1, 5, n).astype(np.float32),
    }


def _vectors(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(n, 60)).astype(np.float32), "labels": rng.integers(0, 10, n)}


def test_the_recipe_picks_sgd_with_momentum() -> None:
    p = [torch.nn.Parameter(torch.zeros(2))]
    sgd = default_optimizer(p, Recipe(1, 8, 0.1, 0.0, optimizer="sgd", momentum=0.9))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert isinstance(default_optimizer(p, Recipe(1, 8, 0.1, 0.0)), torch.optim.AdamW)
    with pytest.raises(ValueError, match=r"client\.optimizer='lion' is unknown"):
        default_optimizer(p, Recipe(1, 8, 0.1, 0.0, optimizer="lion"))


def test_fednova_client_trains_like_local_and_sends_its_normaliser() -> None:
    trainer = Trainer(LOGREG, "vector_classification", 10, seed=0)
    start = trainer.get_state()
    recipe = Recipe(
        epochs=2, batch_size=10, lr=0.01, weight_decay=0.0, optimizer="sgd", momentum=0.5
    )
    job = LocalJob(3, 11, _vectors(45), start)
    nova = FedNovaRule().run(trainer, job, recipe)
    local = LocalRule().run(trainer, job, recipe)
    assert all(np.array_equal(nova.trained[k], local.trained[k]) for k in start)
    assert nova.metrics["steps"] == 10  # 2 epochs x ceil(45 / 10)
    assert float(nova.extra["nova/a"][0]) == pytest.approx(normaliser(10, 0.5))
    with pytest.raises(ValueError, match=r"client\.optimizer=sgd"):
        FedNovaRule().run(trainer, job, Recipe(1, 10, 0.01, 0.0))


@pytest.mark.parametrize("rule_name", ["fedper", "ditto"])
def test_personalized_rules_evaluate_on_the_clients_own_test_rows(rule_name: str) -> None:
    trainer = Trainer(MF, "recommendation", None, seed=0)
    state = trainer.get_state()
    train, own = _ratings(40, 0), _ratings(1, 1)
    own["negatives"] = np.arange(10, 20)[None, :]
    if rule_name == "fedper":
        rule = FedPerRule(FedPerOptions(local_keys=["user"]), trainer=trainer, seed=0)
        shared = {k: v for k, v in state.items() if "user" not in k}
    else:
        rule = DittoRule(DittoOptions(lam=0.1), seed=0)
        shared = state
    recipe = Recipe(epochs=1, batch_size=8, lr=1e-2, weight_decay=0.0)
    result = rule.run(trainer, LocalJob(0, 5, ClientBatch(train, own), shared), recipe)
    assert result.num_samples == 40  # trains on every training row: no random hold-out
    assert {"personal_rmse", "personal_hr10", "personal_ndcg10"} <= set(result.metrics)
    # the evaluation is exactly the personal model's on `own`
    personal = (
        result.client_state if rule_name == "ditto" else {**result.trained, **result.client_state}
    )
    trainer.set_state(personal)
    assert trainer.evaluate(own)["rmse"] == pytest.approx(result.metrics["personal_rmse"])
    # a client the data gives no test row trains on everything and reports nothing personal
    none = {k: v[:0] for k, v in own.items()}
    quiet = rule.run(trainer, LocalJob(0, 5, ClientBatch(train, none), shared), recipe)
    assert quiet.num_samples == 40 and "personal_rmse" not in quiet.metrics
    # without declared test rows the seeded random hold-out applies, as before
    plain = rule.run(trainer, LocalJob(0, 5, train, shared), recipe)
    assert plain.num_samples == 32  # 40 - round(0.2 * 40)
