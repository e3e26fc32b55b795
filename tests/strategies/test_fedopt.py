"""FedAdam, FedYogi, FedAdagrad against two rounds computed by hand on a 2-element tensor."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedray.core import registry
from fedray.core.errors import ConfigError
from fedray.core.types import Contribution
from fedray.strategies.fedopt import FedAdagradOptions, FedAdamOptions, FedYogiOptions

NAMES = ["fedadam", "fedyogi", "fedadagrad"]
CONF = Path(__file__).resolve().parents[2] / "conf" / "algorithm"


def _ro(values: object) -> np.ndarray:
    """A read-only float32 array: any in-place write by a strategy raises."""
    arr = np.array(values, np.float32)
    arr.setflags(write=False)
    return arr


def _c(cid: int, delta: list[float], n: int = 1) -> Contribution:
    return Contribution(cid, {"w": _ro(delta)}, n)


def _build(name: str, **options: float) -> object:
    """Round numbers for hand computation: lr=1, beta1=beta2=0.5, tau=0.5 (tau²=0.25)."""
    opts = {"name": name, "server_lr": 1.0, "beta1": 0.5, "tau": 0.5, **options}
    if name != "fedadagrad":
        opts.setdefault("beta2", 0.5)
    return registry.build("algorithm", opts)


# Round 1: deltas [4, 0] and [2, -2], one sample each: mean [3, -1], m1 = [1.5, -0.5].
# Round 2: one delta [1, 1]: m2 = 0.5 * m1 + 0.5 * [1, 1] = [1.25, 0.25]. v starts at 0.25.
V_BY_HAND = {
    # v1 = 0.5 * 0.25 + 0.5 * [9, 1];  v2 = 0.5 * v1 + 0.5 * [1, 1]
    "fedadam": ([4.625, 0.625], [2.8125, 0.8125]),
    # v1 = 0.25 + 0.5 * [9, 1] (v < delta², sign -1);  v2 = v1 - 0.5 * [1, 1] * sign([3.75, -0.25])
    "fedyogi": ([4.75, 0.75], [4.25, 1.25]),
    # v1 = 0.25 + [9, 1];  v2 = v1 + [1, 1]
    "fedadagrad": ([9.25, 1.25], [10.25, 2.25]),
}


@pytest.mark.parametrize("name", NAMES)
def test_two_rounds_match_hand_computation(name: str) -> None:
    (v1a, v1b), (v2a, v2b) = V_BY_HAND[name]
    x1 = [1.5 / (math.sqrt(v1a) + 0.5), -0.5 / (math.sqrt(v1b) + 0.5)]
    x2 = [x1[0] + 1.25 / (math.sqrt(v2a) + 0.5), x1[1] + 0.25 / (math.sqrt(v2b) + 0.5)]
    strategy = _build(name)
    new1 = strategy.aggregate({"w": _ro([0, 0])}, [_c(0, [4, 0]), _c(1, [2, -2])])
    np.testing.assert_allclose(new1["w"], x1, rtol=1e-6)
    new2 = strategy.aggregate({"w": _ro(new1["w"])}, [_c(0, [1, 1])])
    np.testing.assert_allclose(new2["w"], x2, rtol=1e-6)
    assert new2["w"].dtype == np.float32
    state = strategy.state_dict()
    np.testing.assert_allclose(state["m"]["w"], [1.25, 0.25], rtol=1e-6)
    np.testing.assert_allclose(state["v"]["w"], [v2a, v2b], rtol=1e-6)
    assert state["step"] == 2


@pytest.mark.parametrize("name", NAMES)
def test_pseudo_gradient_is_sample_weighted(name: str) -> None:
    strategy = _build(name)
    # 3 samples of [4, 0] and 1 of [0, 4]: mean [3, 1], so m1 = 0.5 * mean = [1.5, 0.5]
    strategy.aggregate({"w": _ro([0, 0])}, [_c(0, [4, 0], 3), _c(1, [0, 4], 1)])
    np.testing.assert_allclose(strategy.state_dict()["m"]["w"], [1.5, 0.5], rtol=1e-6)


def test_v_starts_at_tau_squared() -> None:
    # Adagrad adds delta² = 0 to v_{-1}: v stays tau², m stays 0, and the model does not move.
    strategy = registry.build("algorithm", {"name": "fedadagrad"})
    new = strategy.aggregate({"w": _ro([1, 2])}, [_c(0, [0, 0])])
    np.testing.assert_array_equal(strategy.state_dict()["v"]["w"], np.float32(1e-3**2))
    np.testing.assert_array_equal(new["w"], [1, 2])


def test_defaults_are_reddi_et_al() -> None:
    for options in (FedAdamOptions(), FedYogiOptions(), FedAdagradOptions()):
        assert (options.server_lr, options.beta1, options.tau) == (1e-2, 0.9, 1e-3)
    assert FedAdamOptions().beta2 == FedYogiOptions().beta2 == 0.99


@pytest.mark.parametrize("name", NAMES)
def test_yaml_matches_the_options_defaults(name: str) -> None:
    options = registry.parse("algorithm", OmegaConf.load(CONF / f"{name}.yaml"))
    assert options == type(options)()
    assert options.name == name


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"name": "fedadam", "server_lr": 0}, "server_lr=0"),
        ({"name": "fedyogi", "beta1": 1.0}, "beta1=1.0 must be in"),
        ({"name": "fedadam", "beta2": -0.1}, "beta2=-0.1 must be in"),
        ({"name": "fedadagrad", "tau": 0}, "tau=0"),
        ({"name": "fedadagrad", "beta2": 0.9}, "beta2 is not an option of algorithm=fedadagrad"),
    ],
)
def test_bad_options_are_config_errors(node: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.parse("algorithm", node)


def _rounds(seed: int, count: int) -> list[list[Contribution]]:
    """Finite updates of very different scales, including an all-zero round."""
    rng = np.random.default_rng(seed)
    rounds = []
    for r in range(count):
        scale = 0.0 if r == 1 else 10.0 ** rng.integers(-6, 6)
        rounds.append(
            [
                Contribution(
                    i, {"w": _ro(scale * rng.standard_normal(6)), "b": _ro([scale])}, i + 1
                )
                for i in range(3)
            ]
        )
    return rounds


def _run(strategy: object, state: dict, rounds: list[list[Contribution]]) -> dict:
    for contributions in rounds:
        state = strategy.aggregate({k: _ro(a) for k, a in state.items()}, contributions)
    return state


START = {"w": np.linspace(-1, 1, 6, dtype=np.float32), "b": np.zeros(1, np.float32)}


@pytest.mark.parametrize("name", NAMES)
def test_finite_inputs_give_finite_outputs(name: str) -> None:
    out = _run(registry.build("algorithm", {"name": name}), START, _rounds(0, 6))
    assert all(np.isfinite(a).all() for a in out.values())


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name: str) -> None:
    a = _run(registry.build("algorithm", {"name": name}), START, _rounds(1, 4))
    b = _run(registry.build("algorithm", {"name": name}), START, _rounds(1, 4))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    rounds = _rounds(2, 4)
    first = registry.build("algorithm", {"name": name})
    mid = _run(first, START, rounds[:2])
    saved = pickle.loads(pickle.dumps(first.state_dict()))
    snapshot = first.state_dict()
    expected = _run(first, mid, rounds[2:])  # must not change `snapshot` in place
    second = registry.build("algorithm", {"name": name})
    second.load_state_dict(snapshot)
    resumed = _run(second, mid, rounds[2:])
    for k in expected:
        np.testing.assert_array_equal(resumed[k], expected[k])
    assert saved["step"] == 2
    np.testing.assert_array_equal(snapshot["v"]["w"], saved["v"]["w"])


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_checks_keys(name: str) -> None:
    strategy = registry.build("algorithm", {"name": name})
    strategy.load_state_dict(strategy.state_dict())  # the fresh state (no moments yet) loads
    with pytest.raises(KeyError, match="expected keys"):
        strategy.load_state_dict({"m": None, "v": None})


def test_moments_for_another_model_are_rejected() -> None:
    strategy = registry.build("algorithm", {"name": "fedadam"})
    strategy.aggregate({"w": _ro([0, 0])}, [_c(0, [1, 1])])
    with pytest.raises(ValueError, match="optimizer state: key 'w' has shape"):
        strategy.aggregate({"w": _ro([0, 0, 0])}, [_c(0, [1, 1, 1])])


def test_not_marked_as_needing_individual_updates() -> None:
    for name in NAMES:
        assert registry.entry("algorithm", name).factory.requires_individual_updates is False
