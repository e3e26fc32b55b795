"""The async coordinator: :class:`~fedray.server.async_core.AsyncLoop` over the Ray actor pool.

Same event stream as the sync driver (`ready`, optional `initial`, one `round` event per period
of `mode.clients_per_round` arrived updates, `done`), so :mod:`fedray.run` and the tracker need
no async branch. A period's event adds the async figures: updates applied / buffered / dropped,
the global version, the staleness histogram (`staleness_<tau>` counts), and the wall time since
the loop started. Checkpoints hold the global state, the version, the strategy's buffer and
optimizer, the selector's RNG and the queue; jobs in flight at a checkpoint are redone on resume.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import ray
from omegaconf import DictConfig

from fedray.errors import QuorumError
from fedray.seeding import client_seed
from fedray.server.async_core import AsyncLoop, Job, Period
from fedray.server.driver import Driver
from fedray.server.pool import ActorPool
from fedray.types import ClientUpdate, State


class PoolExecutor:
    """Runs :class:`Job` s on the actor pool; one object-store copy per global version."""

    def __init__(self, pool: ActorPool, cfg: DictConfig) -> None:
        self.pool, self.cfg = pool, cfg
        self._ref: tuple[int, ray.ObjectRef] | None = None

    def submit(self, job: Job, global_state: State) -> None:
        if self._ref is None or self._ref[0] != job.version:
            self._ref = (job.version, ray.put(global_state))
        ref, cfg = self._ref[1], self.cfg
        seed = client_seed(
            cfg.seed, job.draw + 1, job.client_id, cfg.client.seed_scheme, cfg.client.round_stride
        )

        def call(actor: Any, j: Job) -> ray.ObjectRef:
            return actor.train.remote(j.draw + 1, j.client_id, seed, ref, None)

        self.pool.submit(job, call)

    def wait(self) -> list[tuple[Job, ClientUpdate | None, str | None]]:
        outcomes = self.pool.next_completed(self.cfg.mode.client_timeout_s)
        return [(o.job, o.value if o.error is None else None, o.error) for o in outcomes]


class AsyncDriver(Driver):
    """Runs an asynchronous federated experiment (`mode=async`)."""

    def run(self, resume: bool = False) -> Iterator[dict[str, Any]]:
        """The async loop; yields `ready`, a `round` event per period, then `done`."""
        state, ready = self._start(resume)
        assert self.pool is not None
        m = self.cfg.mode
        loop = AsyncLoop(
            self.strategy,
            state.global_state,
            lambda draw: self.selector.select(draw + 1, m.clients_per_round),
            max_concurrency=m.max_concurrency,
            max_staleness=m.max_staleness,
            budget=m.rounds * m.clients_per_round,
            period=m.clients_per_round,
            decode=lambda updates, draw: self.pipeline.server(updates, round=draw + 1),
        )
        if state.loop:
            loop.load_state_dict(state.loop)
        yield ready
        try:
            if (initial := self._initial_event(state)) is not None:
                yield initial
            start = last = time.perf_counter()
            for period in loop.run(PoolExecutor(self.pool, self.cfg)):
                metrics = self._period_metrics(period, loop)
                if period.index % m.eval_every == 0 or period.index == m.rounds:
                    ev = self.pool.call_least_loaded("evaluate", loop.global_state)
                    metrics.update({f"eval_{k}": v for k, v in ev.items()})
                now = time.perf_counter()
                metrics["round_s"], metrics["wall_s"] = now - last, now - start
                last = now
                state.round, state.global_state = period.index, loop.global_state
                state.loop = loop.state_dict()
                self._maybe_checkpoint(state)
                yield metrics
            files = self.pool.call("export", loop.global_state) if self._export() else None
            yield {"event": "done", "model_files": files, "actors_replaced": self.pool.replaced}
        finally:
            self.pool.shutdown()

    def _period_metrics(self, period: Period, loop: AsyncLoop) -> dict[str, Any]:
        accepted = [a for a in period.arrivals if a.outcome in ("applied", "buffered")]
        if len(accepted) < self.cfg.mode.min_clients:
            first = next((a.error for a in period.arrivals if a.error), "none")
            raise QuorumError(
                f"period {period.index}: {len(accepted)} of {len(period.arrivals)} updates were "
                f"applied or buffered, fewer than mode.min_clients={self.cfg.mode.min_clients}; "
                f"first failure: {first}"
            )
        updates = [a.update for a in accepted if a.update is not None]
        arrived = [a.update for a in period.arrivals if a.update is not None]
        failures = [
            (a.job.client_id, a.error or "") for a in period.arrivals if a.outcome == "failed"
        ] + [(a.job.client_id, a.error or "") for a in period.arrivals if a.outcome == "rejected"]
        n = sum(u.num_samples for u in updates)
        taus = [a.staleness for a in period.arrivals if a.update is not None]
        hist = period.staleness_histogram()
        return {
            "event": "round",
            "round": period.index,
            "selected": [a.job.client_id for a in period.arrivals],
            "clients": len(period.arrivals),
            "clients_ok": len(accepted),
            "clients_failed": len(failures),
            "failures": sorted(failures),
            "updates_applied": period.count("applied"),
            "updates_buffered": period.count("buffered"),
            "updates_dropped": period.count("dropped"),
            "updates_rejected": period.count("rejected"),
            "updates_total_applied": loop.totals["applied"] + loop.totals["buffered"],
            "updates_total_dropped": loop.totals["dropped"],
            "global_version": period.version,
            "staleness_mean": sum(taus) / len(taus) if taus else 0.0,
            "staleness_max": max(taus, default=0),
            **{f"staleness_{tau}": count for tau, count in hist.items()},
            "train_loss": sum(u.metrics.get("loss", 0.0) * u.num_samples for u in updates)
            / max(n, 1),
            "train_samples": n,
            "bytes_down": self.pipeline.down_nbytes(loop.global_state) * len(period.arrivals),
            "bytes_up": sum(u.nbytes_up for u in arrived),
            "client_compute_s": sum(u.metrics.get("compute_s", 0.0) for u in arrived),
            "client_delay_s": sum(u.metrics.get("delay_s", 0.0) for u in arrived),
            **self.pipeline.metrics(),
        }
