"""The one-run canary audit of experiments/privacy/audit.py, on dp_fedavg's real code path: the
estimate stays below the accountant's claim, and a mechanism with 10x less noise exceeds it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).parents[2] / "experiments" / "privacy" / "audit.py"
_SPEC = importlib.util.spec_from_file_location("dp_audit", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
audit = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = audit  # its dataclasses look their module up
_SPEC.loader.exec_module(audit)


@pytest.mark.parametrize("seed", range(3))
def test_the_estimate_stays_below_the_claim_for_the_real_mechanism(seed: int) -> None:
    result = audit.run_audit(seed=seed)
    assert 9 < result.claimed_epsilon < 10  # z = 1, q = 0.3, 20 rounds, delta 1e-5: 9.5
    assert 0 < result.empirical_epsilon <= result.claimed_epsilon  # measured 5.7
    assert result.cos_inserted_mean > result.cos_held_out_mean


@pytest.mark.parametrize("seed", range(3))
def test_the_estimate_exceeds_the_claim_when_the_noise_is_ten_times_too_small(seed: int) -> None:
    result = audit.run_audit(seed=seed, broken=True)
    assert result.empirical_epsilon > result.claimed_epsilon  # measured 41.7 against 9.5


def test_the_audit_goes_through_a_codec_too() -> None:
    result = audit.run_audit(seed=0, codec="int8", rounds=10)
    assert 0 < result.empirical_epsilon <= result.claimed_epsilon
