"""The async server on a simulated clock: exact staleness, drops, and no update lost or doubled."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

import numpy as np
import pytest

from fedray.core import registry
from fedray.core.types import State, Update
from fedray.server.async_core import AsyncLoop, Job

BUDGET = 8


class SimExecutor:
    """Jobs finish at dispatch time + duration(client); ties in job order; one per wait()."""

    def __init__(self, duration: Callable[[Job], float], size: int) -> None:
        self.duration, self.size = duration, size
        self.now = 0.0
        self.heap: list[tuple[float, int, Job]] = []
        self.log: list[tuple[float, str, int]] = []  # (time, submit|finish, job id)

    def submit(self, job: Job, global_state: State) -> None:
        heapq.heappush(self.heap, (self.now + self.duration(job), job.job_id, job))
        self.log.append((self.now, "submit", job.job_id))

    def wait(self) -> list[tuple[Job, Update | None, str | None]]:
        self.now, _, job = heapq.heappop(self.heap)
        self.log.append((self.now, "finish", job.job_id))
        delta = np.zeros(self.size, np.float32)
        delta[job.job_id] = 1.0  # one-hot: the final state says which jobs were applied
        return [(job, Update(job.client_id, 1, {"w": delta}, 0), None)]


def _loop(
    max_staleness: int | None, budget: int = BUDGET, concurrency: int = 2, size: int = BUDGET
) -> AsyncLoop:
    # FedBuff with k=1, s=1, server fedavg lr 1: every accepted update is added once, unscaled
    strategy = registry.build("algorithm", {"name": "fedbuff", "k": 1, "staleness": "constant"})
    return AsyncLoop(
        strategy,
        {"w": np.zeros(size, np.float32)},
        lambda draw: [0, 1, 2, 3],
        max_concurrency=concurrency,
        max_staleness=max_staleness,
        budget=budget,
        period=4,
    )


def _straggler(job: Job) -> float:
    return 2.5 if job.client_id == 0 else 1.0


def test_staleness_of_each_arrival_matches_the_hand_trace() -> None:
    # t=1 j1 tau0 (v1) | t=2 j2 tau0 (v2) | t=2.5 j0 tau2 (v3) | t=3 j3 tau1 (v4)
    # t=4 j5 tau0 (v5) | t=5 j4 tau2 (v6) | t=5 j6 tau1 (v7) | t=6 j7 tau1 (v8)
    loop = _loop(max_staleness=None)
    periods = list(loop.run(SimExecutor(_straggler, BUDGET)))
    arrivals = [(a.job.job_id, a.staleness, a.outcome) for p in periods for a in p.arrivals]
    assert arrivals == [
        (1, 0, "applied"),
        (2, 0, "applied"),
        (0, 2, "applied"),
        (3, 1, "applied"),
        (5, 0, "applied"),
        (4, 2, "applied"),
        (6, 1, "applied"),
        (7, 1, "applied"),
    ]
    assert [p.index for p in periods] == [1, 2] and [p.version for p in periods] == [4, 8]
    assert periods[0].staleness_histogram() == {0: 2, 1: 1, 2: 1}
    assert periods[1].staleness_histogram() == {0: 1, 1: 2, 2: 1}
    np.testing.assert_array_equal(loop.global_state["w"], np.ones(BUDGET))
    assert loop.inflight == {} and loop.bases == {}  # no base state kept past its jobs


def test_updates_staler_than_max_staleness_are_dropped_and_counted() -> None:
    # the straggler (client 0) arrives with tau=2 twice and is dropped both times
    loop = _loop(max_staleness=1)
    periods = list(loop.run(SimExecutor(_straggler, BUDGET)))
    arrivals = [(a.job.job_id, a.staleness, a.outcome) for p in periods for a in p.arrivals]
    assert arrivals == [
        (1, 0, "applied"),
        (2, 0, "applied"),
        (0, 2, "dropped"),
        (3, 0, "applied"),
        (5, 0, "applied"),
        (4, 2, "dropped"),
        (6, 0, "applied"),
        (7, 1, "applied"),
    ]
    assert dict(loop.totals) == {"applied": 6, "dropped": 2}
    assert loop.version == 6
    expected = np.ones(BUDGET)
    expected[[0, 4]] = 0  # dropped jobs never touch the global state
    np.testing.assert_array_equal(loop.global_state["w"], expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seeded_random_delays_apply_each_update_exactly_once(seed: int) -> None:
    rng = random.Random(seed)
    delays = [rng.choice([0.5, 1.0, 5.0]) + rng.random() for _ in range(40)]
    loop = _loop(max_staleness=3, budget=40, concurrency=5, size=40)
    sim = SimExecutor(lambda job: delays[job.job_id], 40)
    arrivals = [a for p in loop.run(sim) for a in p.arrivals]
    assert sorted(a.job.job_id for a in arrivals) == list(range(40))  # none lost or doubled
    # staleness recomputed from the event log: updates applied between a job's submit and finish
    outcome = {a.job.job_id: a.outcome for a in arrivals}
    position = {(kind, j): i for i, (_, kind, j) in enumerate(sim.log)}
    for a in arrivals:
        window = sim.log[position["submit", a.job.job_id] : position["finish", a.job.job_id]]
        versions = sum(k == "finish" and outcome[j] == "applied" for _, k, j in window)
        assert a.staleness == versions
        assert (a.outcome == "dropped") == (a.staleness > 3)
    applied = [a.job.job_id for a in arrivals if a.outcome == "applied"]
    expected = np.zeros(40)
    expected[applied] = 1
    np.testing.assert_array_equal(loop.global_state["w"], expected)
    assert loop.totals["dropped"] > 0 and loop.bases == {}


def test_failed_jobs_count_toward_the_budget_and_completing_twice_raises() -> None:
    loop = _loop(max_staleness=None)

    class Failing(SimExecutor):
        def wait(self):  # type: ignore[override]
            ((job, update, _),) = super().wait()
            return [(job, None, "boom")] if job.client_id == 2 else [(job, update, None)]

    periods = list(loop.run(Failing(_straggler, BUDGET)))
    assert sum(p.count("failed") for p in periods) == 2 and loop.arrived == BUDGET
    with pytest.raises(KeyError, match="not in flight"):
        loop.complete(periods[0].arrivals[0].job, None, "again")


def test_state_dict_requeues_in_flight_jobs_first() -> None:
    loop = _loop(max_staleness=None, size=16)
    sim = SimExecutor(_straggler, 16)
    next(loop.run(sim))  # first period reported: job 4 (client 0) is in flight
    state = loop.state_dict()
    assert state["queue"] == [(0, 1, 0), (1, 1, 0), (2, 1, 0), (3, 1, 0)]
    assert state["arrived"] == 4 and state["version"] == 4
    resumed = _loop(max_staleness=None, size=16)
    resumed.global_state = loop.global_state
    resumed.load_state_dict(state)
    periods = list(resumed.run(SimExecutor(_straggler, 16)))
    assert [p.index for p in periods] == [2] and resumed.arrived == BUDGET
    assert sorted(a.job.job_id for a in periods[0].arrivals) == [5, 6, 7, 8]  # fresh ids
    assert sorted(a.job.client_id for a in periods[0].arrivals) == [0, 1, 2, 3]
    # job 4 was lost with the interruption: jobs 0-3 and the redone 5-8 are applied
    np.testing.assert_array_equal(resumed.global_state["w"][:9], [1] * 4 + [0] + [1] * 4)
