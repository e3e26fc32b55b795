"""Personalized rules: the hold-out split, FedPer's local head, Ditto's personal model."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.client.personal import (
    DittoOptions,
    DittoRule,
    FedPerOptions,
    FedPerRule,
    holdout_rows,
    select_rows,
)
from fedray.client.rules import LocalJob, LocalRule
from fedray.client.trainer import Recipe, Trainer
from fedray.core.config import ModelConfig

RECIPE = Recipe(epochs=1, batch_size=8, lr=3e-2, weight_decay=0.0, max_steps=3)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("n", "held"), [(10, 2), (48, 10), (3, 1), (2, 0), (1, 0), (0, 0)])
def test_holdout_sizes_are_disjoint_and_seeded(n: int, held: int) -> None:
    train, test = holdout_rows(n, 0.2, seed=0, client_id=5)
    assert len(test) == held and len(train) == n - held
    assert sorted([*train, *test]) == list(range(n))
    again = holdout_rows(n, 0.2, seed=0, client_id=5)
    assert np.array_equal(again[1], test)


def test_holdout_depends_on_client_id() -> None:
    assert not np.array_equal(holdout_rows(50, 0.2, 0, 1)[1], holdout_rows(50, 0.2, 0, 2)[1])


@pytest.fixture()
def trainer(cls_cfg: ModelConfig) -> Trainer:
    return Trainer(cls_cfg, "classification", 2, seed=0)


def test_fedper_sends_only_the_body_and_keeps_the_head(trainer: Trainer, cls_data) -> None:
    full = trainer.get_state()
    head = {k for k in full if "classifier" in k}
    body = {k: v for k, v in full.items() if k not in head}
    rule = FedPerRule(
        FedPerOptions(local_keys=["classifier"], holdout=0.25), trainer=trainer, seed=0
    )
    first = rule.run(trainer, LocalJob(2, 1, cls_data, body), RECIPE)
    assert first.trained.keys() == body.keys() and first.client_state.keys() == head
    assert first.num_samples == 36  # 48 - 12 held out
    assert 0.0 <= first.metrics["personal_accuracy"] <= 1.0
    # a first visit starts from the loaded head: same as training the full loaded state
    train_rows = holdout_rows(48, 0.25, 0, 2)[0]
    ref = LocalRule().run(trainer, LocalJob(2, 1, select_rows(cls_data, train_rows), full), RECIPE)
    assert _same(first.trained, {k: ref.trained[k] for k in body})
    # a later visit starts from the stored head, not the loaded one
    second = rule.run(trainer, LocalJob(2, 1, cls_data, body, first.client_state), RECIPE)
    assert not _same(second.trained, first.trained)


def test_ditto_global_update_is_local_and_lam_zero_personal_matches_it(
    trainer: Trainer, cls_data
) -> None:
    g = trainer.get_state()
    out = DittoRule(DittoOptions(lam=0.0, holdout=0.25), seed=0).run(
        trainer, LocalJob(2, 1, cls_data, g), RECIPE
    )
    train_rows = holdout_rows(48, 0.25, 0, 2)[0]
    ref = LocalRule().run(trainer, LocalJob(2, 1, select_rows(cls_data, train_rows), g), RECIPE)
    assert _same(out.trained, ref.trained)  # the update sent up is plain local training
    assert _same(out.client_state, ref.trained)  # lam = 0, v starts at w: F_i alone
    pulled = DittoRule(DittoOptions(lam=50.0, holdout=0.25), seed=0).run(
        trainer, LocalJob(2, 1, cls_data, g), RECIPE
    )
    assert _same(pulled.trained, ref.trained)

    def dist(s: dict[str, np.ndarray]) -> float:
        return sum(float(((s[k] - g[k]) ** 2).sum()) for k in g)

    assert dist(pulled.client_state) < dist(out.client_state)  # lam pulls v toward w
    assert {"personal_accuracy", "personal_loss", "personal_train_loss"} <= out.metrics.keys()
