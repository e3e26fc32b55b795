"""The async scheduler on real Ray actors with widely separated sleeps: the schedule of the
simulated clock, and async parity (retries, update screening, selector feedback, client state,
sharded evaluation) through the same round protocol as sync mode."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fedray.app.cli import compose
from fedray.app.spec import build_spec
from fedray.core import registry
from fedray.core.context import RunContext
from fedray.core.types import TrainJob, Update
from fedray.pipeline import Pipeline
from fedray.server.asynchronous import PoolExecutor, build_loop, run_async
from fedray.server.collect import collect_cohort
from fedray.server.pool import ActorPool
from fedray.server.protocol import RoundProtocol

SCALE = 2.5  # seconds per unit of the simulated schedule; events are >= 1.0 s apart


def _sleepy_worker() -> type:
    """Stands in for ClientWorker: sleeps per client, returns a delta of ones (dense bytes).

    Defined in a function so Ray ships the class by value (workers cannot import tests/).
    `fail` lists (client, attempt) pairs that raise; `nan` clients send NaN; the client state
    counts the client's visits.
    """

    class SleepyWorker:
        def __init__(self, delays: dict[int, float], fail=(), nan=()) -> None:
            self.delays, self.fail, self.nan = delays, set(fail), set(nan)

        def ready(self) -> dict:
            return {}

        def train(self, job: TrainJob, payload: Any, extra: Any = None, message: Any = None):
            time.sleep(self.delays.get(job.client_id, 0.0))
            if (job.client_id, job.attempt) in self.fail:
                raise RuntimeError(f"boom {job.client_id}")
            value = np.nan if job.client_id in self.nan else 1.0
            delta = np.full(1, value, np.float32)
            visits = job.client_state.get("rule", {"n": np.zeros(1, np.float32)})["n"] + 1
            return Update(
                job.client_id,
                1,
                delta.view(np.uint8),
                4,
                metrics={"loss": float(job.client_id)},
                client_state={"rule": {"n": visits}},
            )

        def evaluate_shard(self, state: Any, shard: int, shards: int) -> list:
            return [{"loss_sum": float(state["w"][0]), "correct": 1, "count": 1}]

        def work(self, seconds: float) -> float:
            time.sleep(seconds)
            return seconds

    return SleepyWorker


class Recorder:
    """A uniform selector that records the losses it is told (power-of-choice's feedback)."""

    sampling = "fixed"

    def __init__(self, cohort: list[int]) -> None:
        self.cohort, self.observed = cohort, []

    def select(self, rnd: int, k: int) -> list[int]:
        return list(self.cohort)

    def observe(self, rnd: int, losses: dict[int, float]) -> None:
        self.observed.append(dict(losses))


def _protocol(ray, overrides: list[str], delays, fail=(), nan=(), size=2):
    spec = build_spec(compose(["mode=async", "algorithm=fedbuff", "tracking=none", *overrides]))
    cls = ray.remote(_sleepy_worker()).options(num_cpus=0)
    pool = ActorPool(lambda _: cls.remote(delays, fail, nan), size)
    pool.wait_ready()
    strategy = registry.build("algorithm", spec.algorithm)
    selector = Recorder([0, 1, 2, 3])
    run = RunContext(4, 4, "fixed", spec.mode.rounds, spec.seed, "async")
    task = registry.build("task", {"name": "classification"})
    return RoundProtocol(
        spec, pool, strategy, selector, Pipeline.from_spec(spec), task, run, {}
    ), selector


def test_async_loop_on_ray_matches_the_simulated_schedule(ray_cluster) -> None:
    # the simulator's schedule for delays (2.5, 0.5, 1.1, 1.3), 2 jobs in flight, no staleness cap
    delays = {c: d * SCALE for c, d in enumerate((2.5, 0.5, 1.1, 1.3))}
    overrides = ["algorithm.k=1", "algorithm.staleness=constant", "mode.max_concurrency=2"]
    overrides += ["mode.max_staleness=2", "mode.rounds=2", "mode.clients_per_round=4"]
    protocol, _ = _protocol(ray_cluster, overrides, delays)
    executor = PoolExecutor(protocol)
    loop = build_loop(protocol, executor, {"w": np.zeros(1, np.float32)})
    try:
        periods = list(loop.run(executor))
    finally:
        protocol.pool.shutdown()
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


def test_async_mode_retries_screens_feeds_back_and_keeps_client_state(ray_cluster) -> None:
    overrides = [
        "algorithm.k=1",
        "algorithm.staleness=constant",
        "mode.rounds=2",
        "mode.clients_per_round=4",
        "mode.max_concurrency=2",
        "mode.max_retries=1",
        "mode.min_clients=1",
        "mode.eval_every=1",
    ]
    # client 1 fails its first try of every draw (retried); client 2 always sends NaN (rejected)
    protocol, selector = _protocol(ray_cluster, overrides, {}, fail=[(1, 0)], nan=[2])
    try:
        ends = [end for _, end in run_async(protocol, {"w": np.zeros(1, np.float32)}, {})]
    finally:
        protocol.pool.shutdown()
    first, second = ends[0].metrics, ends[1].metrics
    assert (first["retries"], first["client_errors"], first["updates_rejected"]) == (1, 1, 1)
    assert (second["retries"], second["updates_rejected"]) == (1, 1)
    assert sorted(f.client_id for f in ends[0].failures) == [1, 2]
    assert any("NaN or Inf" in f.error for f in ends[0].failures)
    # accepted updates fed the selector (2 was rejected, so never observed)
    seen = {cid for losses in selector.observed for cid in losses}
    assert seen == {0, 1, 3}
    # client state: each accepted client visited twice, counted in its stored state
    assert {c: int(s["rule"]["n"][0]) for c, s in protocol.client_states.items()} == {
        0: 2,
        1: 2,
        3: 2,
    }
    # sharded evaluation over both actors, in the same code as sync mode
    assert first["eval_accuracy"] == 1.0 and "eval_loss" in second


def test_round_deadline_drops_late_jobs_and_their_results_never_come_back(ray_cluster) -> None:
    cls = ray_cluster.remote(_sleepy_worker()).options(num_cpus=0)
    pool = ActorPool(lambda _: cls.remote({}), 2)
    seconds = {0: 0.1, 1: 0.2, 2: 6.0, 3: 0.3, 4: 0.4}

    def call_for(cid: int, attempt: int):
        return lambda actor: actor.work.remote(seconds[cid])

    try:
        pool.wait_ready()  # the deadline clock must not count actor start-up
        start = time.monotonic()
        first = collect_cohort(
            pool, [0, 1, 2], call_for, timeout_s=0, max_retries=2, deadline_s=2.5
        )
        assert time.monotonic() - start < 5.0
        assert sorted(first.values) == [0.1, 0.2] and first.late == 1 and first.retries == 0
        assert "2.5 s round deadline" in first.failures[0].error
        second = collect_cohort(pool, [3, 4], call_for, timeout_s=0, max_retries=0)
        assert sorted(second.values) == [0.3, 0.4]  # the late result never came back
    finally:
        pool.shutdown()
