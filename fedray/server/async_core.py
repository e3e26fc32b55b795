"""The async server as a pure state machine: fed completion events, no Ray, no clock.

:class:`AsyncLoop` keeps at most `max_concurrency` jobs in flight on an :class:`Executor`,
computes each arriving update's staleness tau = version now - version the job started from,
drops updates with tau > `max_staleness`, and hands the rest to an async strategy
(`fedasync`, `fedbuff`), whose `apply` returns the next global state or None (buffered).
The Ray driver (:mod:`fedray.server.async_driver`) plugs in an executor over the actor pool;
tests plug in a simulated clock, so staleness counts can be asserted exactly.

Budget: `budget` arrived client jobs (applied, buffered, dropped, failed or rejected alike).
Every `period` arrivals the loop yields a :class:`Period` report (the async analogue of a round).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedray.strategies.base import Contribution
from fedray.strategies.validate import update_problem
from fedray.types import ClientUpdate, State


@dataclass(frozen=True)
class Job:
    """One dispatched local training: which client, from which global version."""

    job_id: int
    client_id: int
    draw: int  # the selection draw it came from (seeds the client's training)
    version: int


@dataclass
class Arrival:
    """What became of one finished job."""

    job: Job
    staleness: int
    outcome: str  # applied | buffered | dropped | failed | rejected
    error: str | None = None
    update: ClientUpdate | None = None


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

    def wait(self) -> list[tuple[Job, ClientUpdate | None, str | None]]:
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
        decode: Callable[[list[ClientUpdate], int], list[Contribution]] | None = None,
    ) -> None:
        self.strategy = strategy
        self.global_state = global_state
        self.select = select  # draw index -> client ids of that draw
        self.max_concurrency = max_concurrency
        self.max_staleness = max_staleness
        self.budget, self.period = budget, period
        self.decode = decode or _identity_decode
        self.version = 0
        self.arrived = 0
        self.draws = 0
        self.queue: deque[tuple[int, int]] = deque()  # (client id, draw) not yet dispatched
        self.inflight: dict[int, Job] = {}
        self.bases: dict[int, State] = {0: global_state}  # versions some in-flight job uses
        self.next_job_id = 0
        self.totals: Counter[str] = Counter()

    # -- dispatching -------------------------------------------------------------------------
    def _next_client(self) -> tuple[int, int]:
        if not self.queue:
            self.queue.extend((cid, self.draws) for cid in self.select(self.draws))
            self.draws += 1
        return self.queue.popleft()

    def fill(self, executor: Executor) -> None:
        """Dispatch until `max_concurrency` jobs are in flight or the budget is covered."""
        while (
            len(self.inflight) < self.max_concurrency
            and self.arrived + len(self.inflight) < self.budget
        ):
            cid, draw = self._next_client()
            job = Job(self.next_job_id, cid, draw, self.version)
            self.next_job_id += 1
            self.inflight[job.job_id] = job
            self.bases.setdefault(self.version, self.global_state)
            executor.submit(job, self.global_state)

    # -- arrivals ----------------------------------------------------------------------------
    def complete(self, job: Job, update: ClientUpdate | None, error: str | None) -> Arrival:
        """Account for one finished job; merge or buffer its update unless stale or invalid."""
        if self.inflight.pop(job.job_id, None) is None:
            raise KeyError(f"job {job.job_id} (client {job.client_id}) is not in flight")
        self.arrived += 1
        tau = self.version - job.version
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

    def _merge(self, job: Job, tau: int, base: State, update: ClientUpdate) -> Arrival:
        (contribution,) = self.decode([update], job.draw)
        problem = update_problem(contribution.delta, self.global_state)
        if problem is not None:
            return Arrival(job, tau, "rejected", f"update rejected: {problem}", update)
        new = self.strategy.apply(self.global_state, base, contribution, tau)
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
                report.arrivals.append(self.complete(job, update, error))
                if self.arrived % self.period == 0 or self.arrived == self.budget:
                    report.version = self.version
                    yield report
                    report = Period(report.index + 1)
                    self.fill(executor)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything but in-flight work, which a resumed run re-queues (first) and redoes."""
        lost = [(j.client_id, j.draw) for j in sorted(self.inflight.values(), key=_job_id)]
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
        self.queue = deque((int(c), int(d)) for c, d in state["queue"])
        self.totals = Counter(state["totals"])
        self.inflight = {}
        self.bases = {self.version: self.global_state}


def _job_id(job: Job) -> int:
    return job.job_id


def _identity_decode(updates: list[ClientUpdate], draw: int) -> list[Contribution]:
    return [Contribution(u.client_id, u.payload, u.num_samples) for u in updates]
