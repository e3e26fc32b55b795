"""global_norm / clip_to_norm (property-based) and AdaptiveClip (Andrew et al. 2021)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedray.privacy.lib.clipping import (
    AdaptiveClip,
    clip_to_norm,
    global_norm,
    split_noise_multiplier,
)

F32 = np.finfo(np.float32)

# float32 values across the whole range: zeros, subnormals, tiny, huge (squares overflow float32).
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, float(F32.smallest_subnormal), float(F32.tiny), float(F32.max), -float(F32.max)]
)
states = st.dictionaries(
    st.text("abcdefgh.", min_size=1, max_size=6),
    arrays(np.float32, st.integers(0, 5).map(lambda n: (n,)), elements=float32s),
    min_size=1,
    max_size=4,
)
clips = st.floats(min_value=1e-44, max_value=1e38) | st.sampled_from(
    [float(F32.smallest_subnormal), 1e-40, float(F32.tiny), 1.0, float(F32.max)]
)


def exact_norm(state: dict[str, np.ndarray]) -> float:
    """Reference: Python floats with exact scaling, no numpy accumulation."""
    values = [float(x) for v in state.values() for x in v.reshape(-1)]
    peak = max((abs(x) for x in values), default=0.0)
    return 0.0 if peak == 0 else peak * math.sqrt(math.fsum((x / peak) ** 2 for x in values))


@settings(max_examples=300, deadline=None)
@given(states)
def test_global_norm_is_exact_and_does_not_overflow(state: dict[str, np.ndarray]) -> None:
    got = global_norm(state)
    assert math.isfinite(got)
    assert got == pytest.approx(exact_norm(state), rel=1e-12, abs=0.0)


@settings(max_examples=400, deadline=None)
@given(states, clips)
def test_clip_never_exceeds_the_bound(state: dict[str, np.ndarray], clip: float) -> None:
    out, before = clip_to_norm(state, clip)
    assert before == global_norm(state)
    assert global_norm(out) <= clip
    assert set(out) == set(state)
    for key in state:
        assert out[key].dtype == np.float32 and out[key].shape == state[key].shape
        # Same direction: every coordinate scaled by one non-negative factor (no sign flips).
        assert np.all(np.sign(out[key]) * np.sign(state[key]) >= 0)
    if before <= clip:
        for key in state:
            np.testing.assert_array_equal(out[key], state[key])
    elif clip >= 1e-30:  # in float32's normal range the clipped norm is C up to rounding
        assert global_norm(out) >= clip * (1 - 1e-5)


def test_clip_scales_all_keys_by_one_factor() -> None:
    state = {"a": np.array([3.0], np.float32), "b": np.array([0.0, 4.0], np.float32)}
    out, before = clip_to_norm(state, 1.0)
    assert before == 5.0
    np.testing.assert_allclose(out["a"], [0.6], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [0.0, 0.8], rtol=1e-6)


def test_clip_does_not_alias_its_input() -> None:
    state = {"a": np.ones(3, np.float32)}
    out, _ = clip_to_norm(state, 10.0)
    out["a"][0] = 7.0
    assert state["a"][0] == 1.0


@pytest.mark.parametrize(
    ("state", "clip", "match"),
    [
        ({"a": np.array([np.nan], np.float32)}, 1.0, "NaN or inf"),
        ({"a": np.array([np.inf], np.float32)}, 1.0, "NaN or inf"),
        ({"a": np.array([1], np.int64)}, 1.0, "floating numpy array"),
        ({"a": np.ones(2, np.float32)}, 0.0, "clip norm"),
        ({"a": np.ones(2, np.float32)}, float("inf"), "clip norm"),
    ],
)
def test_bad_input_is_a_value_error(state: dict, clip: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        clip_to_norm(state, clip)


# AdaptiveClip


def run_adaptive(
    initial: float, quantile: float, seed: int, rounds: int = 50, per_round: int = 100
) -> float:
    rng = np.random.default_rng(seed)
    tracker = AdaptiveClip(initial, per_round, target_quantile=quantile)
    for _ in range(rounds):
        norms = rng.lognormal(mean=math.log(2.0), sigma=0.5, size=per_round)  # median 2.0
        tracker.update(norms, rng)
    return tracker.clip


@pytest.mark.parametrize("initial", [0.2, 20.0])
@pytest.mark.parametrize("seed", range(5))
def test_adaptive_clip_tracks_the_median_within_10_percent(initial: float, seed: int) -> None:
    assert abs(run_adaptive(initial, 0.5, seed) / 2.0 - 1) <= 0.10


@pytest.mark.parametrize("seed", range(3))
def test_adaptive_clip_tracks_the_90th_percentile(seed: int) -> None:
    p90 = 2.0 * math.exp(0.5 * 1.2815515655446004)  # lognormal quantile: exp(mu + s z_0.9)
    assert abs(run_adaptive(2.0, 0.9, seed) / p90 - 1) <= 0.10


def test_adaptive_clip_moves_geometrically_by_the_noised_fraction() -> None:
    tracker = AdaptiveClip(1.0, 4, learning_rate=0.2, count_noise_std=0.0)
    # 3 of 4 clients at or under C: b_bar = 0.75, C <- C exp(-0.2 (0.75 - 0.5)).
    new = tracker.update(np.array([0.5, 1.0, 0.9, 3.0]), np.random.default_rng(0))
    assert new == pytest.approx(math.exp(-0.05), rel=1e-12)
    # The count noise is Gaussian with std sigma_b on the centred sum, divided by m.
    noisy = AdaptiveClip(1.0, 4, learning_rate=0.2, count_noise_std=2.0)
    draw = np.random.default_rng(7).normal(0.0, 2.0)
    got = noisy.update(np.array([0.5, 1.0, 0.9, 3.0]), np.random.default_rng(7))
    assert got == pytest.approx(math.exp(-0.2 * (0.75 + draw / 4 - 0.5)), rel=1e-12)


def test_update_from_bits_equals_update_from_norms() -> None:
    norms = np.random.default_rng(1).lognormal(size=30)
    a, b = AdaptiveClip(1.0, 30), AdaptiveClip(1.0, 30)
    bits = np.array([a.client_bit(n) for n in norms])
    assert a.update(norms, np.random.default_rng(3)) == b.update_from_bits(
        bits, np.random.default_rng(3)
    )


def test_adaptive_state_dict_round_trip_continues_identically() -> None:
    norms = np.random.default_rng(9).lognormal(size=(6, 40))
    a = AdaptiveClip(1.0, 40)
    for i, row in enumerate(norms[:3]):
        a.update(row, np.random.default_rng(i))
    b = AdaptiveClip(123.0, 1)
    b.load_state_dict(a.state_dict())
    for i, row in enumerate(norms[3:], start=3):
        assert a.update(row, np.random.default_rng(i)) == b.update(row, np.random.default_rng(i))
    assert b.rounds == 6
    state = b.state_dict()
    del state["rounds"]
    with pytest.raises(KeyError, match=r"missing keys \['rounds'\]"):
        b.load_state_dict(state)


def test_split_noise_multiplier_matches_gaussian_composition() -> None:
    z, sigma_b = 1.0, 5.0  # sigma_b = m / 20 for m = 100
    z_delta = split_noise_multiplier(z, sigma_b)
    # Update (sensitivity 1, noise z_delta) + centred count (sensitivity 1/2, noise sigma_b)
    # compose to one Gaussian of multiplier z.
    assert z_delta**-2 + (0.5 / sigma_b) ** 2 == pytest.approx(z**-2, rel=1e-12)
    assert z < z_delta < 1.01 * z
    with pytest.raises(ValueError, match="must exceed"):
        split_noise_multiplier(1.0, 0.5)


def test_adaptive_clip_requires_a_generator() -> None:
    with pytest.raises(ValueError, match="Generator"):
        AdaptiveClip(1.0, 10).update(np.ones(10), 0)  # type: ignore[arg-type]


# AdaptiveClip bounds


def grow(tracker: AdaptiveClip, rounds: int, seed: int, norm: float = 1e6) -> list[float]:
    """`rounds` updates in which every client's norm is far above C (all bits 0), under count
    noise: the clip's run-away direction. The clip after each round."""
    rng = np.random.default_rng(seed)
    m = int(tracker.expected_cohort_size)
    return [tracker.update(np.full(m, norm), rng) for _ in range(rounds)]


@pytest.mark.parametrize("seed", range(3))
def test_max_clip_caps_a_clip_that_would_run_away(seed: int) -> None:
    free = grow(AdaptiveClip(0.25, 20, count_noise_std=10.0), 200, seed)
    capped = grow(AdaptiveClip(0.25, 20, count_noise_std=10.0, max_clip=0.5), 200, seed)
    assert max(free) > 10 * 0.5  # unbounded, it runs far past the cap ...
    assert max(capped) <= 0.5 and capped[-1] == 0.5  # ... bounded, it reaches it and stays
    first = next(i for i, c in enumerate(free) if c > 0.5)
    assert first > 0 and capped[:first] == free[:first]  # identical until the cap binds


def test_min_clip_bounds_a_clip_that_would_collapse() -> None:
    free = grow(AdaptiveClip(0.25, 20, count_noise_std=10.0), 200, 0, norm=0.0)
    floored = grow(AdaptiveClip(0.25, 20, count_noise_std=10.0, min_clip=0.1), 200, 0, norm=0.0)
    assert min(free) < 0.01 and min(floored) == 0.1 == floored[-1]


def test_without_bounds_the_clip_follows_the_geometric_rule_exactly() -> None:
    """None, None: the sequence of the unbounded rule, bit for bit."""
    norms = np.random.default_rng(4).lognormal(mean=2.0, size=(100, 20))
    tracker, rng = AdaptiveClip(0.25, 20, count_noise_std=3.0), np.random.default_rng(5)
    got = [tracker.update(row, rng) for row in norms]
    clip, want, noise = 0.25, [], np.random.default_rng(5)
    for row in norms:
        draw = noise.normal(0.0, 3.0)
        b_bar = (float(np.sum(row <= clip)) - 0.5 * len(row) + draw) / 20 + 0.5
        clip *= math.exp(-0.2 * (b_bar - 0.5))
        want.append(clip)
    assert got == want and max(got) > 5  # far from its start: towards the median norm, 7.4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_clip": 0.0}, "max_clip must be finite and > 0"),
        ({"min_clip": -1.0}, "min_clip must be finite and > 0"),
        ({"max_clip": math.inf}, "max_clip must be finite"),
        ({"min_clip": 0.5, "max_clip": 2.0}, r"initial_clip=0.25 must lie in \[min_clip"),
        ({"min_clip": 0.1, "max_clip": 0.2}, r"initial_clip=0.25 must lie in"),
    ],
)
def test_bad_bounds_are_value_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdaptiveClip(0.25, 20, **kwargs)


def test_bounds_are_settings_kept_through_a_state_dict_round_trip() -> None:
    a = AdaptiveClip(0.25, 20, count_noise_std=10.0, max_clip=0.5)
    grow(a, 30, 1)
    b = AdaptiveClip(0.25, 20, count_noise_std=10.0, max_clip=0.5)
    b.load_state_dict(a.state_dict())
    assert "max_clip" not in a.state_dict() and b.max_clip == 0.5
    assert grow(a, 30, 2) == grow(b, 30, 2)
    with pytest.raises(ValueError, match=r"saved clip 0.5 lies outside \[min_clip, max_clip\]"):
        AdaptiveClip(0.25, 20, max_clip=0.3).load_state_dict(a.state_dict())
