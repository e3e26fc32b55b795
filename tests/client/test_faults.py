"""Seeded fault injection: which calls fail is known in advance, and config errors are one line."""

from __future__ import annotations

import pytest

from fedray.client.faults import FaultInjector, InjectedFault, check, parse_schedule


def test_schedule_entries_fail_their_first_attempts_only() -> None:
    faults = FaultInjector({"schedule": ["1:0:raise", "2:3:die:2", "3:1:hang"]})
    assert faults.fault(1, 0) == "raise"
    assert faults.fault(1, 0, attempt=1) is None  # one failing attempt by default
    assert faults.fault(2, 3, attempt=1) == "die"  # :2 makes the retry fail too
    assert faults.fault(2, 3, attempt=2) is None
    assert faults.fault(3, 1) == "hang"
    assert faults.fault(1, 1) is None and faults.fault(2, 0) is None


def test_raise_fault_raises_and_delay_sleeps() -> None:
    faults = FaultInjector({"schedule": ["1:0:raise", "1:1:delay"], "delay_s": 0.0})
    with pytest.raises(InjectedFault, match="client 0 in round 1"):
        faults.inject(1, 0)
    faults.inject(1, 1)  # a delay is not a failure
    faults.inject(1, 0, attempt=1)


def test_rate_draws_are_seeded_and_close_to_the_rate() -> None:
    cfg = {"rate": 0.25, "kind": "raise", "seed": 7}
    a = [FaultInjector(cfg).fault(r, c) for r in range(1, 21) for c in range(20)]
    b = [FaultInjector(cfg).fault(r, c) for r in range(1, 21) for c in range(20)]
    assert a == b
    assert set(a) == {"raise", None}
    assert 70 <= a.count("raise") <= 130  # 400 draws at p=0.25: mean 100, sd 8.7
    other = [FaultInjector({**cfg, "seed": 8}).fault(r, c) for r in range(1, 21) for c in range(20)]
    assert other != a


def test_parse_schedule_default_attempts() -> None:
    assert parse_schedule(["4:2:delay"], attempts=3) == {(4, 2): ("delay", 3)}


@pytest.mark.parametrize(
    ("cfg", "timeout", "message"),
    [
        ({"schedule": ["1:x:raise"]}, 0, "not ROUND:CLIENT:KIND"),
        ({"schedule": ["1:2:explode"]}, 0, "kind must be one of"),
        ({"schedule": ["1:2:hang"]}, 0, "mode.client_timeout_s=0"),
        ({"rate": 1.5}, 0, "faults.rate=1.5"),
        ({"rate": 0.1, "kind": "melt"}, 0, "faults.kind='melt'"),
        ({"attempts": 0}, 0, "faults.attempts=0"),
    ],
)
def test_check_names_the_problem(cfg: dict, timeout: float, message: str) -> None:
    assert message in (check(cfg, timeout) or "")


def test_check_accepts_a_hang_with_a_timeout() -> None:
    assert check({"schedule": ["1:2:hang"]}, 5.0) is None
