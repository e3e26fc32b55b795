"""SCAFFOLD's server half on hand-checked tensors."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.core import registry
from fedray.core.extra import tagged
from fedray.core.types import Contribution


def _v(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def _scaffold(num_clients: int = 4, **options: float):
    s = registry.build("algorithm", {"name": "scaffold", **options})
    s.setup(num_clients=num_clients)
    return s


def test_broadcast_starts_at_zero_and_is_tagged() -> None:
    out = _scaffold().broadcast({"w": _v(3, 4)})
    assert list(out) == ["c/w"]
    np.testing.assert_array_equal(out["c/w"], _v(0, 0))


def test_aggregate_moves_x_by_weighted_mean_and_c_by_share_of_mean_delta_c() -> None:
    s = _scaffold(num_clients=4, server_lr=1.0)
    g = {"w": _v(0, 0)}
    s.broadcast(g)
    contributions = [
        Contribution(0, {"w": _v(1, 0)}, 1, extra=tagged({"w": _v(4, 0)}, "c")),
        Contribution(1, {"w": _v(0, 2)}, 3, extra=tagged({"w": _v(0, 4)}, "c")),
    ]
    new = s.aggregate(g, contributions)
    # x: 1/4 * [1, 0] + 3/4 * [0, 2] = [0.25, 1.5]
    np.testing.assert_allclose(new["w"], _v(0.25, 1.5))
    # c: 0 + |S|/N * mean(delta c) = 2/4 * [2, 2] = [1, 1]
    np.testing.assert_allclose(s.state_dict()["c"]["w"], _v(1, 1))
    new2 = s.aggregate(new, contributions[:1])  # 1/4 * [4, 0] more
    np.testing.assert_allclose(s.broadcast(new2)["c/w"], _v(2, 1))
    np.testing.assert_allclose(new2["w"], _v(1.25, 1.5))


def test_server_lr_scales_the_model_step_only() -> None:
    s = _scaffold(num_clients=2, server_lr=0.5)
    g = {"w": _v(1)}
    c = [Contribution(0, {"w": _v(2)}, 1, extra=tagged({"w": _v(2)}, "c"))]
    np.testing.assert_allclose(s.aggregate(g, c)["w"], _v(2))
    np.testing.assert_allclose(s.state_dict()["c"]["w"], _v(1))


def test_state_dict_round_trip_and_key_check() -> None:
    s = _scaffold()
    g = {"w": _v(0, 0)}
    s.aggregate(g, [Contribution(0, g, 1, extra=tagged({"w": _v(4, 8)}, "c"))])
    t = _scaffold()
    t.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(t.broadcast(g)["c/w"], _v(1, 2))
    with pytest.raises(KeyError):
        t.load_state_dict({"c": None, "v": None})


def test_update_without_delta_c_is_refused() -> None:
    s = _scaffold()
    g = {"w": _v(0)}
    with pytest.raises(ValueError, match="no extra state"):
        s.aggregate(g, [Contribution(0, g, 1)])
    with pytest.raises(ValueError, match="keys differ"):
        s.aggregate(g, [Contribution(0, g, 1, extra=tagged({"v": _v(0)}, "c"))])


def test_aggregate_needs_the_number_of_clients() -> None:
    s = registry.build("algorithm", {"name": "scaffold"})
    g = {"w": _v(0)}
    with pytest.raises(ValueError, match="num_clients"):
        s.aggregate(g, [Contribution(0, g, 1, extra=tagged(g, "c"))])
