"""Retries within a round, update screening and quorum, with a scripted pool (no Ray)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedray.server.pool import Outcome
from fedray.server.retry import quorum_shortfall, run_with_retries, screen
from fedray.strategies.base import Contribution


class ScriptedPool:
    """Fails (client, attempt) pairs listed in `errors`; records what it was asked to run."""

    def __init__(
        self, errors: dict[tuple[int, int], tuple[str, bool]], late: frozenset[int] = frozenset()
    ) -> None:
        self.errors = errors
        self.late = late  # clients still running at the round deadline
        self.waves: list[list[int]] = []
        self.deadlines: list[float] = []

    def wait_ready(self) -> list[dict[str, Any]]:
        self.waves.append([])  # marks where the pool was asked to wait for its actors
        return []

    def run(
        self, jobs: list[int], submit: Any, timeout_s: float = 0.0, deadline_s: float = 0.0
    ) -> list[Outcome]:
        self.waves.append(list(jobs))
        self.deadlines.append(deadline_s)
        out = []
        for cid in jobs:
            if cid in self.late:
                out.append(Outcome(cid, error="past the deadline", late=True))
                continue
            attempt = submit(None, cid)
            error = self.errors.get((cid, attempt))
            if error is None:
                out.append(Outcome(cid, value=f"update {cid}"))
            else:
                out.append(Outcome(cid, error=error[0], actor_lost=error[1]))
        return out


def test_failed_clients_are_retried_until_they_succeed_or_run_out() -> None:
    pool = ScriptedPool(
        {
            (1, 0): ("RuntimeError: boom", False),
            (3, 0): ("actor lost: died", True),
            (3, 1): ("timeout after 5 s", False),
            (3, 2): ("RuntimeError: again", False),
        }
    )
    calls = run_with_retries(
        pool, [0, 1, 2, 3], lambda actor, cid, attempt: attempt, timeout_s=5, max_retries=2
    )
    assert pool.waves == [[0, 1, 2, 3], [], [1, 3], [], [3]]
    assert sorted(calls.values) == ["update 0", "update 1", "update 2"]
    assert calls.failures == [
        (1, "RuntimeError: boom (attempt 1)"),
        (3, "actor lost: died (attempt 1)"),
        (3, "timeout after 5 s (attempt 2)"),
        (3, "RuntimeError: again (attempt 3)"),
    ]
    assert (calls.retries, calls.calls_lost, len(calls.outcomes)) == (3, 1, 7)


def test_late_clients_are_not_retried_and_the_deadline_bounds_every_wave() -> None:
    pool = ScriptedPool({(1, 0): ("RuntimeError: boom", False)}, late=frozenset({2}))
    calls = run_with_retries(
        pool,
        [0, 1, 2],
        lambda actor, cid, attempt: attempt,
        timeout_s=0,
        max_retries=3,
        deadline_s=60,
    )
    assert pool.waves == [[0, 1, 2], [], [1]]  # 2 was late: never retried
    assert sorted(calls.values) == ["update 0", "update 1"]
    assert [cid for cid, _ in calls.failures] == [1, 2]
    assert 0 < pool.deadlines[1] <= pool.deadlines[0] <= 60  # what is left of the round


def test_no_retries_means_one_wave() -> None:
    pool = ScriptedPool({(0, 0): ("RuntimeError: x", False)})
    calls = run_with_retries(
        pool, [0, 1], lambda a, c, attempt: attempt, timeout_s=0, max_retries=0
    )
    assert pool.waves == [[0, 1]]
    assert calls.failures == [(0, "RuntimeError: x")] and calls.retries == 0


def _c(cid: int, values: list[float]) -> Contribution:
    return Contribution(cid, {"w": np.array(values, np.float32)}, num_samples=1)


def test_screen_rejects_nan_then_norm_outliers() -> None:
    ref = {"w": np.zeros(2, np.float32)}
    cohort = [
        _c(0, [3.0, 4.0]),  # norm 5
        _c(1, [0.0, 5.0]),  # norm 5
        _c(2, [6.0, 8.0]),  # norm 10: 2x the median 5
        _c(3, [np.nan, 0.0]),
        _c(4, [0.0, 30.0]),  # norm 30: 6x the median (median over the 4 finite ones: 7.5 -> 4x)
    ]
    kept, rejected = screen(cohort, ref, max_norm_ratio=3.0)
    assert [c.client_id for c in kept] == [0, 1, 2]
    assert [cid for cid, _ in rejected] == [3, 4]
    assert "NaN or Inf" in rejected[0][1]
    assert rejected[1][1] == "norm 30 > 3 x the median norm 7.5"
    kept, rejected = screen(cohort, ref, max_norm_ratio=0.0)  # off: only the NaN goes
    assert [c.client_id for c in kept] == [0, 1, 2, 4] and [r[0] for r in rejected] == [3]


def test_quorum_shortfall_message() -> None:
    assert quorum_shortfall(3, 2, 4, 2, []) is None
    msg = quorum_shortfall(3, 1, 4, 2, [(5, "RuntimeError: boom")])
    assert msg == (
        "round 3: 1 of 4 clients returned a valid update, fewer than mode.min_clients=2; "
        "first failure: RuntimeError: boom"
    )
