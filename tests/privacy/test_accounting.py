"""DpAccountant / DistributedDpAccountant against dp_accounting, and their contracts."""

from __future__ import annotations

import itertools
import json
import math
import pickle

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fedray.privacy.lib.accounting import DpAccountant, calibrate_noise_multiplier
from fedray.privacy.lib.ddp_accounting import (
    INTEGER_ORDERS,
    DistributedDpAccountant,
    calibrate_local_noise,
    ddg_tau,
    default_l1_sensitivity,
    zcdp_lines,
)

DELTA = 1e-5
Q = 50 / 1222  # cohort 50 of a population of 1222
FAST = 1e-3  # PLD discretization for speed; 10x coarser than the default, ~1e-5 relative change
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


def poisson_round(q: float, z: float) -> dp_accounting.DpEvent:
    return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))


def lib_pld(event: dp_accounting.DpEvent, interval: float = FAST) -> float:
    accountant = pld.PLDAccountant(value_discretization_interval=interval)
    return accountant.compose(event).get_epsilon(DELTA)


def lib_rdp(event: dp_accounting.DpEvent, **kw: object) -> float:
    return rdp.RdpAccountant(**kw).compose(event).get_epsilon(DELTA)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# (a) the same events built directly through the library give the same epsilon


def test_poisson_epsilon_equals_library_pld_and_rdp_single_run() -> None:
    acc = DpAccountant(sampling_rate=Q)  # default discretization, as in production
    acc.step(1.1, rounds=100)
    event = dp_accounting.SelfComposedDpEvent(poisson_round(Q, 1.1), 100)
    assert acc.accountant == "pld"
    assert rel(acc.epsilon(DELTA), lib_pld(event, 1e-4)) <= 1e-9
    assert rel(acc.epsilon_rdp(DELTA), lib_rdp(event)) <= 1e-9


def test_poisson_epsilon_equals_library_for_a_changing_noise_multiplier() -> None:
    acc = DpAccountant(sampling_rate=Q, value_discretization_interval=FAST)
    for z, count in [(1.2, 30), (0.9, 20), (1.2, 10)]:
        acc.step(z, rounds=count)
    event = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(poisson_round(Q, 1.2), 30),
            dp_accounting.SelfComposedDpEvent(poisson_round(Q, 0.9), 20),
            dp_accounting.SelfComposedDpEvent(poisson_round(Q, 1.2), 10),
        ]
    )
    assert rel(acc.epsilon(DELTA), lib_pld(event)) <= 1e-9
    assert rel(acc.epsilon_rdp(DELTA), lib_rdp(event)) <= 1e-9


def test_fixed_size_epsilon_is_library_rdp_with_replace_one_and_halved_multiplier() -> None:
    acc = DpAccountant(sampling="fixed_size", cohort_size=50, population=1222)
    acc.step(1.0, rounds=100)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(
            1222, 50, dp_accounting.GaussianDpEvent(0.5)
        ),
        100,
    )
    assert acc.accountant == "rdp"
    assert rel(acc.epsilon(DELTA), lib_rdp(event, neighboring_relation=REPLACE_ONE)) <= 1e-9
    assert acc.epsilon(DELTA) == acc.epsilon_rdp(DELTA)


def test_library_pld_still_rejects_sampling_without_replacement() -> None:
    """If an upgrade adds PLD support for it, fixed-size sampling should move to PLD."""
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        1222, 50, dp_accounting.GaussianDpEvent(1.0)
    )
    assert not pld.PLDAccountant(REPLACE_ONE).supports(event)
    assert not pld.PLDAccountant().supports(event)


def test_library_still_has_the_replace_one_sensitivity_quirk() -> None:
    """google/differential-privacy#378: under REPLACE_ONE, z is used as noise / sensitivity.

    With the whole population sampled, the library's replace-one RDP equals the add/remove RDP of
    the same multiplier, i.e. it ignores that a replaced C-clipped update moves the sum by 2C.
    If this fails, the library was fixed: drop the z / 2 in accounting.round_event.
    """
    whole = dp_accounting.SampledWithoutReplacementDpEvent(
        10, 10, dp_accounting.GaussianDpEvent(0.8)
    )
    plain = dp_accounting.GaussianDpEvent(0.8)
    assert lib_rdp(whole, neighboring_relation=REPLACE_ONE) == pytest.approx(lib_rdp(plain))


def test_fixed_size_of_everyone_is_a_gaussian_with_sensitivity_2c() -> None:
    acc = DpAccountant(sampling="fixed_size", cohort_size=10, population=10)
    acc.step(1.6, rounds=5)
    # Replacing one of C-clipped updates moves the sum by 2C: multiplier 1.6 / 2 against 1.
    expected = lib_rdp(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(0.8), 5))
    assert acc.epsilon(DELTA) == pytest.approx(expected, rel=1e-9)


# (b) PLD is the tighter accountant; the RDP cross-check stays within a band


@pytest.mark.parametrize(
    ("q", "z", "rounds"), [(Q, 1.0, 100), (0.01, 1.0, 1000), (0.1, 1.5, 50), (1.0, 2.0, 10)]
)
def test_rdp_is_above_pld_within_a_band_that_catches_a_wrong_q(
    q: float, z: float, rounds: int
) -> None:
    acc = DpAccountant(sampling_rate=q, value_discretization_interval=FAST)
    acc.step(z, rounds=rounds)
    ratio = acc.epsilon_rdp(DELTA) / acc.epsilon(DELTA)
    assert 1.0 <= ratio <= 1.3  # measured 1.07-1.17 on this grid
    if q < 1:
        # Either accountant fed twice the sampling rate leaves the band (measured 0.54-0.58
        # and 2.26-2.36), so the band would catch a q mix-up between the two.
        doubled = dp_accounting.SelfComposedDpEvent(poisson_round(2 * q, z), rounds)
        assert acc.epsilon_rdp(DELTA) / lib_pld(doubled) < 1.0
        assert lib_rdp(doubled) / acc.epsilon(DELTA) > 1.3


# (c) state_dict round trip: identical epsilon; extending after reload = never stopped


def test_state_dict_round_trip_gives_identical_epsilon_and_resumes_exactly() -> None:
    acc = DpAccountant(sampling_rate=Q, value_discretization_interval=FAST)
    acc.step(1.0, rounds=30)
    state = json.loads(json.dumps(acc.state_dict()))  # survives JSON and pickle
    state = pickle.loads(pickle.dumps(state))
    reloaded = DpAccountant.from_state_dict(state)
    assert reloaded.epsilon(DELTA) == acc.epsilon(DELTA)
    assert reloaded.epsilon_rdp(DELTA) == acc.epsilon_rdp(DELTA)
    reloaded.step(1.0, rounds=20)

    never_stopped = DpAccountant(sampling_rate=Q, value_discretization_interval=FAST)
    never_stopped.step(1.0, rounds=50)
    one_by_one = DpAccountant(sampling_rate=Q, value_discretization_interval=FAST)
    for _ in range(50):
        one_by_one.step(1.0)
    assert reloaded.runs == never_stopped.runs == one_by_one.runs == [(1.0, 50)]
    assert reloaded.epsilon(DELTA) == never_stopped.epsilon(DELTA) == one_by_one.epsilon(DELTA)


def test_load_state_dict_names_missing_and_unexpected_keys() -> None:
    acc = DpAccountant(sampling_rate=Q)
    state = acc.state_dict()
    del state["runs"]
    state["history"] = []
    with pytest.raises(KeyError, match=r"missing keys \['runs'\], unexpected keys \['history'\]"):
        acc.load_state_dict(state)


def test_load_state_dict_refuses_a_different_sampling_configuration() -> None:
    acc = DpAccountant(sampling_rate=0.05)
    acc.step(1.0, rounds=3)
    with pytest.raises(ValueError, match=r"sampling_rate=0\.05"):
        DpAccountant(sampling_rate=0.04).load_state_dict(acc.state_dict())


def test_per_client_dp_sgd_accountant_persists_across_the_rounds_it_joins() -> None:
    steps_per_round, batch, n_i = 20, 16, 400
    state = DpAccountant.for_dp_sgd(batch, n_i, value_discretization_interval=FAST).state_dict()
    for _joined_round in (1, 4, 9):  # the client is only sampled in these rounds
        acc = DpAccountant.from_state_dict(pickle.loads(pickle.dumps(state)))
        acc.step(1.1, rounds=steps_per_round)
        state = acc.state_dict()
    assert len(pickle.dumps(state)) < 400  # a handful of numbers, whatever the step count
    event = dp_accounting.SelfComposedDpEvent(poisson_round(batch / n_i, 1.1), 60)
    assert rel(DpAccountant.from_state_dict(state).epsilon(DELTA), lib_pld(event)) <= 1e-9


# (d) would_exceed flips exactly before the round that would overspend


def test_would_exceed_stops_exactly_before_the_overspending_round() -> None:
    q, z = 0.1, 1.0
    eps = [lib_pld(dp_accounting.SelfComposedDpEvent(poisson_round(q, z), t)) for t in (5, 6)]
    budget = (eps[0] + eps[1]) / 2
    acc = DpAccountant(sampling_rate=q, value_discretization_interval=FAST)
    while not acc.would_exceed(budget, DELTA, z):
        acc.step(z)
        assert acc.steps <= 10, "would_exceed never flipped"
    assert acc.steps == 5
    assert acc.epsilon(DELTA) <= budget < acc.epsilon_after(DELTA, z)
    # A larger next noise multiplier may still fit in the remaining budget.
    assert not acc.would_exceed(budget, DELTA, 50.0)


# (e) calibration hits the target


def test_calibrated_poisson_noise_meets_the_target_from_below() -> None:
    z = calibrate_noise_multiplier(
        3.0, DELTA, 100, sampling_rate=Q, value_discretization_interval=FAST, tol=1e-4
    )
    acc = DpAccountant(sampling_rate=Q, value_discretization_interval=FAST)
    acc.step(z, rounds=100)
    assert 3.0 - 0.01 <= acc.epsilon(DELTA) <= 3.0
    assert 0.9 < z < 1.1  # about 0.98 for this setting


def test_calibrated_fixed_size_noise_meets_the_target_with_rdp() -> None:
    kw = dict(sampling="fixed_size", cohort_size=50, population=1222)
    z = calibrate_noise_multiplier(3.0, DELTA, 100, tol=1e-4, **kw)
    acc = DpAccountant(**kw)
    acc.step(z, rounds=100)
    assert 3.0 - 0.01 <= acc.epsilon(DELTA) <= 3.0


def test_calibration_refuses_a_budget_met_below_the_search_floor() -> None:
    with pytest.raises(ValueError, match="min_noise_multiplier"):
        calibrate_noise_multiplier(
            1e4, DELTA, 1, sampling_rate=0.01, value_discretization_interval=FAST
        )


# (f) amplification by sampling


def test_smaller_sampling_rate_gives_smaller_epsilon() -> None:
    eps = []
    for q in (0.01, 0.02, 0.05, 0.1, 0.3, 1.0):
        acc = DpAccountant(sampling_rate=q, value_discretization_interval=FAST)
        acc.step(1.0, rounds=20)
        eps.append(acc.epsilon(DELTA))
    assert all(a < b for a, b in itertools.pairwise(eps))
    assert eps[0] < 0.1 * eps[-1]


def test_smaller_fixed_cohort_gives_smaller_epsilon() -> None:
    eps = []
    for m in (10, 50, 200, 1222):
        acc = DpAccountant(sampling="fixed_size", cohort_size=m, population=1222)
        acc.step(1.0, rounds=20)
        eps.append(acc.epsilon(DELTA))
    assert all(a < b for a, b in itertools.pairwise(eps))


# edge cases and bad input


def test_no_rounds_is_zero_and_a_noiseless_round_is_infinite() -> None:
    acc = DpAccountant(sampling_rate=Q)
    assert acc.epsilon(DELTA) == 0.0
    acc.step(0.0)
    assert acc.epsilon(DELTA) == math.inf
    assert acc.would_exceed(100.0, DELTA, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(), "sampling_rate"),
        (dict(sampling_rate=1.5), "sampling_rate"),
        (dict(sampling_rate=0.1, cohort_size=5), "sampling_rate only"),
        (dict(sampling="fixed_size", cohort_size=60, population=50), "cohort_size <= population"),
        (dict(sampling="uniform", sampling_rate=0.1), "sampling must be one of"),
    ],
)
def test_bad_sampling_configuration_is_a_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DpAccountant(**kwargs)


def test_bad_step_and_delta_are_value_errors() -> None:
    acc = DpAccountant(sampling_rate=Q)
    with pytest.raises(ValueError, match="noise_multiplier"):
        acc.step(-1.0)
    with pytest.raises(ValueError, match="rounds"):
        acc.step(1.0, rounds=0)
    with pytest.raises(ValueError, match="delta"):
        acc.epsilon(0.0)


# distributed DP (sum of clients' discrete noise)

DIM = 2**16


def test_ddg_with_negligible_tau_equals_library_rdp_of_the_equivalent_gaussian() -> None:
    acc = DistributedDpAccountant(noise="discrete_gaussian", dim=DIM, l2_sensitivity=1000.0)
    acc.step(300.0, n_clients=50, rounds=100)
    z = acc.gaussian_equivalent_noise_multiplier(300.0, 50)
    assert z == pytest.approx(math.sqrt(50) * 300 / 1000)
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), 100)
    assert rel(acc.epsilon(DELTA), lib_rdp(event, orders=INTEGER_ORDERS)) <= 1e-9


def test_ddg_tau_matches_kairouz_formula_and_penalises_small_noise() -> None:
    n, sigma = 5, 0.5
    by_hand = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))
    assert ddg_tau(sigma, n) == pytest.approx(by_hand, rel=1e-12)
    assert ddg_tau(3.0, 1000) < 1e-30
    acc = DistributedDpAccountant(noise="discrete_gaussian", dim=DIM, l2_sensitivity=2.0)
    acc.step(sigma, n_clients=n, rounds=10)
    z = acc.gaussian_equivalent_noise_multiplier(sigma, n)
    gaussian = lib_rdp(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), 10),
        orders=INTEGER_ORDERS,
    )
    assert acc.epsilon(DELTA) > 1.5 * gaussian  # tau * D is large at sigma = 1/2


@pytest.mark.parametrize(("l2", "variance"), [(10.0, 10.0), (10.0, 1e3), (300.0, 4e4)])
def test_skellam_lines_bound_the_papers_rdp_curve_and_meet_it(l2: float, variance: float) -> None:
    """Agarwal et al.'s RDP (as google-research/federated evaluates it, integer units) is the
    pointwise minimum of the lines, wherever the clamped intercept is not in play."""
    l1 = default_l1_sensitivity(l2, DIM)
    lines = zcdp_lines(
        "skellam", math.sqrt(variance), 1, dim=DIM, l2_sensitivity=l2, l1_sensitivity=l1
    )
    for a in INTEGER_ORDERS:
        paper = a * l2**2 / (2 * variance) + min(
            ((2 * a - 1) * l2**2 + 6 * l1) / (4 * variance**2), 3 * l1 / (2 * variance)
        )
        ours = min(xi + rho * a for rho, xi in lines)
        assert ours >= paper * (1 - 1e-12)
        if 6 * l1 >= l2**2:  # the first line's intercept is not clamped
            assert ours == pytest.approx(paper, rel=1e-12)


def test_skellam_costs_more_than_the_gaussian_and_converges_to_it() -> None:
    def both(local_std: float) -> tuple[float, float]:
        acc = DistributedDpAccountant(noise="skellam", dim=DIM, l2_sensitivity=10.0)
        acc.step(local_std, n_clients=10, rounds=50)
        z = acc.gaussian_equivalent_noise_multiplier(local_std, 10)
        event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), 50)
        return acc.epsilon(DELTA), lib_rdp(event, orders=INTEGER_ORDERS)

    small_sk, small_g = both(1.0)  # aggregate variance 10 (integer units): measured +22%
    large_sk, large_g = both(30.0)
    assert small_sk > 1.1 * small_g
    assert large_g <= large_sk <= 1.001 * large_g


@pytest.mark.parametrize("noise", ["discrete_gaussian", "skellam"])
def test_calibrated_local_noise_meets_the_target(noise: str) -> None:
    kw = dict(noise=noise, n_clients=50, dim=DIM, l2_sensitivity=1000.0)
    sigma = calibrate_local_noise(3.0, DELTA, 100, tol=1e-3, **kw)
    acc = DistributedDpAccountant(noise=noise, dim=DIM, l2_sensitivity=1000.0)
    acc.step(sigma, n_clients=50, rounds=100)
    assert 3.0 - 0.01 <= acc.epsilon(DELTA) <= 3.0


def test_ddp_state_dict_round_trip_and_key_check() -> None:
    acc = DistributedDpAccountant(noise="skellam", dim=DIM, l2_sensitivity=300.0)
    acc.step(50.0, n_clients=20, rounds=7)
    acc.step(50.0, n_clients=18, rounds=3)  # dropouts: fewer noise shares
    state = pickle.loads(pickle.dumps(acc.state_dict()))
    assert DistributedDpAccountant.from_state_dict(state).epsilon(DELTA) == acc.epsilon(DELTA)
    state["extra"] = 1
    with pytest.raises(KeyError, match=r"unexpected keys \['extra'\]"):
        acc.load_state_dict(state)


def test_ddp_poisson_approximation_is_the_library_pld_and_below_the_bound() -> None:
    acc = DistributedDpAccountant(noise="discrete_gaussian", dim=DIM, l2_sensitivity=1000.0)
    acc.step(300.0, n_clients=50, rounds=20)
    z = acc.gaussian_equivalent_noise_multiplier(300.0, 50)
    event = dp_accounting.SelfComposedDpEvent(poisson_round(Q, z), 20)
    approx = acc.approx_epsilon_poisson(DELTA, Q)
    assert rel(approx, lib_pld(event, 1e-4)) <= 1e-9
    assert approx < acc.epsilon(DELTA)


def test_ddg_rejects_scales_below_kairouz_minimum() -> None:
    acc = DistributedDpAccountant(noise="discrete_gaussian", dim=DIM, l2_sensitivity=10.0)
    with pytest.raises(ValueError, match=r">= 0\.5"):
        acc.step(0.4, n_clients=10)
