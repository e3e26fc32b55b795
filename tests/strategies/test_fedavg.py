"""FedAvg and the aggregation math on tiny hand-checked tensors."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.core import registry
from fedray.core.statemath import sample_weights, weighted_sum
from fedray.core.types import Contribution


def _state(*values: float) -> dict[str, np.ndarray]:
    return {"w": np.array(values, dtype=np.float32), "b": np.array([values[0]], np.float32)}


def test_weighted_sum_matches_hand_computation() -> None:
    out = weighted_sum([_state(1, 2), _state(3, 6)], [0.25, 0.75])
    np.testing.assert_array_equal(out["w"], np.array([2.5, 5.0], np.float32))
    np.testing.assert_array_equal(out["b"], np.array([2.5], np.float32))
    assert out["w"].dtype == np.float32


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [([1, 1], [0.5, 0.5]), ([1, 3], [0.25, 0.75]), ([64, 64, 64, 64], [0.25] * 4)],
)
def test_sample_weights(sizes: list[int], expected: list[float]) -> None:
    assert sample_weights(sizes) == pytest.approx(expected)


def test_sample_weights_rejects_empty_total() -> None:
    with pytest.raises(ValueError, match="no samples"):
        sample_weights([0, 0])


def test_fedavg_is_sample_weighted_mean_of_client_models() -> None:
    strategy = registry.build("algorithm", {"name": "fedavg"})
    global_state = _state(1, 1)
    # client models 2 and 5 with 1 and 3 samples: new = 0.25*2 + 0.75*5 = 4.25 per coordinate
    contributions = [
        Contribution(0, {k: v - global_state[k] for k, v in _state(2, 2).items()}, 1),
        Contribution(1, {k: v - global_state[k] for k, v in _state(5, 5).items()}, 3),
    ]
    new = strategy.aggregate(global_state, contributions)
    np.testing.assert_allclose(new["w"], [4.25, 4.25], rtol=0, atol=1e-6)


def test_fedavg_server_lr_scales_the_step() -> None:
    strategy = registry.build("algorithm", {"name": "fedavg", "server_lr": 0.5})
    new = strategy.aggregate(_state(0, 0), [Contribution(0, _state(2, 4), 1)])
    np.testing.assert_array_equal(new["w"], np.array([1, 2], np.float32))


def test_mismatched_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="different keys"):
        weighted_sum([{"a": np.zeros(1, np.float32)}, {"b": np.zeros(1, np.float32)}], [1, 1])


def test_state_dict_round_trip_checks_keys() -> None:
    strategy = registry.build("algorithm", {"name": "fedavg"})
    strategy.load_state_dict(strategy.state_dict())
    with pytest.raises(KeyError):
        strategy.load_state_dict({"unexpected": 1})


def test_weighted_sum_is_bit_identical_across_threads_and_layouts() -> None:
    rng = np.random.default_rng(3)
    shapes = {"big": (300, 1000), "odd": (70_001,), "scalar": (), "empty": (0, 4)}
    states = [
        {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(12)
    ]
    states[4]["big"] = np.asfortranarray(states[4]["big"])  # a non-contiguous update
    weights = list(rng.random(12))  # 12 x 370,002 elements: the threaded path
    one = weighted_sum(states, weights, threads=1)
    expected = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    for s, w in zip(states, weights, strict=True):
        for k in shapes:
            expected[k] += np.float32(w) * s[k]
    for threads in (2, 3, 8):
        many = weighted_sum(states, weights, threads=threads)
        assert all(many[k].tobytes() == one[k].tobytes() for k in shapes)
    assert all(one[k].tobytes() == expected[k].tobytes() for k in shapes)
