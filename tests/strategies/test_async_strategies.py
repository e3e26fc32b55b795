"""FedAsync weights for each s(tau) and FedBuff flushes, computed by hand on 2-element tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedray.core import registry
from fedray.core.errors import ConfigError
from fedray.core.types import Contribution
from fedray.strategies.staleness import staleness_weight


def _s(values: list[float]) -> dict[str, np.ndarray]:
    arr = np.array(values, np.float32)
    arr.setflags(write=False)  # any in-place write by a strategy raises
    return {"w": arr}


def _c(delta: list[float], cid: int = 0) -> Contribution:
    return Contribution(cid, _s(delta), 1)


@pytest.mark.parametrize(
    ("kind", "tau", "a", "b", "expected"),
    [
        ("constant", 0, 0.5, 4.0, 1.0),
        ("constant", 9, 0.5, 4.0, 1.0),
        ("polynomial", 0, 0.5, 4.0, 1.0),
        ("polynomial", 3, 0.5, 4.0, 0.5),  # 4 ** -0.5
        ("polynomial", 1, 1.0, 4.0, 0.5),  # 2 ** -1
        ("hinge", 2, 0.5, 2.0, 1.0),  # tau <= b
        ("hinge", 4, 0.5, 2.0, 0.5),  # 1 / (0.5 * 2 + 1)
        ("hinge", 8, 0.5, 2.0, 0.25),  # 1 / (0.5 * 6 + 1)
    ],
)
def test_staleness_weight(kind: str, tau: int, a: float, b: float, expected: float) -> None:
    assert staleness_weight(kind, tau, a, b) == pytest.approx(expected, abs=1e-12)


def test_staleness_rejects_negative_tau_and_unknown_kind() -> None:
    with pytest.raises(ValueError, match="tau=-1"):
        staleness_weight("constant", -1)
    with pytest.raises(ValueError, match="exponential"):
        staleness_weight("exponential", 1)


@pytest.mark.parametrize(
    ("options", "tau", "expected"),
    [
        # a_tau = 0.5 * 1 = 0.5: 0.5 * [2, 4] + 0.5 * [4, 8]
        ({"alpha": 0.5, "staleness": "constant"}, 7, [3.0, 6.0]),
        # a_tau = 0.5 * 2^-1 = 0.25: 0.75 * [2, 4] + 0.25 * [4, 8]
        ({"alpha": 0.5, "staleness": "polynomial", "a": 1.0}, 1, [2.5, 5.0]),
        # a_tau = 1 * 1 / (1 * (1 - 0) + 1) = 0.5
        ({"alpha": 1.0, "staleness": "hinge", "a": 1.0, "b": 0.0}, 1, [3.0, 6.0]),
        # hinge within b: a_tau = alpha = 1, the client model replaces the global one
        ({"alpha": 1.0, "staleness": "hinge", "a": 1.0, "b": 2.0}, 2, [4.0, 8.0]),
    ],
)
def test_fedasync_mixes_client_model_with_staleness_weight(
    options: dict, tau: int, expected: list[float]
) -> None:
    algo = registry.build("algorithm", {"name": "fedasync", **options})
    # the client started from base [1, 2] and moved by [3, 6]: its model is [4, 8]
    new = algo.apply(_s([2.0, 4.0]), _s([1.0, 2.0]), _c([3.0, 6.0]), tau)
    np.testing.assert_allclose(new["w"], expected, rtol=0, atol=1e-6)
    assert new["w"].dtype == np.float32


def test_fedbuff_flushes_every_k_with_staleness_weighted_mean() -> None:
    algo = registry.build(
        "algorithm",
        {
            "name": "fedbuff",
            "k": 2,
            "staleness": "polynomial",
            "a": 1.0,
            "server": {"name": "fedavg", "server_lr": 2.0},
        },
    )
    g = _s([1.0, 1.0])
    assert algo.apply(g, g, _c([2.0, 4.0]), 0) is None  # weight 1, buffered
    assert algo.buffered == 1
    new = algo.apply(g, g, _c([6.0, 2.0]), 1)  # weight 1/2 -> [3, 1]
    # mean = ([2, 4] + [3, 1]) / 2 = [2.5, 2.5]; new = [1, 1] + 2 * [2.5, 2.5]
    np.testing.assert_allclose(new["w"], [6.0, 6.0], atol=1e-6)
    assert algo.buffered == 0
    assert algo.apply(new, g, _c([1.0, 1.0]), 0) is None  # the buffer started over


def test_fedbuff_with_fedadam_server_step() -> None:
    server = {"name": "fedadam", "server_lr": 1.0, "beta1": 0.5, "beta2": 0.5, "tau": 0.5}
    algo = registry.build(
        "algorithm", {"name": "fedbuff", "k": 2, "staleness": "constant", "server": server}
    )
    g = _s([0.0, 0.0])
    assert algo.apply(g, g, _c([1.0, 3.0]), 5) is None
    new = algo.apply(g, g, _c([3.0, 1.0]), 0)
    # mean [2, 2]; m = 0.5 * 2 = 1; v = 0.5 * 0.5² + 0.5 * 2² = 2.125; step = 1 / (sqrt(v) + 0.5)
    step = 1.0 / (math.sqrt(2.125) + 0.5)
    np.testing.assert_allclose(new["w"], [step, step], rtol=1e-6)


def test_fedbuff_state_dict_carries_the_buffer_and_server_state() -> None:
    node = {"name": "fedbuff", "k": 2, "server": {"name": "fedavgm", "momentum": 0.5}}
    a, b = registry.build("algorithm", node), registry.build("algorithm", node)
    g = _s([0.0, 0.0])
    a.apply(g, g, _c([1.0, 1.0]), 0)
    a.apply(g, g, _c([1.0, 1.0]), 0)  # one flush: momentum buffer holds [1, 1]
    a.apply(g, g, _c([2.0, 0.0]), 0)  # one update buffered
    b.load_state_dict(a.state_dict())
    assert b.buffered == 1
    out_a, out_b = a.apply(g, g, _c([0.0, 2.0]), 0), b.apply(g, g, _c([0.0, 2.0]), 0)
    # mean [1, 1]; v = 0.5 * [1, 1] + [1, 1] = [1.5, 1.5]
    np.testing.assert_allclose(out_a["w"], [1.5, 1.5], atol=1e-6)
    np.testing.assert_array_equal(out_a["w"], out_b["w"])
    with pytest.raises(KeyError, match="FedBuff"):
        b.load_state_dict({"sum": None})


@pytest.mark.parametrize(
    ("node", "match"),
    [
        ({"name": "fedasync", "alpha": 0.0}, r"algorithm\.alpha=0\.0 must be in \(0, 1\]"),
        ({"name": "fedasync", "staleness": "cubic"}, "staleness='cubic' is unknown"),
        ({"name": "fedbuff", "k": 0}, r"algorithm\.k=0 must be >= 1"),
        ({"name": "fedbuff", "server": {"name": "median"}}, "server.name='median'"),
        (
            {"name": "fedbuff", "server": {"name": "fedadam", "server_lr": -1.0}},
            "server: server_lr=-1.0 must be > 0",
        ),
    ],
)
def test_bad_options_are_one_line_config_errors(node: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        registry.parse("algorithm", node)
    assert "\n" not in str(info.value)
