"""Strategy hooks have typed defaults; per-round figures of the updates (losses, personal)."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.core import registry
from fedray.core.types import Update, spec_of
from fedray.pipeline import Pipeline
from fedray.server.protocol import update_metrics


def _update(cid: int, extra=None, **metrics: float) -> Update:
    return Update(cid, 1, None, 0, metrics=dict(metrics), extra=extra)


def test_plain_strategy_gets_the_defaults() -> None:
    fedavg = registry.build("algorithm", {"name": "fedavg"})
    g = {"w": np.zeros(2, np.float32)}
    fedavg.setup(num_clients=3)  # default: nothing happens
    assert fedavg.shared_state(g) is g
    assert fedavg.broadcast(g) is None
    assert fedavg.client_rule() == {"name": "local"}
    assert not fedavg.requires_individual_updates and fedavg.mode == "sync"


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("fedprox", {"name": "proximal", "mu": 0.01}),
        ("scaffold", {"name": "scaffold"}),
        ("ditto", {"name": "ditto", "lam": 0.1, "holdout": 0.2}),
        ("fedper", {"name": "fedper", "local_keys": ["classifier"], "holdout": 0.2}),
    ],
)
def test_algorithms_name_their_client_rule_as_a_registry_node(name: str, rule: dict) -> None:
    strategy = registry.build("algorithm", {"name": name})
    assert strategy.client_rule() == rule
    registry.parse("rule", rule)  # the node is a valid option of the `rule` group


def test_decoded_updates_keep_their_extra_state() -> None:
    none = registry.build("compression", {"name": "none"})
    pipeline = Pipeline(none, none, registry.build("privacy", {"name": "none"}))
    g = {"w": np.zeros(3, np.float32)}
    e1 = {"c/w": np.ones(3, np.float32)}
    payload = pipeline.encode_down(g, spec_of(g), seed=0)
    c = pipeline.decode(Update(1, 1, payload, payload.nbytes, extra=e1), spec_of(g))
    assert c.extra is e1 and c.client_id == 1


def test_round_figures_of_losses_and_personal_metrics() -> None:
    updates = [
        _update(0, loss=1.0, personal_accuracy=0.5, personal_loss=2.0),
        _update(1, loss=3.0, personal_accuracy=1.0, personal_loss=1.0),
        _update(2, loss=2.0),  # held nothing out: not counted
    ]
    m = update_metrics(updates, updates)
    assert m["train_loss"] == pytest.approx(2.0)
    assert m["eval_personal_accuracy"] == pytest.approx(0.75)
    assert m["eval_personal_loss"] == pytest.approx(1.5)
    assert m["eval_personal_clients"] == 2
    assert "eval_personal_accuracy" not in update_metrics(updates[2:], updates[2:])


def test_personal_metrics_pool_the_clients_evaluation_sums() -> None:
    from fedray.tasks.recommendation import Recommendation

    # one held-out rating each, errors 1 and 3: RMSE sqrt((1 + 9) / 2), not the mean of 1 and 3
    updates = [
        _update(0, loss=1.0, personal_rmse=1.0, personal_sum_se_sum=1.0, personal_sum_count=1.0),
        _update(1, loss=1.0, personal_rmse=3.0, personal_sum_se_sum=9.0, personal_sum_count=1.0),
    ]
    m = update_metrics(updates, updates, Recommendation())
    assert m["eval_personal_rmse"] == pytest.approx(5**0.5)
    assert m["eval_personal_loss"] == pytest.approx(5.0)
    assert m["eval_personal_clients"] == 2
    assert not any("sum" in k for k in m)
    assert update_metrics(updates, updates)["eval_personal_rmse"] == pytest.approx(2.0)
