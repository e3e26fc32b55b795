"""FedNova: the normaliser a_i, the normalised average, and what it needs from the config."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.client.fednova import normaliser, nova_extra
from fedray.core.types import Contribution
from fedray.strategies.fedavg import FedAvg, FedAvgOptions
from fedray.strategies.fednova import FedNova, FedNovaOptions

GLOBAL = {"w": np.array([1.0, -2.0], np.float32), "b": np.array([0.5], np.float32)}


def _contribution(cid: int, delta: float, n: int, a: float) -> Contribution:
    d = {"w": np.full(2, delta, np.float32), "b": np.full(1, -delta, np.float32)}
    return Contribution(cid, d, n, nova_extra(a))


@pytest.mark.parametrize(("steps", "rho"), [(1, 0.0), (7, 0.0), (5, 0.5), (30, 0.9)])
def test_normaliser_is_the_l1_norm_of_the_momentum_weights(steps: int, rho: float) -> None:
    # Wang et al. 2020: after t steps with heavy-ball momentum, gradient j has weight
    # sum_{k=0}^{t-1-j} rho^k; a_i is the sum of those weights
    weights = [sum(rho**k for k in range(steps - j)) for j in range(steps)]
    assert normaliser(steps, rho) == pytest.approx(sum(weights))


def test_fednova_divides_by_a_i_and_rescales_by_tau_eff() -> None:
    nova = FedNova(FedNovaOptions())
    updates = [_contribution(0, 2.0, 30, a=20.0), _contribution(1, 1.5, 10, a=5.0)]
    new = nova.aggregate(GLOBAL, updates)
    p = np.array([0.75, 0.25])
    tau_eff = 0.75 * 20 + 0.25 * 5
    expected = tau_eff * (p[0] * 2.0 / 20 + p[1] * 1.5 / 5)
    np.testing.assert_allclose(new["w"], GLOBAL["w"] + expected, rtol=1e-6)
    np.testing.assert_allclose(new["b"], GLOBAL["b"] - expected, rtol=1e-6)
    # FedAvg would weight the 20-step client's larger move by p alone
    fedavg = FedAvg(FedAvgOptions()).aggregate(GLOBAL, updates)
    assert not np.allclose(fedavg["w"], new["w"])


def test_equal_work_gives_fedavg() -> None:
    updates = [_contribution(0, 1.0, 7, a=4.0), _contribution(1, -3.0, 21, a=4.0)]
    nova = FedNova(FedNovaOptions()).aggregate(GLOBAL, updates)
    fedavg = FedAvg(FedAvgOptions()).aggregate(GLOBAL, updates)
    for k in GLOBAL:
        np.testing.assert_allclose(nova[k], fedavg[k], rtol=1e-6)


def test_server_lr_scales_the_step_and_a_zero_normaliser_is_refused() -> None:
    updates = [_contribution(0, 1.0, 1, a=2.0)]
    half = FedNova(FedNovaOptions(server_lr=0.5)).aggregate(GLOBAL, updates)
    np.testing.assert_allclose(half["w"], GLOBAL["w"] + 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="no local step"):
        FedNova(FedNovaOptions()).aggregate(GLOBAL, [_contribution(0, 1.0, 1, a=0.0)])


def test_the_broadcast_template_matches_what_clients_send() -> None:
    template = FedNova(FedNovaOptions()).broadcast(GLOBAL)
    sent = nova_extra(3.0)
    assert template.keys() == sent.keys()
    assert all(
        template[k].shape == sent[k].shape and template[k].dtype == sent[k].dtype for k in sent
    )


def test_fednova_needs_sgd() -> None:
    from fedray.app.cli import compose
    from fedray.app.spec import build_spec
    from fedray.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"set client\.optimizer=sgd"):
        build_spec(compose(["algorithm=fednova", "tracking=none"]))
    spec = build_spec(compose(["algorithm=fednova", "client.optimizer=sgd", "tracking=none"]))
    assert spec.algorithm.name == "fednova"
