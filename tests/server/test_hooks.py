"""The driver's strategy hooks: defaults for plain strategies, extras matched by client id."""

from __future__ import annotations

import numpy as np
import pytest

from fedray import registry
from fedray.server import hooks
from fedray.strategies.base import Contribution
from fedray.types import ClientUpdate


def _update(cid: int, extra=None, **metrics: float) -> ClientUpdate:
    return ClientUpdate(cid, 1, None, 0, metrics=dict(metrics), extra=extra)


def test_plain_strategy_gets_the_defaults() -> None:
    fedavg = registry.build("algorithm", {"name": "fedavg"})
    g = {"w": np.zeros(2, np.float32)}
    hooks.setup(fedavg, num_clients=3)  # no hook: nothing happens
    assert hooks.shared_state(fedavg, g) is g
    assert hooks.broadcast(fedavg, g) is None
    assert hooks.extra_nbytes(None) == 0


def test_extras_follow_their_client_and_count_bytes() -> None:
    e1 = {"c/w": np.ones(3, np.float32)}
    contributions = [Contribution(2, {}, 1), Contribution(1, {}, 1)]
    hooks.attach_extras(contributions, [_update(1, e1), _update(2)])
    assert contributions[0].extra is None and contributions[1].extra is e1
    assert hooks.extra_nbytes(e1) == 12


def test_losses_and_personal_metrics() -> None:
    updates = [
        _update(0, loss=1.0, personal_accuracy=0.5, personal_loss=2.0),
        _update(1, loss=3.0, personal_accuracy=1.0, personal_loss=1.0),
        _update(2, loss=2.0),  # held nothing out: not counted
    ]
    assert hooks.losses(updates) == {0: 1.0, 1: 3.0, 2: 2.0}
    assert hooks.personal_metrics(updates) == pytest.approx(
        {"eval_personal_accuracy": 0.75, "eval_personal_loss": 1.5, "eval_personal_clients": 2}
    )
    assert hooks.personal_metrics(updates[2:]) == {}
