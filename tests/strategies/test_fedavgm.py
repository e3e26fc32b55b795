"""FedAvgM (server momentum) against rounds computed by hand."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedray.core import registry
from fedray.core.errors import ConfigError
from fedray.core.types import Contribution
from fedray.strategies.fedavgm import FedAvgMOptions

CONF = Path(__file__).resolve().parents[2] / "conf" / "algorithm"


def _ro(values: object) -> np.ndarray:
    """A read-only float32 array: any in-place write by a strategy raises."""
    arr = np.array(values, np.float32)
    arr.setflags(write=False)
    return arr


def _c(cid: int, w: list[float], n: int = 1) -> Contribution:
    return Contribution(cid, {"w": _ro(w), "b": _ro([w[0]])}, n)


@pytest.mark.parametrize(("lr", "x1", "x2"), [(1.0, 5.0, 8.5), (0.5, 2.5, 4.25)])
def test_two_rounds_match_hand_computation(lr: float, x1: float, x2: float) -> None:
    strategy = registry.build("algorithm", {"name": "fedavgm", "server_lr": lr, "momentum": 0.5})
    # round 1: deltas 2 (1 sample) and 6 (3 samples): mean 0.25*2 + 0.75*6 = 5 = v; new = lr*5
    new1 = strategy.aggregate({"w": _ro([0, 0]), "b": _ro([0])}, [_c(0, [2, 2]), _c(1, [6, 6], 3)])
    np.testing.assert_allclose(new1["w"], [x1, x1], rtol=1e-7)
    # round 2: delta 1: v = 0.5 * 5 + 1 = 3.5; new = x1 + lr * 3.5
    new2 = strategy.aggregate({k: _ro(a) for k, a in new1.items()}, [_c(0, [1, 1])])
    np.testing.assert_allclose(new2["w"], [x2, x2], rtol=1e-7)
    np.testing.assert_allclose(new2["b"], [x2], rtol=1e-7)
    np.testing.assert_allclose(strategy.state_dict()["v"]["w"], [3.5, 3.5], rtol=1e-7)
    assert new2["w"].dtype == np.float32


def test_zero_momentum_is_fedavg() -> None:
    momentum = registry.build("algorithm", {"name": "fedavgm", "momentum": 0.0})
    fedavg = registry.build("algorithm", {"name": "fedavg"})
    global_state = {"w": _ro([1, -1]), "b": _ro([0.5])}
    for contributions in ([_c(0, [0.1, 0.3], 2), _c(1, [-0.7, 0.2], 5)], [_c(2, [1.5, -2], 1)]):
        a = momentum.aggregate(global_state, contributions)
        b = fedavg.aggregate(global_state, contributions)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-7)


def test_yaml_matches_the_options_defaults() -> None:
    options = registry.parse("algorithm", OmegaConf.load(CONF / "fedavgm.yaml"))
    assert options == FedAvgMOptions() == FedAvgMOptions(server_lr=1.0, momentum=0.9)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"name": "fedavgm", "server_lr": -1}, "server_lr=-1.0 must be > 0"),
        ({"name": "fedavgm", "momentum": 1.0}, "momentum=1.0 must be in"),
        ({"name": "fedavgm", "momentum": -0.1}, "momentum=-0.1 must be in"),
    ],
)
def test_bad_options_are_config_errors(node: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.parse("algorithm", node)


def _rounds(seed: int, count: int) -> list[list[Contribution]]:
    rng = np.random.default_rng(seed)
    return [
        [_c(i, list(10.0 ** rng.integers(-4, 4) * rng.standard_normal(3)), i + 1) for i in range(3)]
        for _ in range(count)
    ]


def _run(strategy: object, state: dict, rounds: list[list[Contribution]]) -> dict:
    for contributions in rounds:
        state = strategy.aggregate({k: _ro(a) for k, a in state.items()}, contributions)
    return state


START = {"w": np.array([0.5, -0.5, 0], np.float32), "b": np.zeros(1, np.float32)}


def test_finite_and_deterministic() -> None:
    a = _run(registry.build("algorithm", {"name": "fedavgm"}), START, _rounds(0, 6))
    b = _run(registry.build("algorithm", {"name": "fedavgm"}), START, _rounds(0, 6))
    for k in a:
        assert np.isfinite(a[k]).all()
        np.testing.assert_array_equal(a[k], b[k])


def test_state_dict_round_trip_continues_identically() -> None:
    rounds = _rounds(1, 4)
    first = registry.build("algorithm", {"name": "fedavgm"})
    mid = _run(first, START, rounds[:2])
    snapshot = first.state_dict()
    saved = pickle.loads(pickle.dumps(snapshot))
    expected = _run(first, mid, rounds[2:])  # must not change `snapshot` in place
    second = registry.build("algorithm", {"name": "fedavgm"})
    second.load_state_dict(snapshot)
    resumed = _run(second, mid, rounds[2:])
    for k in expected:
        np.testing.assert_array_equal(resumed[k], expected[k])
        np.testing.assert_array_equal(snapshot["v"][k], saved["v"][k])


def test_load_state_dict_checks_keys() -> None:
    strategy = registry.build("algorithm", {"name": "fedavgm"})
    strategy.load_state_dict(strategy.state_dict())
    with pytest.raises(KeyError, match="expected keys"):
        strategy.load_state_dict({"velocity": None})
    assert registry.entry("algorithm", "fedavgm").factory.requires_individual_updates is False
