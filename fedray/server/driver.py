"""The coordinator: a driver actor that runs the round loop over a pool of client actors.

The driver knows rounds, clients, actors and the strategy. It does not know which codec or
privacy mechanism is on: it calls the pipeline's server half and nothing else. It streams one
event per round to the caller (the CLI), which prints progress and records it in MLflow.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psutil
import ray
from omegaconf import DictConfig, OmegaConf

from fedray import registry
from fedray.checkpoint import DriverState, load_checkpoint, save_checkpoint
from fedray.errors import QuorumError
from fedray.evaluation import combine
from fedray.pipeline import Pipeline
from fedray.seeding import client_seed
from fedray.server import hooks
from fedray.server.pool import ActorPool, Outcome
from fedray.server.retry import quorum_shortfall, run_with_retries, screen
from fedray.types import ClientUpdate, State


def actor_count(cfg: DictConfig) -> int:
    """Client actors to start: `client.num_actors`, or as many slots as the cluster fits."""
    c = cfg.client
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if c.num_cpus > cpus:
        raise ValueError(f"client.num_cpus={c.num_cpus} exceeds the cluster's {cpus:g} CPUs")
    if c.num_gpus > gpus:
        raise ValueError(f"client.num_gpus={c.num_gpus} exceeds the cluster's {gpus:g} GPUs")
    if c.num_actors is not None:
        return int(c.num_actors)
    fit = int(cpus // c.num_cpus)
    if c.num_gpus > 0:
        fit = min(fit, int(gpus // c.num_gpus + 1e-9))
    return max(1, min(fit, cfg.mode.clients_per_round))


class Driver:
    """Runs a synchronous federated experiment. Wrapped by ``ray.remote`` in :func:`start`."""

    def __init__(
        self,
        cfg: dict[str, Any],
        data: list[ray.ObjectRef],
        num_clients: int,
        task: str,
        num_labels: int | None,
        checkpoint_dir: str | None = None,
    ) -> None:
        self.cfg = OmegaConf.create(cfg)
        self.data_ref = data[0]
        self.num_clients = num_clients
        self.task, self.num_labels = task, num_labels
        self.checkpoint_dir = checkpoint_dir
        self.strategy = registry.build("algorithm", self.cfg.algorithm)
        hooks.setup(self.strategy, num_clients=num_clients)
        sizes = [len(rows) for rows in ray.get(self.data_ref).clients]
        self.selector = registry.build(
            "selection",
            self.cfg.selection,
            num_clients=num_clients,
            seed=self.cfg.seed,
            client_sizes=sizes,
        )
        self.pipeline = Pipeline.from_config(self.cfg)
        self.pool: ActorPool | None = None

    def _start_pool(self) -> list[dict[str, Any]]:
        from fedray.client.actor import ClientWorker

        c = self.cfg.client
        remote_cls = ray.remote(ClientWorker).options(num_cpus=c.num_cpus, num_gpus=c.num_gpus)
        cfg = OmegaConf.to_container(self.cfg, resolve=True)

        def make() -> Any:
            return remote_cls.remote(cfg, self.data_ref, self.task, self.num_labels)

        self.pool = ActorPool(make, actor_count(self.cfg))
        return self.pool.wait_ready()

    def _start(self, resume: bool) -> tuple[DriverState, dict[str, Any]]:
        """Start the actors, then resume or create the state: (state, the `ready` event)."""
        t0 = time.perf_counter()
        actors = self._start_pool()
        assert self.pool is not None
        state = self._resume_state() if resume else None
        if state is None:
            state = DriverState(round=0, global_state=self.pool.call("initial_state"))
        return state, {
            "event": "ready",
            "actors": actors,
            "startup_s": time.perf_counter() - t0,
            "start_round": state.round + 1,
            "num_clients": self.num_clients,
        }

    def evaluate(self, global_state: State) -> dict[str, float]:
        """Test metrics of `global_state`, the test set sharded over every client actor.

        The state is put in the object store once; the metrics do not depend on the number
        of actors (see :mod:`fedray.evaluation`).
        """
        assert self.pool is not None
        ref = ray.put(global_state)
        return combine(self.pool.call_each("evaluate_shard", ref), self.task)

    def _initial_event(self, state: DriverState) -> dict[str, Any] | None:
        """The round-0 evaluation (`mode.eval_initial`) of a run that has not started yet."""
        if not (self.cfg.mode.eval_initial and state.round == 0):
            return None
        assert self.pool is not None
        ev = self.evaluate(state.global_state)
        return {"event": "initial", "round": 0, **{f"eval_{k}": v for k, v in ev.items()}}

    def run(self, resume: bool = False) -> Iterator[dict[str, Any]]:
        """The sync loop; yields a `ready` event, one `round` event per round, then `done`."""
        state, ready = self._start(resume)
        assert self.pool is not None
        yield ready
        try:
            if (initial := self._initial_event(state)) is not None:
                yield initial
            for rnd in range(state.round + 1, self.cfg.mode.rounds + 1):
                metrics = self._round(rnd, state)
                state.round = rnd
                self._maybe_checkpoint(state)
                yield metrics
            files = self.pool.call("export", state.global_state) if self._export() else None
            yield {"event": "done", "model_files": files, "actors_replaced": self.pool.replaced}
        finally:
            self.pool.shutdown()

    def _export(self) -> bool:
        return bool(self.cfg.tracking.enabled and self.cfg.tracking.log_model)

    def _round(self, rnd: int, state: DriverState) -> dict[str, Any]:
        assert self.pool is not None
        start = time.perf_counter()
        m = self.cfg.mode
        selected = self.selector.select(rnd, m.clients_per_round)
        global_state: State = state.global_state
        sent = hooks.shared_state(self.strategy, global_state)
        extra = hooks.broadcast(self.strategy, global_state)
        global_ref = ray.put(sent)  # one object per round, shared by every client
        extra_ref = None if extra is None else ray.put(extra)

        def submit(actor: Any, cid: int, attempt: int) -> ray.ObjectRef:
            seed = client_seed(
                self.cfg.seed, rnd, cid, self.cfg.client.seed_scheme, self.cfg.client.round_stride
            )
            return actor.train.remote(
                rnd,
                cid,
                seed,
                global_ref,
                state.client_states.get(cid),
                extra_ref,
                attempt=attempt,
            )

        calls = run_with_retries(
            self.pool,
            selected,
            submit,
            timeout_s=m.client_timeout_s,
            max_retries=m.max_retries,
            deadline_s=m.round_deadline_s,
        )
        outcomes = calls.outcomes
        updates = sorted(calls.values, key=lambda u: u.client_id)
        failures = list(calls.failures)
        contributions, rejected = screen(
            self.pipeline.server(updates, round=rnd), sent, m.max_norm_ratio
        )
        hooks.attach_extras(contributions, updates)
        failures += [(cid, f"update rejected: {why}") for cid, why in rejected]
        shortfall = quorum_shortfall(
            rnd, len(contributions), len(selected), m.min_clients, failures
        )
        if shortfall is None:
            try:
                state.global_state = self.strategy.aggregate(global_state, contributions)
            except ValueError as exc:
                shortfall = (
                    f"round {rnd}: algorithm={self.cfg.algorithm.name} cannot aggregate "
                    f"{len(contributions)} updates: {exc}; raise mode.min_clients accordingly"
                )
        if shortfall is not None and m.on_quorum_loss == "stop":
            raise QuorumError(f"{shortfall}; or set mode.on_quorum_loss=skip")
        ok = set() if shortfall else {c.client_id for c in contributions}
        updates = [u for u in updates if u.client_id in ok]
        for u in updates:
            if u.client_state is not None:
                state.client_states[u.client_id] = u.client_state
        self.selector.observe(rnd, hooks.losses(updates))
        metrics = self._round_metrics(rnd, selected, updates, failures, outcomes, sent)
        metrics["bytes_down"] += hooks.extra_nbytes(extra) * len(outcomes)
        metrics.update(hooks.personal_metrics(updates))
        metrics.update(
            clients_failed=len(selected) - len(updates),
            client_errors=len(calls.failures),
            retries=calls.retries,
            calls_lost=calls.calls_lost,
            updates_rejected=len(rejected),
            round_skipped=int(shortfall is not None),
            clients_late=sum(o.late for o in outcomes),  # past mode.round_deadline_s
        )
        if rnd % m.eval_every == 0 or rnd == m.rounds:
            ev = self.evaluate(state.global_state)
            metrics.update({f"eval_{k}": v for k, v in ev.items()})
        metrics["round_s"] = time.perf_counter() - start
        metrics["driver_rss_mb"] = psutil.Process().memory_info().rss / 2**20
        return metrics

    def _round_metrics(
        self,
        rnd: int,
        selected: list[int],
        updates: list[ClientUpdate],
        failures: list[tuple[int, str]],
        outcomes: list[Outcome],
        global_state: State,
    ) -> dict[str, Any]:
        n = sum(u.num_samples for u in updates)
        loss = sum(u.metrics.get("loss", 0.0) * u.num_samples for u in updates) / max(n, 1)
        return {
            "event": "round",
            "round": rnd,
            "selected": selected,
            "clients": len(selected),
            "clients_ok": len(updates),
            "clients_failed": len(failures),
            "failures": failures,
            "train_loss": loss,
            "train_samples": n,
            "bytes_down": self.pipeline.down_nbytes(global_state) * len(outcomes),
            "bytes_up": sum(u.nbytes_up for u in updates),
            "client_compute_s": sum(u.metrics.get("compute_s", 0.0) for u in updates),
            **self.pipeline.metrics(),
        }

    def _maybe_checkpoint(self, state: DriverState) -> None:
        every = self.cfg.mode.checkpoint_every
        if (
            self.checkpoint_dir
            and every > 0
            and (state.round % every == 0 or state.round == self.cfg.mode.rounds)
        ):
            state.strategy = self.strategy.state_dict()
            state.selector = self.selector.state_dict()
            state.pipeline = self.pipeline.state_dict()
            save_checkpoint(self.checkpoint_dir, state)

    def _resume_state(self) -> DriverState | None:
        if not self.checkpoint_dir:
            return None
        state = load_checkpoint(self.checkpoint_dir)
        if state is None:
            return None
        self.strategy.load_state_dict(state.strategy)
        self.selector.load_state_dict(state.selector)
        self.pipeline.load_state_dict(state.pipeline)
        return state


def start(
    cfg: DictConfig,
    data_ref: ray.ObjectRef,
    num_clients: int,
    task: str,
    num_labels: int | None,
    checkpoint_dir: str | None = None,
) -> Any:
    """Start the driver actor (no CPU reserved: it mostly waits on the client actors)."""
    from fedray.server.async_driver import AsyncDriver

    cls = AsyncDriver if cfg.mode.name == "async" else Driver
    remote_cls = ray.remote(cls).options(num_cpus=0, max_concurrency=1)
    return remote_cls.remote(
        OmegaConf.to_container(cfg, resolve=True),
        [data_ref],
        num_clients,
        task,
        num_labels,
        checkpoint_dir,
    )
