"""The async loop and the round deadline on real Ray actors with widely separated sleeps."""

from __future__ import annotations

import time

import numpy as np
from omegaconf import OmegaConf

from fedray import registry
from fedray.server.async_core import AsyncLoop
from fedray.server.async_driver import PoolExecutor
from fedray.server.pool import ActorPool
from fedray.types import ClientUpdate, State

SCALE = 2.5  # seconds per unit of the simulated schedule; events are >= 1.0 s apart


def _sleepy_worker() -> type:
    """Stands in for ClientWorker.train: sleeps per client, returns a delta of ones.

    Defined in a function so Ray ships the class by value (workers cannot import tests/).
    """

    class SleepyWorker:
        def __init__(self, delays: list[float]) -> None:
            self.delays = delays

        def train(
            self, round: int, client_id: int, seed: int, global_state: State, client_state=None
        ) -> ClientUpdate:
            time.sleep(self.delays[client_id])
            return ClientUpdate(client_id, 1, {"w": np.ones(1, np.float32)}, 4)

        def ready(self) -> dict:
            return {}

        def work(self, seconds: float) -> float:
            time.sleep(seconds)
            return seconds

    return SleepyWorker


def _pool(ray, delays: list[float], size: int = 2) -> ActorPool:
    cls = ray.remote(_sleepy_worker()).options(num_cpus=0)
    return ActorPool(lambda: cls.remote(delays), size)


def test_async_loop_on_ray_matches_the_simulated_schedule(ray_cluster) -> None:
    # the simulator's schedule for delays (2.5, 0.5, 1.1, 1.3), 2 jobs in flight, no staleness cap
    pool = _pool(ray_cluster, [d * SCALE for d in (2.5, 0.5, 1.1, 1.3)])
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "client": {"seed_scheme": "linear", "round_stride": 1000},
            "mode": {"client_timeout_s": 0.0},
        }
    )
    strategy = registry.build("algorithm", {"name": "fedbuff", "k": 1, "staleness": "constant"})
    loop = AsyncLoop(
        strategy,
        {"w": np.zeros(1, np.float32)},
        lambda draw: [0, 1, 2, 3],
        max_concurrency=2,
        max_staleness=2,
        budget=8,
        period=4,
    )
    try:
        periods = list(loop.run(PoolExecutor(pool, cfg)))
    finally:
        pool.shutdown()
    arrivals = [
        (a.job.job_id, a.job.client_id, a.staleness, a.outcome) for p in periods for a in p.arrivals
    ]
    assert arrivals == [
        (1, 1, 0, "applied"),
        (2, 2, 0, "applied"),
        (0, 0, 2, "applied"),
        (3, 3, 1, "applied"),
        (5, 1, 0, "applied"),
        (6, 2, 0, "applied"),
        (4, 0, 3, "dropped"),  # the straggler's second job: tau 3 > max_staleness 2
        (7, 3, 0, "applied"),  # the drop made no new version: tau 0 (the uncapped sim says 1)
    ]
    assert loop.global_state["w"][0] == 7.0 and loop.version == 7  # each applied exactly once


def test_round_deadline_drops_late_jobs_and_their_results_never_come_back(ray_cluster) -> None:
    pool = _pool(ray_cluster, [], size=2)

    def submit(actor, seconds: float):
        return actor.work.remote(seconds)

    try:
        pool.wait_ready()  # the deadline clock must not count actor start-up
        start = time.monotonic()
        first = pool.run([0.1, 0.2, 6.0], submit, deadline_s=2.5)
        assert time.monotonic() - start < 5.0
        assert sorted((o.job, o.late, o.value) for o in first) == [
            (0.1, False, 0.1),
            (0.2, False, 0.2),
            (6.0, True, None),
        ]
        assert "2.5 s round deadline" in next(o.error for o in first if o.late)
        second = pool.run([0.3, 0.4], submit, deadline_s=0)  # actor 0 takes both
        assert sorted((o.job, o.value) for o in second) == [(0.3, 0.3), (0.4, 0.4)]
    finally:
        pool.shutdown()
