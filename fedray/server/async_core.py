"""The async server as a pure state machine: fed completion events, no Ray, no clock.

:class:`AsyncLoop` keeps at most `max_concurrency` jobs in flight on an :class:`Executor`,
computes each arriving update's staleness tau = version now - version the job started from,
drops updates with tau > `max_staleness`, and hands the rest to an async strategy
(`fedasync`, `fedbuff`), whose `apply` returns the next global state or None (buffered).
The Ray driver (:mod:`fedray.server.async_driver`) plugs in an executor over the actor pool;
tests plug in a simulated clock, so staleness counts can be asserted exactly.

Budget: `budget` arrived client jobs (applied, buffered, dropped, failed or rejected alike).
Every `period` arrivals the loop yields a :class:`Period` report (the async analogue of a round).
A failed job is retried (up to `max_retries` times, first in the queue, from the then-current
version) before it counts as failed. Each update passes `screen` (decode and the checks of the
sync rounds) before it is merged; `accept` sees every applied or buffered update (client state
and selector feedback), so async mode keeps the sync mode's screening, retries and state.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedray.core.types import Contribution, State, Update
from fedray.core.validate import update_problem


@dataclass(frozen=True)
class Job:
    """One dispatched local training: which client, from which global version."""

    job_id: int
    client_id: int
    draw: int  # the selection draw it came from (seeds the client's training)
    version: int
    attempt: int = 0  # retries of this (client, draw) so far


@dataclass
class Arrival:
    """What became of one finished job."""

    job: Job
    staleness: int
    outcome: str  # applied | buffered | dropped | failed | rejected | retried
    error: str | None = None
    update: Update | None = None


@dataclass
class Period:
    """Arrivals since the previous report, and the server's position after them."""

    index: int
    arrivals: list[Arrival] = field(default_factory=list)
    version: int = 0

    def count(self, outcome: str) -> int:
        """How many arrivals ended as `outcome`."""
        return sum(a.outcome == outcome for a in self.arrivals)

    def staleness_histogram(self) -> dict[int, int]:
        """tau -> number of arrived updates (dropped ones included; failures have no tau)."""
        return dict(sorted(Counter(a.staleness for a in self.arrivals if a.update).items()))


class Executor(Protocol):
    """Runs jobs somewhere; completions come back in completion order."""

    def submit(self, job: Job, global_state: State) -> None:
        """Start `job` from `global_state` (the state of version `job.version`)."""
        ...

    def wait(self) -> list[tuple[Job, Update | None, str | None]]:
        """Block until at least one job finished: (job, update or None, error or None)."""
        ...


class AsyncLoop:
    """The server side of async FL: versions, staleness, dropping, merging, reporting."""

    def __init__(
        self,
        strategy: Any,
        global_state: State,
        select: Callable[[int], list[int]],
        *,
        max_concurrency: int,
        max_staleness: int | None,
        budget: int,
        period: int,
        max_retries: int = 0,
        screen: Callable[[Job, Update], Contribution | str] | None = None,
        accept: Callable[[Job, Update], None] | None = None,
    ) -> None:
        self.strategy = strategy
        self.global_state = global_state
        self.select = select  # draw index -> client ids of that draw
        self.max_concurrency = max_concurrency
        self.max_staleness = max_staleness
        self.budget, self.period = budget, period
        self.max_retries = max_retries
        self.screen = screen or self._plain_screen
        self.accept = accept or (lambda job, update: None)
        self.version = 0
        self.arrived = 0
        self.draws = 0
        self.queue: deque[tuple[int, int, int]] = deque()  # (client id, draw, attempt) to do
        self.inflight: dict[int, Job] = {}
        self.bases: dict[int, State] = {0: global_state}  # versions some in-flight job uses
        self.next_job_id = 0
        self.totals: Counter[str] = Counter()

    # -- dispatching -------------------------------------------------------------------------
    def _next_client(self) -> tuple[int, int, int]:
        if not self.queue:
            self.queue.extend((cid, self.draws, 0) for cid in self.select(self.draws))
            self.draws += 1
        return self.queue.popleft()

    def fill(self, executor: Executor) -> None:
        """Dispatch until `max_concurrency` jobs are in flight or the budget is covered."""
        while (
            len(self.inflight) < self.max_concurrency
            and self.arrived + len(self.inflight) < self.budget
        ):
            cid, draw, attempt = self._next_client()
            job = Job(self.next_job_id, cid, draw, self.version, attempt)
            self.next_job_id += 1
            self.inflight[job.job_id] = job
            self.bases.setdefault(self.version, self.global_state)
            executor.submit(job, self.global_state)

    # -- arrivals ----------------------------------------------------------------------------
    def complete(self, job: Job, update: Update | None, error: str | None) -> Arrival:
        """Account for one finished job; merge or buffer its update unless stale or invalid."""
        if self.inflight.pop(job.job_id, None) is None:
            raise KeyError(f"job {job.job_id} (client {job.client_id}) is not in flight")
        tau = self.version - job.version
        if update is None and job.attempt < self.max_retries:
            self.queue.appendleft((job.client_id, job.draw, job.attempt + 1))
            self.totals["retried"] += 1
            self._prune()
            return Arrival(job, tau, "retried", error or "unknown error")
        self.arrived += 1
        base = self.bases[job.version]
        if update is None:
            arrival = Arrival(job, tau, "failed", error or "unknown error")
        elif self.max_staleness is not None and tau > self.max_staleness:
            arrival = Arrival(job, tau, "dropped", update=update)
        else:
            arrival = self._merge(job, tau, base, update)
        self.totals[arrival.outcome] += 1
        self._prune()
        return arrival

    def _plain_screen(self, job: Job, update: Update) -> Contribution | str:
        """Without a screen: the payload is the delta; the basic checks against the state."""
        problem = update_problem(update.payload, self.global_state)
        if problem is not None:
            return f"update rejected: {problem}"
        return Contribution(update.client_id, update.payload, update.num_samples, update.extra)

    def _merge(self, job: Job, tau: int, base: State, update: Update) -> Arrival:
        contribution = self.screen(job, update)
        if isinstance(contribution, str):
            return Arrival(job, tau, "rejected", contribution, update)
        new = self.strategy.apply(self.global_state, base, contribution, tau)
        self.accept(job, update)
        if new is None:
            return Arrival(job, tau, "buffered", update=update)
        self.global_state = new
        self.version += 1
        return Arrival(job, tau, "applied", update=update)

    def _prune(self) -> None:
        """Forget base states that no in-flight job started from (the current one stays)."""
        keep = {j.version for j in self.inflight.values()} | {self.version}
        for version in [v for v in self.bases if v not in keep]:
            del self.bases[version]

    def run(self, executor: Executor) -> Iterator[Period]:
        """Drive `executor` until `budget` jobs arrived; one report per `period` arrivals."""
        report = Period(self.arrived // self.period + 1)
        while self.arrived < self.budget:
            self.fill(executor)
            for job, update, error in executor.wait():
                arrival = self.complete(job, update, error)
                report.arrivals.append(arrival)
                if arrival.outcome == "retried":
                    continue
                if self.arrived % self.period == 0 or self.arrived == self.budget:
                    report.version = self.version
                    yield report
                    report = Period(report.index + 1)
                    self.fill(executor)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything but in-flight work, which a resumed run re-queues (first) and redoes."""
        lost = [
            (j.client_id, j.draw, j.attempt) for j in sorted(self.inflight.values(), key=_job_id)
        ]
        return {
            "version": self.version,
            "arrived": self.arrived,
            "draws": self.draws,
            "queue": lost + list(self.queue),
            "next_job_id": self.next_job_id,
            "totals": dict(self.totals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the global state is restored by the caller first)."""
        expected = {"version", "arrived", "draws", "queue", "next_job_id", "totals"}
        if set(state) != expected:
            raise KeyError(f"AsyncLoop.load_state_dict: expected {sorted(expected)}")
        self.version, self.arrived = int(state["version"]), int(state["arrived"])
        self.draws, self.next_job_id = int(state["draws"]), int(state["next_job_id"])
        self.queue = deque((int(c), int(d), int(a)) for c, d, a in state["queue"])
        self.totals = Counter(state["totals"])
        self.inflight = {}
        self.bases = {self.version: self.global_state}


def _job_id(job: Job) -> int:
    return job.job_id
