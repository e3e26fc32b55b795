"""Speed factors: seeded, exact slow counts, lognormal clamp, and the delay formula."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.client.speed import SpeedConfig, check_speed, delay_s, speed_factors


def test_slow_fraction_marks_exactly_the_rounded_share_of_clients() -> None:
    s = SpeedConfig(kind="slow_fraction", slow_fraction=0.3, slowdown=5.0)
    f = speed_factors(s, 24, seed=0)
    assert sorted(set(f.tolist())) == [1.0, 5.0]
    assert int((f == 5.0).sum()) == 7  # round(0.3 * 24) = round(7.2)
    np.testing.assert_array_equal(f, speed_factors(s, 24, seed=0))  # a function of the seed
    assert not np.array_equal(f, speed_factors(s, 24, seed=1))


def test_lognormal_factors_are_clamped_at_one_and_spread_with_sigma() -> None:
    f = speed_factors(SpeedConfig(kind="lognormal", sigma=1.0), 1000, seed=3)
    assert f.min() == 1.0 and f.max() > 5.0
    assert 0.4 < float((f == 1.0).mean()) < 0.6  # the faster half of the lognormal
    assert np.array_equal(speed_factors(SpeedConfig(), 5, seed=3), np.ones(5))


@pytest.mark.parametrize(
    ("factor", "compute", "expected"), [(1.0, 2.0, 0.0), (5.0, 0.5, 2.0), (2.5, 2.0, 3.0)]
)
def test_delay_is_the_extra_time_of_a_slower_client(
    factor: float, compute: float, expected: float
) -> None:
    assert delay_s(factor, compute) == pytest.approx(expected)


def test_check_speed_names_the_bad_key() -> None:
    assert check_speed(SpeedConfig()) is None
    assert "speed.slowdown" in (check_speed(SpeedConfig(slowdown=0.9)) or "")
