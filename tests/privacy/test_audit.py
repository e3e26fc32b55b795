"""One-run canary audit (Andrew et al. 2024): estimator, GDP conversion, and the smoke alarm."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.privacy.lib.accounting import DpAccountant
from fedray.privacy.lib.audit import (
    audit_epsilon,
    audit_mu,
    canary_directions,
    cosines,
    gdp_delta,
    simulate_dp_fedavg_audit,
)

DELTA = 1e-5
# The audited DP-FedAvg: canaries join each round with probability Q; T rounds at multiplier Z.
Q, T, Z = 0.3, 20, 1.0
SIM = dict(dim=20_000, rounds=T, clients_per_round=10, n_inserted=200, n_held_out=200, clip=1.0)


def claimed_epsilon() -> float:
    acc = DpAccountant(sampling_rate=Q, value_discretization_interval=1e-3)
    acc.step(Z, rounds=T)
    return acc.epsilon(DELTA)


def test_canary_directions_are_unit_and_nearly_orthogonal() -> None:
    u = canary_directions(4096, 50, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-12)
    gram = u @ u.T - np.eye(50)
    assert np.abs(gram).max() < 6 / np.sqrt(4096)  # random directions: |cos| ~ 1/sqrt(d)


def test_cosines_of_a_vector_with_its_own_direction() -> None:
    u = canary_directions(64, 3, np.random.default_rng(1))
    np.testing.assert_allclose(cosines(u, 5.0 * u[1]), u @ u[1], rtol=1e-12)
    assert cosines(u, 5.0 * u[1])[1] == pytest.approx(1.0)
    np.testing.assert_array_equal(cosines(u, np.zeros(64)), 0.0)


def test_audit_epsilon_is_the_gdp_epsilon_of_the_fitted_mu() -> None:
    rng = np.random.default_rng(2)
    cout = rng.normal(0.0, 0.01, 5000)
    cin = rng.normal(0.02, 0.01, 5000)
    mu = audit_mu(cin, cout)
    assert mu == pytest.approx((cin.mean() - cout.mean()) / cout.std(ddof=1))
    eps = audit_epsilon(cin, cout, DELTA)
    # Cross-check the library conversion against the closed form of Dong, Roth, Su (2022).
    assert gdp_delta(mu, eps) == pytest.approx(DELTA, rel=1e-6)
    assert gdp_delta(mu, 0.9 * eps) > DELTA


def test_audit_epsilon_is_zero_when_inserted_canaries_look_held_out() -> None:
    rng = np.random.default_rng(3)
    assert audit_epsilon(rng.normal(-0.1, 1, 100), rng.normal(0, 1, 100), DELTA) == 0.0
    with pytest.raises(ValueError, match="zero spread"):
        audit_epsilon(np.ones(5), np.zeros(5), DELTA)


@pytest.mark.parametrize("seed", range(3))
def test_correct_mechanism_stays_below_the_claimed_epsilon(seed: int) -> None:
    claimed = claimed_epsilon()  # ~9.5
    result = simulate_dp_fedavg_audit(
        noise_multiplier=Z, canary_rate=Q, delta=DELTA, rng=np.random.default_rng(seed), **SIM
    )
    assert 0 < result.epsilon <= claimed  # measured 4.5-5.6
    assert result.cos_inserted.mean() > result.cos_held_out.mean()


@pytest.mark.parametrize("seed", range(3))
def test_mechanism_with_ten_times_less_noise_exceeds_the_claimed_epsilon(seed: int) -> None:
    claimed = claimed_epsilon()
    result = simulate_dp_fedavg_audit(
        noise_multiplier=Z / 10, canary_rate=Q, delta=DELTA, rng=np.random.default_rng(seed), **SIM
    )
    assert result.epsilon > claimed  # measured ~41 against ~9.5


def test_audit_of_no_canary_signal_is_near_zero() -> None:
    """Canaries never inserted (rate tiny): inserted and held-out look alike."""
    sim = dict(SIM, n_inserted=300, n_held_out=300)
    result = simulate_dp_fedavg_audit(
        noise_multiplier=Z, canary_rate=1e-9, delta=DELTA, rng=np.random.default_rng(4), **sim
    )
    assert result.mu < 0.3  # 300 vs 300 canaries: mu's standard error is about 0.08
