"""FedProx, FedPer and Ditto server halves: FedAvg on what is shared, nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.core import registry
from fedray.core.errors import ConfigError
from fedray.core.types import Contribution
from fedray.strategies.personal import split_local


def _v(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


@pytest.mark.parametrize("name", ["fedprox", "ditto"])
def test_server_is_sample_weighted_fedavg(name: str) -> None:
    s = registry.build("algorithm", {"name": name})
    g = {"w": _v(1, 1)}
    c = [Contribution(0, {"w": _v(4, 0)}, 1), Contribution(1, {"w": _v(0, 4)}, 3)]
    np.testing.assert_allclose(s.aggregate(g, c)["w"], _v(2, 4))
    assert s.state_dict() == {}


def test_fedper_shares_and_aggregates_everything_but_the_head() -> None:
    s = registry.build("algorithm", {"name": "fedper", "local_keys": ["classifier"]})
    g = {"body.lora_A": _v(1, 1), "classifier.weight": _v(5)}
    assert list(s.shared_state(g)) == ["body.lora_A"]
    new = s.aggregate(g, [Contribution(0, {"body.lora_A": _v(2, -2)}, 1)])
    np.testing.assert_array_equal(new["body.lora_A"], _v(3, -1))
    np.testing.assert_array_equal(new["classifier.weight"], _v(5))  # never aggregated


def test_split_local_rejects_patterns_matching_nothing_or_everything() -> None:
    state = {"a.lora": _v(1), "classifier.w": _v(2)}
    shared, local = split_local(state, ["classifier"])
    assert list(shared) == ["a.lora"] and list(local) == ["classifier.w"]
    with pytest.raises(ValueError, match="match no trainable key"):
        split_local(state, ["head"])
    with pytest.raises(ValueError, match="nothing is shared"):
        split_local(state, ["a.", "classifier"])


@pytest.mark.parametrize(
    ("node", "key"),
    [
        ({"name": "fedprox", "mu": -1.0}, "mu"),
        ({"name": "ditto", "lam": -0.1}, "lam"),
        ({"name": "ditto", "holdout": 0.0}, "holdout"),
        ({"name": "fedper", "local_keys": []}, "local_keys"),
        ({"name": "scaffold", "server_lr": 0.0}, "server_lr"),
    ],
)
def test_bad_options_are_one_line_config_errors(node: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"algorithm.{key}"):
        registry.parse("algorithm", node)
