"""The async scheduler: :class:`~fedray.server.async_core.AsyncLoop` over the actor pool, with
the stages of :mod:`fedray.server.protocol` (broadcast per global version, the same client job,
the same update checks, client-state commit and selector feedback, sharded evaluation).

A period of `mode.clients_per_round` arrived updates is reported like a sync round, adding the
async figures: updates applied / buffered / dropped, the global version, the staleness histogram
(`staleness_<tau>` counts), and the wall time since the loop started.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

import numpy as np

from fedray.core.context import RoundContext
from fedray.core.errors import QuorumError
from fedray.core.events import RoundEnd
from fedray.core.types import Contribution, Failure, State, Update
from fedray.core.validate import update_norm
from fedray.pipeline.traffic import Sent
from fedray.server.async_core import AsyncLoop, Job, Period
from fedray.server.protocol import Broadcast, RoundProtocol, RoundTimer, update_metrics
from fedray.tasks.base import Task


class PoolExecutor:
    """Runs :class:`Job` s on the actor pool; one broadcast (object-store copy) per version."""

    def __init__(self, protocol: RoundProtocol) -> None:
        self.protocol = protocol
        self.broadcasts: dict[int, Broadcast] = {}  # versions some job started from
        self.inflight: Counter[int] = Counter()
        self.screening: list[int] = []  # versions of the outcomes the loop is handling
        self.calls = 0
        self.sends: list[Sent] = []  # what each call of the period received

    def submit(self, job: Job, global_state: State) -> None:
        p = self.protocol
        if job.version not in self.broadcasts:  # forget versions no job needs any more
            self.broadcasts = {v: b for v, b in self.broadcasts.items() if self.inflight[v]}
            ctx = RoundContext(p.run, job.draw + 1, ())
            self.broadcasts[job.version] = p.broadcast(ctx, global_state)
        bcast = self.broadcasts[job.version]
        self.inflight[job.version] += 1
        self.calls += 1
        self.sends.append(bcast.sent)
        call = p.job_call(bcast, job.client_id, job.attempt, job.draw + 1)
        slot = p.placement.slot_for(job.client_id)  # a silo's client: its silo's actor
        p.pool.submit(job, call, actor=slot, timeout_s=p.spec.mode.client_timeout_s)

    def wait(self) -> list[tuple[Job, Update | None, str | None]]:
        # The loop screens every outcome of one wait (and may submit, which prunes broadcasts)
        # before it waits again: the versions of the last batch are released only now.
        for version in self.screening:
            self.inflight[version] -= 1
        outcomes = self.protocol.pool.poll()
        self.screening = [o.job.version for o in outcomes]
        return [(o.job, o.value if o.error is None else None, o.error) for o in outcomes]


class NormWindow:
    """The norm screen of async mode: an update is rejected when its norm exceeds `ratio` x
    the median norm of the last `size` accepted updates (the sync screen uses the round's)."""

    def __init__(self, ratio: float, size: int) -> None:
        self.ratio = ratio
        self.norms: deque[float] = deque(maxlen=size)

    def problem(self, delta: State) -> str | None:
        if self.ratio <= 0:
            return None
        norm = update_norm(delta)
        if len(self.norms) >= 1:
            median = float(np.median([*self.norms, norm]))
            if norm > self.ratio * median:
                return (
                    f"update rejected: norm {norm:.4g} > {self.ratio:g} x the median norm "
                    f"{median:.4g}"
                )
        self.norms.append(norm)
        return None


def build_loop(protocol: RoundProtocol, executor: PoolExecutor, global_state: State) -> AsyncLoop:
    """The async state machine over `executor`, screening and committing through `protocol`."""
    p, m = protocol, protocol.spec.mode
    window = NormWindow(m.max_norm_ratio, m.clients_per_round)

    def screen(job: Job, update: Update) -> Contribution | str:
        contributions, rejected = p.screen(executor.broadcasts[job.version], [update], 0.0)
        if rejected:
            return rejected[0].error
        problem = window.problem(contributions[0].delta)
        return contributions[0] if problem is None else problem

    return AsyncLoop(
        p.strategy,
        global_state,
        lambda draw: p.plan(draw + 1),
        max_concurrency=m.max_concurrency,
        max_staleness=m.max_staleness,
        budget=m.rounds * m.clients_per_round,
        period=m.clients_per_round,
        max_retries=m.max_retries,
        screen=screen,
        accept=lambda job, update: p.commit(job.draw + 1, [update]),
    )


def run_async(
    protocol: RoundProtocol, global_state: State, loop_state: dict[str, Any]
) -> Iterator[tuple[AsyncLoop, RoundEnd]]:
    """Run the async loop; yields (the loop, the period's report) after each period."""
    p, m = protocol, protocol.spec.mode
    executor = PoolExecutor(p)
    loop = build_loop(p, executor, global_state)
    if loop_state:
        loop.load_state_dict(loop_state)
    start = time.perf_counter()
    timer = RoundTimer()
    for period in loop.run(executor):
        metrics = period_metrics(period, loop, m.min_clients, p.task)
        arrived = [a.update for a in period.arrivals if a.update is not None]
        metrics.update(p.traffic(arrived, executor.sends))
        metrics["client_calls"] = float(executor.calls)
        executor.sends, executor.calls = [], 0
        metrics.update(p.pipeline.metrics())
        if period.index % m.eval_every == 0 or period.index == m.rounds:
            metrics.update({f"eval_{k}": v for k, v in p.evaluate(loop.global_state).items()})
        metrics.update(timer.finish())
        metrics["wall_s"] = time.perf_counter() - start
        timer = RoundTimer()
        failures = [
            Failure(a.job.client_id, a.error or "")
            for a in period.arrivals
            if a.outcome in ("failed", "rejected", "retried")
        ]
        selected = [a.job.client_id for a in period.arrivals if a.outcome != "retried"]
        nodes = {a.job.client_id: a.update.node for a in period.arrivals if a.update is not None}
        yield loop, RoundEnd(period.index, selected, failures, metrics, nodes)


def period_metrics(
    period: Period, loop: AsyncLoop, min_clients: int, task: Task | None = None
) -> dict[str, float]:
    """The figures of one period; QuorumError when too few updates were applied or buffered."""
    final = [a for a in period.arrivals if a.outcome != "retried"]
    accepted = [a for a in final if a.outcome in ("applied", "buffered")]
    if len(accepted) < min_clients:
        first = next((a.error for a in period.arrivals if a.error), "none")
        raise QuorumError(
            f"period {period.index}: {len(accepted)} of {len(final)} updates were "
            f"applied or buffered, fewer than mode.min_clients={min_clients}; "
            f"first failure: {first}"
        )
    updates = [a.update for a in accepted if a.update is not None]
    arrived = [a.update for a in period.arrivals if a.update is not None]
    taus = [a.staleness for a in period.arrivals if a.update is not None]
    metrics = update_metrics(updates, arrived, task)
    metrics.update(
        clients=float(len(final)),
        clients_failed=float(len(final) - len(accepted)),
        client_errors=float(period.count("failed") + period.count("retried")),
        retries=float(period.count("retried")),
        updates_applied=float(period.count("applied")),
        updates_buffered=float(period.count("buffered")),
        updates_dropped=float(period.count("dropped")),
        updates_rejected=float(period.count("rejected")),
        updates_total_applied=float(loop.totals["applied"] + loop.totals["buffered"]),
        updates_total_dropped=float(loop.totals["dropped"]),
        global_version=float(period.version),
        staleness_mean=sum(taus) / len(taus) if taus else 0.0,
        staleness_max=float(max(taus, default=0)),
    )
    metrics.update(
        {f"staleness_{tau}": float(c) for tau, c in period.staleness_histogram().items()}
    )
    return metrics
