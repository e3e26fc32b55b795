"""The collect stage: retries within a round, the deadline, update screening, quorum (no Ray)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fedray.core.types import Contribution, Failure
from fedray.server.collect import collect_cohort, quorum_shortfall, screen
from fedray.server.pool import Outcome


class ScriptedPool:
    """Fails (client, attempt) pairs listed in `errors`; `late` clients never finish."""

    def __init__(
        self, errors: dict[tuple[int, int], tuple[str, bool]], late: frozenset[int] = frozenset()
    ) -> None:
        self.errors, self.late = errors, late
        self.submitted: list[tuple[int, int, int | None]] = []  # (client, attempt, pinned actor)
        self._ready: list[Outcome] = []
        self._hanging: list[Any] = []

    def submit(self, job: Any, call: Any, *, actor: int | None = None, timeout_s: float = 0.0):
        self.submitted.append((job.client_id, job.attempt, actor))
        call(None)  # the call is built for this client and attempt
        if job.client_id in self.late:
            self._hanging.append(job)
            return
        error = self.errors.get((job.client_id, job.attempt))
        if error is None:
            self._ready.append(Outcome(job, value=f"update {job.client_id}"))
        else:
            self._ready.append(Outcome(job, error=error[0], actor_lost=error[1]))

    def poll(self, timeout_s: float | None = None) -> list[Outcome]:
        out, self._ready = self._ready, []
        if not out and timeout_s:
            time.sleep(timeout_s)
        return out

    def drain(self, why: str) -> list[Outcome]:
        out = [Outcome(job, error=why, late=True) for job in self._hanging]
        self._hanging = []
        return out


def _calls(log: list[tuple[int, int]]):
    def call_for(cid: int, attempt: int):
        return lambda actor: log.append((cid, attempt))

    return call_for


def test_failed_clients_are_retried_until_they_succeed_or_run_out() -> None:
    pool = ScriptedPool(
        {
            (1, 0): ("RuntimeError: boom", False),
            (3, 0): ("actor lost: died", True),
            (3, 1): ("timeout after 5 s", False),
            (3, 2): ("RuntimeError: again", False),
        }
    )
    log: list[tuple[int, int]] = []
    calls = collect_cohort(pool, [0, 1, 2, 3], _calls(log), timeout_s=5, max_retries=2)
    assert sorted(log) == [(0, 0), (1, 0), (1, 1), (2, 0), (3, 0), (3, 1), (3, 2)]
    assert sorted(calls.values) == ["update 0", "update 1", "update 2"]
    assert calls.failures == [
        Failure(1, "RuntimeError: boom (attempt 1)"),
        Failure(3, "actor lost: died (attempt 1)"),
        Failure(3, "timeout after 5 s (attempt 2)"),
        Failure(3, "RuntimeError: again (attempt 3)"),
    ]
    assert (calls.retries, calls.calls_lost, calls.calls) == (3, 1, 7)


def test_late_clients_are_not_retried_and_the_deadline_bounds_the_round() -> None:
    pool = ScriptedPool({(1, 0): ("RuntimeError: boom", False)}, late=frozenset({2}))
    start = time.monotonic()
    calls = collect_cohort(pool, [0, 1, 2], _calls([]), timeout_s=0, max_retries=3, deadline_s=0.3)
    assert 0.3 <= time.monotonic() - start < 2.0
    assert [(c, a) for c, a, _ in pool.submitted] == [(0, 0), (1, 0), (2, 0), (1, 1)]
    assert sorted(calls.values) == ["update 0", "update 1"]
    assert [f.client_id for f in calls.failures] == [1, 2]  # 2 was late: never retried
    assert calls.late == 1 and "0.3 s round deadline" in calls.failures[1].error


def test_no_retries_means_one_try() -> None:
    pool = ScriptedPool({(0, 0): ("RuntimeError: x", False)})
    calls = collect_cohort(pool, [0, 1], _calls([]), timeout_s=0, max_retries=0)
    assert [(c, a) for c, a, _ in pool.submitted] == [(0, 0), (1, 0)]
    assert calls.failures == [Failure(0, "RuntimeError: x")] and calls.retries == 0


def test_a_pinned_client_whose_actor_died_has_dropped_out() -> None:
    # its round session (e.g. secure-aggregation keys) died with the actor: no retry
    pool = ScriptedPool({(0, 0): ("actor lost: died", True), (1, 0): ("RuntimeError: y", False)})
    calls = collect_cohort(
        pool, [0, 1], _calls([]), timeout_s=0, max_retries=2, pinned={0: 1, 1: 0}
    )
    assert [(c, a, actor) for c, a, actor in pool.submitted] == [
        (0, 0, 1),
        (1, 0, 0),
        (1, 1, 0),  # a raised error keeps the session: retried on its actor
    ]
    assert calls.values == ["update 1"]


def _c(cid: int, values: list[float], extra: Any = None) -> Contribution:
    return Contribution(cid, {"w": np.array(values, np.float32)}, 1, extra)


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
    assert [f.client_id for f in rejected] == [3, 4]
    assert "NaN or Inf" in rejected[0].error
    assert rejected[1].error == "update rejected: norm 30 > 3 x the median norm 7.5"
    kept, rejected = screen(cohort, ref, max_norm_ratio=0.0)  # off: only the NaN goes
    assert [c.client_id for c in kept] == [0, 1, 2, 4] and [f.client_id for f in rejected] == [3]


def test_screen_checks_the_extra_state_too() -> None:
    # SCAFFOLD's delta c travels as extra state: NaN there must not reach the control variate
    ref, extra_ref = {"w": np.zeros(2, np.float32)}, {"c/w": np.zeros(2, np.float32)}
    cohort = [
        _c(0, [1.0, 1.0], {"c/w": np.ones(2, np.float32)}),
        _c(1, [1.0, 1.0], {"c/w": np.array([np.inf, 0], np.float32)}),
        _c(2, [1.0, 1.0], None),
        _c(3, [1.0, 1.0], {"c/x": np.ones(2, np.float32)}),
    ]
    kept, rejected = screen(cohort, ref, 0.0, extra_ref)
    assert [c.client_id for c in kept] == [0]
    assert [f.client_id for f in rejected] == [1, 2, 3]
    assert "extra state" in rejected[0].error and "NaN or Inf" in rejected[0].error
    assert rejected[1].error == "update rejected: missing extra state"
    kept, rejected = screen([_c(0, [1.0, 1.0], {"c/w": ref["w"]})], ref, 0.0, None)
    assert rejected[0].error == "update rejected: unexpected extra state"


def test_quorum_shortfall_message() -> None:
    assert quorum_shortfall(3, 2, 4, 2, []) is None
    msg = quorum_shortfall(3, 1, 4, 2, [Failure(5, "RuntimeError: boom")])
    assert msg == (
        "round 3: 1 of 4 clients returned a valid update, fewer than mode.min_clients=2; "
        "first failure: RuntimeError: boom"
    )
