"""Discrete Gaussian / Skellam samplers and the distributed-DP modular encoding pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg, stats

from fedray.privacy.lib.discrete import (
    DdpEncoding,
    conditional_round,
    discrete_gaussian_pmf,
    discrete_gaussian_variance,
    fwht,
    noise_tail_bound,
    rotate,
    rounded_norm_bound,
    sample_discrete_gaussian,
    sample_skellam,
    state_spec,
    unrotate,
)

N_DRAWS = 200_000


def check_moments(x: np.ndarray, variance: float) -> None:
    """Mean 0 and the given variance, each within 5 standard errors."""
    n = x.size
    assert abs(x.mean()) <= 5 * math.sqrt(variance / n)
    fourth = np.mean((x - x.mean()) ** 4)  # standard error of the sample variance from the sample
    assert abs(x.var() - variance) <= 5 * math.sqrt((fourth - x.var() ** 2) / n)


def chi_square_p(samples: np.ndarray, pmf: np.ndarray, support: np.ndarray) -> float:
    """p-value of samples against pmf on support, with both tails lumped into the end bins."""
    clipped = np.clip(samples, support[0], support[-1])
    observed = np.bincount(clipped - support[0], minlength=support.size)
    expected = pmf * samples.size
    expected[0] += samples.size * (1 - pmf.sum()) / 2
    expected[-1] += samples.size * (1 - pmf.sum()) / 2
    return float(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


# samplers


@pytest.mark.parametrize("sigma", [0.8, 3.7, 50.0])
def test_discrete_gaussian_mean_and_variance(sigma: float) -> None:
    x = sample_discrete_gaussian(sigma, N_DRAWS, np.random.default_rng(1))
    assert x.dtype == np.int64
    check_moments(x.astype(np.float64), discrete_gaussian_variance(sigma))


def test_discrete_gaussian_pmf_shape_and_the_test_has_power() -> None:
    sigma, support = 1.2, np.arange(-5, 6)
    pmf = discrete_gaussian_pmf(sigma, support)
    x = sample_discrete_gaussian(sigma, N_DRAWS, np.random.default_rng(2))
    assert chi_square_p(x, pmf, support) > 1e-3
    # A rounded continuous Gaussian of the same sigma is clearly rejected by the same test.
    rounded = np.rint(np.random.default_rng(2).normal(0, sigma, N_DRAWS)).astype(np.int64)
    assert chi_square_p(rounded, pmf, support) < 1e-6


def test_skellam_moments_pmf_and_closure_under_summation() -> None:
    rng = np.random.default_rng(3)
    x = sample_skellam(6.0, N_DRAWS, rng)
    check_moments(x.astype(np.float64), 6.0)
    support = np.arange(-8, 9)
    assert chi_square_p(x, stats.skellam.pmf(support, 3.0, 3.0), support) > 1e-3
    # The sum of 10 clients' Skellam(variance 3) noise is Skellam(variance 30).
    total = sample_skellam(3.0, (10, N_DRAWS // 4), rng).sum(axis=0)
    support = np.arange(-15, 16)
    assert chi_square_p(total, stats.skellam.pmf(support, 15.0, 15.0), support) > 1e-3


@pytest.mark.parametrize("noise", ["discrete_gaussian", "skellam"])
def test_summed_noise_stays_within_the_wrap_around_tail_bound(noise: str) -> None:
    n, sigma, dim, p = 5, 3.0, 1024, 0.05
    t = noise_tail_bound(noise, sigma, n, dim, p)
    rng = np.random.default_rng(6)
    sampler = (
        (lambda size: sample_discrete_gaussian(sigma, size, rng))
        if noise == "discrete_gaussian"
        else (lambda size: sample_skellam(sigma**2, size, rng))
    )
    peaks = np.array([np.abs(sampler((n, dim)).sum(axis=0)).max() for _ in range(200)])
    assert np.mean(peaks >= t) <= p
    assert np.max(peaks) > 0.6 * t  # and the bound is not absurdly loose


def test_samplers_are_reproducible_from_the_generator() -> None:
    a = sample_discrete_gaussian(2.5, 1000, np.random.default_rng(7))
    b = sample_discrete_gaussian(2.5, 1000, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_discrete_gaussian(2.5, 1000, np.random.default_rng(8)))
    with pytest.raises(ValueError, match="Generator"):
        sample_skellam(1.0, 3, 7)  # type: ignore[arg-type]


# rotation


def test_fwht_is_the_orthonormal_hadamard_transform_and_its_own_inverse() -> None:
    x = np.random.default_rng(0).standard_normal(16)
    np.testing.assert_allclose(fwht(x), linalg.hadamard(16) @ x / 4, atol=1e-12)
    np.testing.assert_allclose(fwht(fwht(x)), x, atol=1e-12)
    with pytest.raises(ValueError, match="power of two"):
        fwht(np.ones(12))


def test_rotation_pads_preserves_norm_inverts_and_flattens_spikes() -> None:
    x = np.random.default_rng(0).standard_normal(1000)
    y = rotate(x, seed=5)
    assert y.shape == (1024,)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    np.testing.assert_allclose(unrotate(y, 5, 1000), x, atol=1e-12)
    assert not np.allclose(rotate(x, seed=6), y)
    spike = np.zeros(1000)
    spike[3] = 1.0
    np.testing.assert_allclose(np.abs(rotate(spike, 5)), 1 / 32, rtol=1e-12)


# conditional randomized rounding


def test_conditional_rounding_is_unbiased_and_within_the_bound() -> None:
    rng = np.random.default_rng(4)
    x = rng.uniform(-3, 3, 64)
    bound = rounded_norm_bound(float(np.linalg.norm(x)), 64, math.exp(-0.5))
    draws = np.stack([conditional_round(x, bound, rng) for _ in range(4000)])
    assert np.all(np.linalg.norm(draws, axis=1) <= bound)
    assert np.all(np.abs(draws - x) < 1)
    assert np.max(np.abs(draws.mean(axis=0) - x)) < 0.05  # per-coordinate SE <= 0.008


def test_rounding_norm_exceeds_kairouz_bound_with_probability_at_most_beta() -> None:
    rng = np.random.default_rng(5)
    x = np.full(1024, 0.5)  # every coordinate maximally uncertain
    beta = 0.05
    bound = rounded_norm_bound(float(np.linalg.norm(x)), x.size, beta)
    norms = np.linalg.norm(np.floor(x) + (rng.random((4000, x.size)) < 0.5), axis=1)
    assert np.mean(norms > bound) <= beta


def test_conditional_rounding_gives_up_with_a_value_error() -> None:
    x = np.full(16, 0.5)
    with pytest.raises(ValueError, match="conditional rounding failed 5 times"):
        conditional_round(x, 0.1, np.random.default_rng(0), max_retries=5)


# the pipeline


def client_states(n: int, rng: np.random.Generator, clip: float = 1.0) -> list[dict]:
    """n updates of 1000 float32 values in two keys, norms up to ``clip``, signs mixed."""
    states = []
    for _ in range(n):
        v = rng.standard_normal(1000)
        v *= rng.uniform(0.2, 1.0) * clip / np.linalg.norm(v)
        v = v.astype(np.float32).astype(np.float64)
        v *= min(1.0, clip / np.linalg.norm(v))  # stay <= clip after the float32 cast
        states.append({"w": v[:600].reshape(20, 30).astype(np.float32), "b": v[600:]})
        states[-1]["b"] = states[-1]["b"].astype(np.float32)
    return states


def run_pipeline(enc: DdpEncoding, states: list[dict], seed: int = 42) -> tuple[dict, dict]:
    """(decoded sum, exact float64 sum) for the given client states."""
    encodings = [
        enc.encode(s, rotation_seed=seed, rng=np.random.default_rng(1000 + i))
        for i, s in enumerate(states)
    ]
    decoded = enc.decode(enc.aggregate(encodings), state_spec(states[0]), rotation_seed=seed)
    exact = {k: sum(s[k].astype(np.float64) for s in states) for k in states[0]}
    return decoded, exact


def l2_error(decoded: dict, exact: dict) -> float:
    return math.sqrt(sum(float(np.sum((decoded[k] - exact[k]) ** 2)) for k in exact))


@pytest.mark.parametrize("bits", [16, 40])  # uint32 and uint64 transport
def test_decoded_sum_is_within_the_rounding_bound_without_noise(bits: int) -> None:
    n = 7
    states = client_states(n, np.random.default_rng(0))
    enc = DdpEncoding(dim=1000, clip=1.0, gamma=1e-3, bits=bits, n_clients=n)
    decoded, exact = run_pipeline(enc, states)
    assert {k: (v.shape, v.dtype) for k, v in decoded.items()} == {
        "w": ((20, 30), np.float32),
        "b": ((400,), np.float32),
    }
    err = l2_error(decoded, exact)
    exact_norm = math.sqrt(sum(float(np.sum(v**2)) for v in exact.values()))
    # gamma n sqrt(D) for the rounding, 2^-24 relative for the float32 output.
    bound = enc.rounding_error_bound(n) + 2.0**-24 * (exact_norm + enc.rounding_error_bound(n))
    assert 0 < err <= bound
    assert err > 0.05 * bound  # the bound is not vacuous (measured ~0.15 of it)


@pytest.mark.parametrize("noise", ["discrete_gaussian", "skellam"])
def test_decoded_noise_has_the_summed_variance(noise: str) -> None:
    n, sigma, gamma = 5, 20.0, 1e-3
    rng = np.random.default_rng(1)
    states = client_states(n, rng)
    enc = DdpEncoding(
        dim=1000, clip=1.0, gamma=gamma, bits=24, n_clients=n, noise=noise, local_std=sigma
    )
    decoded, exact = run_pipeline(enc, states)
    per_coord = np.concatenate([(decoded[k] - exact[k]).reshape(-1) for k in exact])
    # Rotation is orthonormal: each coordinate carries n sigma^2 gamma^2 (+ <= n/4 rounding).
    expected = n * sigma**2 * gamma**2
    assert abs(per_coord.mean()) < 5 * math.sqrt(expected / per_coord.size)
    assert 0.85 <= np.mean(per_coord**2) / expected <= 1.15


def test_negative_values_wrap_and_still_decode() -> None:
    states = client_states(3, np.random.default_rng(2))
    enc = DdpEncoding(dim=1000, clip=1.0, gamma=1e-3, bits=14, n_clients=3)
    one = enc.encode(states[0], rotation_seed=1, rng=np.random.default_rng(0))
    assert one.dtype == np.uint32 and one.max() >= 2**13 > one.min()  # negatives sit up high
    decoded, exact = run_pipeline(enc, states, seed=1)
    assert l2_error(decoded, exact) <= enc.rounding_error_bound(3) * (1 + 1e-6)


def test_too_few_bits_is_a_value_error_computed_from_clients_and_norm_bound() -> None:
    kw = dict(dim=1000, clip=1.0, gamma=1e-3, n_clients=7)
    # Delta2 = 1000.64 for c / gamma = 1000, D = 1024: 7 x 1000.64 = 7004.5 needs 14 bits.
    message = r"bits=13 can wrap around: 7 clients x norm bound 1000\.6"
    with pytest.raises(ValueError, match=message):
        DdpEncoding(bits=13, **kw)
    assert DdpEncoding(bits=14, **kw).l2_sensitivity == pytest.approx(1000.636, abs=1e-3)
    # Noise widens the range: the same 14 bits no longer suffice with sigma = 200 per client.
    with pytest.raises(ValueError, match="noise tail"):
        DdpEncoding(bits=14, local_std=200.0, **kw)


def test_adversarial_aligned_updates_reach_the_worst_case_and_still_decode() -> None:
    """Updates whose rotation is one spike: the sum needs every bit the check asks for."""
    n, seed = 7, 9
    spike = np.zeros(1024)
    spike[0] = 1.0 - 1e-12  # norm just under the clip
    x = unrotate(spike, seed, 1000)  # rotate(x) = spike, up to the cut-off padding
    x *= (1.0 - 1e-12) / np.linalg.norm(x)
    state = {"v": x.astype(np.float64)}
    enc = DdpEncoding(dim=1000, clip=1.0, gamma=1e-3, bits=14, n_clients=n)
    summed = enc.aggregate(
        [enc.encode(state, rotation_seed=seed, rng=np.random.default_rng(i)) for i in range(n)]
    )
    centred = np.where(summed >= 2**13, summed.astype(np.int64) - 2**14, summed.astype(np.int64))
    assert np.abs(centred).max() >= 2**12  # 13 bits would have wrapped this coordinate
    decoded = enc.decode(summed, state_spec(state), rotation_seed=seed)
    assert l2_error(decoded, {"v": n * x}) <= enc.rounding_error_bound(n) * (1 + 1e-6)


def test_encode_and_aggregate_reject_bad_input() -> None:
    enc = DdpEncoding(dim=4, clip=1.0, gamma=0.01, bits=16, n_clients=2)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="exceeds clip"):
        enc.encode({"a": np.full(4, 0.6, np.float32)}, rotation_seed=0, rng=rng)
    with pytest.raises(ValueError, match="dim=4"):
        enc.encode({"a": np.zeros(5, np.float32)}, rotation_seed=0, rng=rng)
    ok = enc.encode({"a": np.full(4, 0.1, np.float32)}, rotation_seed=0, rng=rng)
    with pytest.raises(ValueError, match="n_clients=2"):
        enc.aggregate([ok, ok, ok])
    with pytest.raises(ValueError, match="dtype"):
        enc.aggregate([ok.astype(np.uint64)])
    with pytest.raises(ValueError, match="bits must be in"):
        DdpEncoding(dim=4, clip=1.0, gamma=0.01, bits=65, n_clients=2)
