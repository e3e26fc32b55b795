"""The coordinator: a driver actor that starts the client actors, resumes or creates the run's
state, and runs the sync or async scheduler over the round protocol, streaming typed events
(:mod:`fedray.core.events`) to the process that started it, which prints and records them.

The driver is pinned to the node of that process, so its checkpoints land where `fedray resume`
looks for them, on a cluster too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import ray
from ray.exceptions import RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fedray.client.silo import ActorGroup
from fedray.core import registry
from fedray.core.checkpoint import DriverState, load_checkpoint, save_checkpoint
from fedray.core.config import FedrayConfig
from fedray.core.context import RunContext
from fedray.core.errors import BudgetExhausted, FedrayError
from fedray.core.events import Done, Evaluated, Event, Ready
from fedray.core.types import State
from fedray.pipeline import Pipeline
from fedray.server.asynchronous import run_async
from fedray.server.placement import Placement
from fedray.server.pool import ActorPool, error_line
from fedray.server.protocol import RoundProtocol
from fedray.server.sync import run_round


def actor_count(spec: FedrayConfig) -> int:
    """Client actors to start: `client.num_actors`, or as many slots as the cluster fits."""
    c = spec.client
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
    return max(1, min(fit, spec.mode.clients_per_round))


def shares_base(spec: FedrayConfig) -> bool:
    """Whether the actors map one shared frozen base (`model.shared_base`, an unquantized
    LoRA model; full fine-tuning has no frozen base, bitsandbytes' quantized weights are
    loaded by each actor onto its GPU). A pool of one actor keeps its own copy even so."""
    m = spec.model
    return m.shared_base and m.finetune == "lora" and m.quantize == "none"


class Driver:
    """Runs one federated experiment. Wrapped by ``ray.remote`` in :func:`start`."""

    def __init__(
        self,
        spec: FedrayConfig,
        groups: list[ActorGroup],
        client_sizes: list[int],
        num_labels: int | None,
        checkpoint_dir: str | None = None,
    ) -> None:
        self.spec = spec
        self.groups = groups
        self.num_labels = num_labels
        self.checkpoint_dir = checkpoint_dir
        num_clients = len(client_sizes)
        self.strategy = registry.build("algorithm", spec.algorithm)
        self.strategy.setup(num_clients=num_clients)
        self.selector = registry.build(
            "selection",
            spec.selection,
            num_clients=num_clients,
            seed=spec.seed,
            client_sizes=client_sizes,
        )
        self.pipeline = Pipeline.from_spec(spec)
        self.task = registry.build("task", {"name": spec.data.task})
        self.context = RunContext(
            population=num_clients,
            cohort_size=spec.mode.clients_per_round,
            sampling=self.selector.sampling,
            rounds=spec.mode.rounds,
            seed=spec.seed,
            mode=spec.mode.name,
            client_sizes=tuple(int(n) for n in client_sizes),
        )
        self.pipeline.mechanism.setup(self.context)
        self.pool: ActorPool | None = None
        self.placement: Placement | None = None
        self.strategy.bind(spec, PoolCompute(self))

    def _start_pool(self) -> list[dict[str, Any]]:
        """The client actors, group by group: a silo's on its nodes, reading its data there.

        With a shared base, the first actor loads the checkpoint and exports the frozen base
        into the object store (the driver owns that object, so it outlives the actor); every
        other actor, replacements included, builds its model around zero-copy views of it (one
        copy per node), and the first swaps its own copy for them."""
        from fedray.client.actor import ActorSpec, ClientWorker

        c = self.spec.client
        worker = ray.remote(ClientWorker)
        rule, population = self.strategy.client_rule(), self.context.population
        sizes = [g.actors if g.actors is not None else actor_count(self.spec) for g in self.groups]
        self.placement = Placement(self.groups, sizes)
        slot_group = [g for g, n in zip(self.groups, sizes, strict=True) for _ in range(n)]
        base: list[Any] | None = None

        def new_actor(slot: int) -> Any:
            group = slot_group[slot]
            spec = ActorSpec(self.spec, self.num_labels, rule, population, group.first_client, base)
            where = {} if group.labels is None else {"label_selector": dict(group.labels)}
            cls = worker.options(num_cpus=c.num_cpus, num_gpus=c.num_gpus, **where)
            return cls.remote(spec, group.data[0])

        first: list[Any] = []
        # one actor in the whole pool: its own copy is the only one, and an object-store copy
        # beside it would only add memory (W1: the checkpoint is read through the page cache)
        share = shares_base(self.spec) and len(slot_group) > 1
        if share:
            loader = new_actor(0)
            base_ref = loader.export_base.remote()
            self._adopted = loader.adopt_base.remote([base_ref])
            base = [base_ref]
            first.append(loader)

        def make(slot: int) -> Any:
            return first.pop() if slot == 0 and first else new_actor(slot)

        self.pool = ActorPool(make, len(slot_group))
        actors = self.pool.wait_ready()
        if share:
            try:
                ray.get(self._adopted)
            except RayTaskError as exc:
                raise FedrayError(f"shared base: {error_line(exc)}") from None
        self.pipeline.traffic.model_bytes = int(actors[0]["model_fp32_bytes"])  # for its ratios
        return actors

    def _start(self, resume: bool) -> tuple[DriverState, Ready]:
        """Start the actors, then resume or create the state."""
        t0 = time.perf_counter()
        actors = self._start_pool()
        assert self.pool is not None
        state = self._resume_state() if resume else None
        if state is None:
            state = DriverState(round=0, global_state=self.pool.call("initial_state"))
        ready = Ready(actors, time.perf_counter() - t0, state.round + 1, self.context.population)
        return state, ready

    def run(self, resume: bool = False) -> Iterator[Event]:
        """The experiment: `Ready`, maybe `Evaluated` (round 0), a `RoundEnd` per round, `Done`."""
        state, ready = self._start(resume)
        assert self.pool is not None
        yield ready
        protocol = RoundProtocol(
            self.spec,
            self.pool,
            self.strategy,
            self.selector,
            self.pipeline,
            self.task,
            self.context,
            state.client_states,
            self.placement,
        )
        stop = None
        try:
            if self.spec.mode.eval_initial and state.round == 0:
                yield Evaluated(protocol.evaluate(state.global_state))
            try:
                if self.spec.mode.name == "async":
                    for loop, end in run_async(protocol, state.global_state, state.loop):
                        state.round, state.global_state = end.round, loop.global_state
                        state.loop = loop.state_dict()
                        self._maybe_checkpoint(state)
                        end.metrics.update(self.strategy.metrics())
                        yield end
                else:
                    for rnd in range(state.round + 1, self.spec.mode.rounds + 1):
                        state.global_state, end = run_round(protocol, rnd, state.global_state)
                        state.round = rnd
                        self._maybe_checkpoint(state)
                        end.metrics.update(self.strategy.metrics())
                        yield end
            except BudgetExhausted as exc:  # a clean end before an unaffordable round
                stop = str(exc)
                self._maybe_checkpoint(state, force=True)
            export = self.spec.tracking.enabled and self.spec.tracking.log_model
            files = self.pool.call("export", state.global_state) if export else None
            yield Done(files, self.pool.replaced, stop)
        finally:
            self.pool.shutdown()

    def _maybe_checkpoint(self, state: DriverState, force: bool = False) -> None:
        every = self.spec.mode.checkpoint_every
        due = every > 0 and (state.round % every == 0 or state.round == self.spec.mode.rounds)
        if self.checkpoint_dir and (due or (force and every > 0)):
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


class PoolCompute:
    """:class:`~fedray.strategies.base.ServerCompute` on the driver's actor pool: a strategy's
    model computations run on whichever client actor is free, their states put in the object
    store once."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def distill(
        self, student: State, teachers: list[tuple[str, State]], options: Any, seed: list[int]
    ) -> tuple[State, dict[str, float]]:
        pool = self.driver.pool
        if pool is None:
            raise FedrayError("distillation needs the client actors; they are not started")
        refs = (ray.put(student), ray.put(teachers))

        def call(actor: Any) -> ray.ObjectRef:
            return actor.distill.remote(*refs, options, seed)

        [outcome] = pool.run_all([("distill", call, None)])
        if outcome.error is not None:
            raise FedrayError(f"server-side distillation failed: {outcome.error}")
        return outcome.value


def start(
    spec: FedrayConfig,
    data: ray.ObjectRef | list[ActorGroup],
    client_sizes: list[int],
    num_labels: int | None,
    checkpoint_dir: str | None = None,
) -> Any:
    """Start the driver actor on this node (no CPU reserved: it mostly waits on the clients).

    `data` is the ref of the encoded data every actor reads (loaded by this process), or the
    actor groups of a cross-silo run (:func:`fedray.client.silo.start_silos`).
    """
    groups = data if isinstance(data, list) else [ActorGroup("all", [data], 0, len(client_sizes))]
    here = ray.get_runtime_context().get_node_id()
    remote_cls = ray.remote(Driver).options(
        num_cpus=0,
        max_concurrency=1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    )
    return remote_cls.remote(spec, groups, client_sizes, num_labels, checkpoint_dir)
