"""The async executor keeps each broadcast until every outcome that started from it is screened."""

from __future__ import annotations

from types import SimpleNamespace

from fedray.server.async_core import Job
from fedray.server.asynchronous import PoolExecutor
from fedray.server.pool import Outcome


class FakePool:
    def __init__(self) -> None:
        self.submitted: list[Job] = []

    def submit(self, job, call, actor=None, timeout_s=None) -> None:
        self.submitted.append(job)

    def poll(self, timeout_s=None) -> list[Outcome]:
        done, self.submitted = self.submitted, []
        return [Outcome(job, value=f"update-{job.job_id}") for job in done]


def protocol(pool: FakePool) -> SimpleNamespace:
    return SimpleNamespace(
        pool=pool,
        run=SimpleNamespace(),
        spec=SimpleNamespace(mode=SimpleNamespace(client_timeout_s=None)),
        placement=SimpleNamespace(slot_for=lambda cid: None),
        broadcast=lambda ctx, state: SimpleNamespace(sent=f"bcast-{state}"),
        job_call=lambda bcast, cid, attempt, draw: (bcast, cid),
    )


def test_a_submit_between_outcomes_of_one_wait_keeps_their_broadcast(monkeypatch) -> None:
    monkeypatch.setattr("fedray.server.asynchronous.RoundContext", lambda *a: None)
    pool = FakePool()
    executor = PoolExecutor(protocol(pool))  # type: ignore[arg-type]
    executor.submit(Job(0, client_id=0, draw=0, version=1), "v1")
    executor.submit(Job(1, client_id=1, draw=0, version=1), "v1")
    first, second = executor.wait()  # both finished at once
    assert first[1] == "update-0"
    # the loop handles the first, reports a period and refills from a new version ...
    executor.submit(Job(2, client_id=2, draw=1, version=2), "v2")
    # ... and still screens the second against the broadcast it trained from
    assert executor.broadcasts[second[0].version].sent == "bcast-v1"
    executor.wait()  # the batch is handled (version 1 can go); job 2's outcome is being handled
    executor.submit(Job(3, client_id=3, draw=2, version=3), "v3")
    assert set(executor.broadcasts) == {2, 3}
