"""Exact LoRA aggregation: FLoRA's merged delta and FFA-LoRA's frozen A give the mean of the
clients' products B_i A_i; plain FedAvg of the factors does not."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.core import registry
from fedray.core.config import FedrayConfig
from fedray.core.types import Contribution
from fedray.strategies.base import ServerCompute

L = "base_model.model.layer.0.attn.query."
A, B, D, HEAD = L + "lora_A.weight", L + "lora_B.weight", L + "lora_delta", "classifier.weight"


def _clients(rng: np.random.Generator, glob: dict, n: int, freeze_a: bool = False) -> list:
    out = []
    for i in range(n):
        delta = {k: rng.normal(scale=0.1, size=v.shape).astype(np.float32) for k, v in glob.items()}
        delta[D] = np.zeros_like(glob[D]) if D in glob else None
        if freeze_a:
            del delta[A]
        out.append(Contribution(i, {k: v for k, v in delta.items() if v is not None}, 10 + 7 * i))
    return out


def _product_mean(glob: dict, contributions: list) -> np.ndarray:
    w = np.array([c.num_samples for c in contributions], np.float64)
    w /= w.sum()
    return sum(
        wi * ((glob[B] + c.delta[B]).astype(np.float64) @ (glob[A] + c.delta[A]))
        for wi, c in zip(w, contributions, strict=True)
    )


class _NoCompute(ServerCompute):
    def distill(self, *args, **kwargs):  # pragma: no cover - never called
        raise AssertionError


def _glob(rng: np.random.Generator, with_delta: bool) -> dict:
    glob = {
        A: rng.uniform(-0.3, 0.3, size=(4, 6)).astype(np.float32),
        B: rng.normal(scale=0.1, size=(5, 4)).astype(np.float32),
        HEAD: rng.normal(size=(3, 5)).astype(np.float32),
    }
    if with_delta:
        glob[D] = rng.normal(scale=0.1, size=(5, 6)).astype(np.float32)
    return glob


def test_flora_adds_the_exact_mean_product_and_restarts_the_adapter() -> None:
    rng = np.random.default_rng(0)
    glob = _glob(rng, with_delta=True)
    contributions = _clients(rng, glob, 5)
    flora = registry.build("algorithm", {"name": "flora"})
    flora.bind(FedrayConfig(), _NoCompute())
    new = flora.aggregate(glob, contributions)
    # the global model W + s (D + B A) moved by exactly the mean of the clients' products
    before = glob[D] + glob[B] @ glob[A]
    expected = glob[D].astype(np.float64) + _product_mean(glob, contributions)
    np.testing.assert_allclose(new[D] + new[B] @ new[A], expected, rtol=0, atol=2e-6)
    assert not new[B].any() and new[A].shape == glob[A].shape
    assert not np.allclose(new[D], before)
    # heads are FedAvg'd
    w = np.array([c.num_samples for c in contributions], np.float64)
    w /= w.sum()
    head = glob[HEAD] + sum(wi * c.delta[HEAD] for wi, c in zip(w, contributions, strict=True))
    np.testing.assert_allclose(new[HEAD], head, atol=1e-6)


def test_fedavg_of_factors_is_not_the_mean_product() -> None:
    rng = np.random.default_rng(0)
    glob = _glob(rng, with_delta=False)
    contributions = _clients(rng, glob, 5)
    fedavg = registry.build("algorithm", {"name": "fedavg"})
    new = fedavg.aggregate(glob, contributions)
    error = np.abs(new[B] @ new[A] - _product_mean(glob, contributions)).max()
    assert error > 1e-3  # the factor average misses the mean product by a visible margin


def test_flora_fresh_a_is_seeded_and_checkpointed() -> None:
    rng = np.random.default_rng(1)
    glob = _glob(rng, with_delta=True)
    contributions = _clients(rng, glob, 3)
    first = registry.build("algorithm", {"name": "flora"})
    first.bind(FedrayConfig(seed=3), _NoCompute())
    a1 = first.aggregate(glob, contributions)[A]
    second = registry.build("algorithm", {"name": "flora"})
    second.bind(FedrayConfig(seed=3), _NoCompute())
    second.load_state_dict({"rounds": 0})
    assert np.array_equal(second.aggregate(glob, contributions)[A], a1)
    assert first.state_dict() == {"rounds": 1}
    assert not np.array_equal(first.aggregate(glob, contributions)[A], a1)  # round 2: new A
    with pytest.raises(KeyError):
        first.load_state_dict({})


def test_ffa_lora_is_exact_with_a_frozen() -> None:
    rng = np.random.default_rng(2)
    glob = _glob(rng, with_delta=False)
    ffa = registry.build("algorithm", {"name": "ffa_lora"})
    shared = ffa.shared_state(glob)
    assert A not in shared and set(shared) == {B, HEAD}  # A never travels
    contributions = _clients(rng, glob, 4, freeze_a=True)
    new = ffa.aggregate(glob, contributions)
    assert np.array_equal(new[A], glob[A])
    with_a = [
        Contribution(c.client_id, {**c.delta, A: np.zeros_like(glob[A])}, c.num_samples)
        for c in contributions
    ]
    np.testing.assert_allclose(new[B] @ new[A], _product_mean(glob, with_a), atol=2e-6)


def test_flora_config_needs_trim_and_lora(tmp_path) -> None:
    from fedray.app.cli import compose
    from fedray.app.spec import build_spec
    from fedray.core.errors import ConfigError

    base = [f"tracking.uri=sqlite:///{tmp_path}/m.db", "algorithm=flora"]
    with pytest.raises(ConfigError, match="compression=trim"):
        build_spec(compose(base))
    build_spec(compose([*base, "compression=trim"]))
    with pytest.raises(ConfigError, match="finetune=lora"):
        build_spec(compose([*base, "compression=trim", "model=minilm_full"]))
