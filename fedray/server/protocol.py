"""The round protocol: the stages of a round, written once, driven by the sync and the async
scheduler (:mod:`fedray.server.sync`, :mod:`fedray.server.asynchronous`).

1. plan the cohort (the selector)                 5. aggregate: per-update plaintext (checks,
2. broadcast: downlink codec, one object ref         robust rules) or the mechanism's sum
3. client job: the rule, then the pipeline's      6. after aggregation: the mechanism's reduce
   client transforms (in the actor)                  (unmask, decrypt, noise), accountant
4. collect: results or errors, retries, deadline  7. server optimizer step (the strategy)
   (round trips for mechanisms via CohortIO)      8. commit: client states, selector feedback,
                                                     metrics, checkpoint

The coordinator knows rounds, clients, actors and stages, never which codec or mechanism is on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
import ray

from fedray.client.silo import ActorGroup
from fedray.core.config import FedrayConfig
from fedray.core.context import RoundContext, RunContext
from fedray.core.seeding import client_seed
from fedray.core.statemath import nbytes
from fedray.core.types import (
    ClientState,
    Contribution,
    Failure,
    State,
    StateSpec,
    TrainJob,
    Update,
    spec_of,
)
from fedray.pipeline import Pipeline, broadcast_seed
from fedray.pipeline.traffic import Sent
from fedray.server.collect import screen
from fedray.server.placement import Placement
from fedray.server.pool import ActorPool, Call
from fedray.strategies.base import Strategy
from fedray.tasks.base import PERSONAL_SUM, Task, add_sums


@dataclass
class Broadcast:
    """What one round (or one async global version) sends down, put in the store once."""

    ctx: RoundContext
    global_state: State  # the full global state (the server's copy)
    shared: State  # what clients receive and what updates must match
    payload_ref: ray.ObjectRef  # the downlink codec's payload of `shared`
    nbytes: int  # per receiving client: payload + extra state
    dense_nbytes: int  # the same tensors as float32
    extra: State | None  # strategy extra state (SCAFFOLD's c), sent beside it
    extra_ref: ray.ObjectRef | None
    message_ref: ray.ObjectRef  # the mechanism's round message
    spec: Any = None

    def __post_init__(self) -> None:
        self.spec = spec_of(self.shared)

    @property
    def sent(self) -> Sent:
        """What one receiving client call costs: (bytes, bytes as dense float32)."""
        return self.nbytes, self.dense_nbytes


class PoolIO:
    """:class:`~fedray.privacy.base.CohortIO` over the actor pool: each client's phases run on
    the actor slot it is assigned to for the round (:meth:`Placement.assign`), in one call per
    actor and phase."""

    def __init__(self, pool: ActorPool, round: int, assignment: dict[int, int]) -> None:
        self.pool, self.round = pool, round
        self.assignment = assignment
        self.round_trips = 0

    def exchange(self, phase: str, messages: dict[int, Any]) -> dict[int, Any]:
        self.round_trips += 1
        return per_actor(
            self.pool,
            {cid: self.assignment[cid] for cid in messages},
            lambda actor, cids: actor.phase.remote(
                phase, self.round, {cid: messages[cid] for cid in cids}
            ),
        )


def per_actor(
    pool: ActorPool, assignment: dict[int, int], call: Callable[[Any, list[int]], ray.ObjectRef]
) -> dict[int, Any]:
    """One call per actor slot of `assignment` (client id -> slot) with that slot's clients, in
    assignment order: ``call(actor, client_ids)`` returns a ref to {client id: reply}. The
    replies merged; a failed call's clients, and clients its reply leaves out, are absent."""
    by_actor: dict[int, list[int]] = defaultdict(list)
    for cid, slot in assignment.items():
        by_actor[slot].append(cid)
    jobs = [
        (slot, lambda actor, cids=cids: call(actor, cids), slot)
        for slot, cids in sorted(by_actor.items())
    ]
    replies: dict[int, Any] = {}
    for o in pool.run_all(jobs):
        if o.error is None:
            replies.update(o.value)
    return replies


class RoundProtocol:
    """The stages both schedulers share, over one pool, strategy, selector and pipeline."""

    def __init__(
        self,
        spec: FedrayConfig,
        pool: ActorPool,
        strategy: Strategy,
        selector: Any,
        pipeline: Pipeline,
        task: Task,
        run: RunContext,
        client_states: dict[int, ClientState],
        placement: Placement | None = None,
    ) -> None:
        self.spec, self.pool, self.strategy = spec, pool, strategy
        self.selector, self.pipeline, self.task, self.run = selector, pipeline, task, run
        self.client_states = client_states
        self.placement = placement or Placement(
            [ActorGroup("all", [], 0, run.population)], [pool.size]
        )
        self.shared_spec: StateSpec | None = None  # of the last broadcast: what updates match
        self.probe_sent: list[Sent] = []  # the last plan's probe: model copies sent down
        self.probe_figures: dict[str, float] = {}

    # -- 1. plan ---------------------------------------------------------------------------
    def plan(self, rnd: int, global_state: State | None = None) -> list[int]:
        """The clients that train in round (or draw) `rnd`.

        A selector that ranks by fresh losses (``selector.probes``: power-of-choice with
        ``loss=fresh``) first has its candidates evaluate `global_state` on their own samples
        (:meth:`probe`)."""
        k = self.spec.mode.clients_per_round
        self.probe_sent, self.probe_figures = [], {}
        if not getattr(self.selector, "probes", False):
            return self.selector.select(rnd, k)
        if global_state is None:
            raise RuntimeError("a probing selector needs the global state to plan a round")
        candidates = self.selector.candidates()
        losses, sent = self.probe(rnd, candidates, global_state)
        cohort = self.selector.choose(candidates, losses, k)
        # every candidate received the model; the chosen ones' training call is counted as
        # usual by the round, the others' copy here (the losses ride back like all metrics)
        self.probe_sent = [sent] * (len(candidates) - len(cohort))
        self.probe_figures = {
            "probe_clients": float(len(candidates)),
            "probe_failed": float(len(candidates) - len(losses)),
        }
        return cohort

    def probe(
        self, rnd: int, candidates: list[int], global_state: State
    ) -> tuple[dict[int, float], Sent]:
        """Each candidate's loss of `global_state` on its own samples, measured on the actor
        that holds it; (losses of the candidates that answered, what one candidate received).

        The shared state goes down through the downlink codec with the round's broadcast seed,
        so a candidate scores exactly what the round then broadcasts."""
        _, spec, payload = self.encode_shared(global_state, rnd)
        ref = ray.put(payload)
        losses = per_actor(
            self.pool,
            self.placement.assign(candidates),
            lambda actor, cids: actor.probe_losses.remote(cids, ref, spec),
        )
        return losses, (int(payload.nbytes), 4 * spec.size)

    def encode_shared(self, global_state: State, rnd: int) -> tuple[State, StateSpec, Any]:
        """(the shared part of `global_state`, its spec, its downlink payload for round
        `rnd`): what the round's broadcast, and a probe before it, send."""
        shared = self.strategy.shared_state(global_state)
        spec = spec_of(shared)
        seed = broadcast_seed(self.spec.seed, rnd)
        return shared, spec, self.pipeline.encode_down(shared, spec, seed=seed)

    # -- 2. broadcast ----------------------------------------------------------------------
    def broadcast(self, ctx: RoundContext, global_state: State) -> Broadcast:
        """Encode and put the round's global state, extra state and round message once."""
        shared, spec, payload = self.encode_shared(global_state, ctx.round)
        self.shared_spec = spec
        extra = self.strategy.broadcast(global_state)
        extra_nbytes = 0 if extra is None else nbytes(extra)
        return Broadcast(
            ctx=ctx,
            global_state=global_state,
            shared=shared,
            payload_ref=ray.put(payload),
            nbytes=int(payload.nbytes) + extra_nbytes,
            dense_nbytes=4 * spec.size + extra_nbytes,
            extra=extra,
            extra_ref=None if extra is None else ray.put(extra),
            message_ref=ray.put(self.pipeline.mechanism.round_message(ctx)),
        )

    # -- 3. client job ---------------------------------------------------------------------
    def job_call(self, bcast: Broadcast, cid: int, attempt: int, rnd: int) -> Call:
        """How to start client `cid`'s job of round (async: draw + 1) `rnd`, try `attempt`."""
        c = self.spec.client
        job = TrainJob(
            round=rnd,
            client_id=cid,
            seed=client_seed(self.spec.seed, rnd, cid, c.seed_scheme, c.round_stride),
            attempt=attempt,
            spec=bcast.spec,
            client_state=self.client_states.get(cid, {}),
            message=self.pipeline.mechanism.client_message(bcast.ctx, cid),
            cohort=bcast.ctx.cohort,
        )
        refs = (bcast.payload_ref, bcast.extra_ref, bcast.message_ref)
        return lambda actor: actor.train.remote(job, *refs)

    # -- 5. aggregate (plaintext path) -----------------------------------------------------
    def screen(
        self, bcast: Broadcast, updates: list[Update], norm_ratio: float
    ) -> tuple[list[Contribution], list[Failure]]:
        """Decode each plaintext update and keep those that pass the checks."""
        contributions = [self.pipeline.decode(u, bcast.spec) for u in updates]
        return screen(contributions, bcast.shared, norm_ratio, bcast.extra)

    # -- 8. commit -------------------------------------------------------------------------
    def commit(self, rnd: int, updates: list[Update], arrived: Sequence[Update] = ()) -> None:
        """Store the accepted clients' states and feed their losses to the selector.

        Of the updates that `arrived` but were not accepted, only the client's privacy state is
        kept (its per-client accountant): what a client released stays spent.
        """
        accepted = {u.client_id for u in updates}
        for u in arrived:
            if u.client_id not in accepted and u.client_state and "privacy" in u.client_state:
                kept = {**self.client_states.get(u.client_id, {})}
                kept["privacy"] = u.client_state["privacy"]
                self.client_states[u.client_id] = kept
        for u in updates:
            if u.client_state:
                self.client_states[u.client_id] = u.client_state
            else:
                self.client_states.pop(u.client_id, None)
        losses = {u.client_id: float(u.metrics["loss"]) for u in updates if "loss" in u.metrics}
        self.selector.observe(rnd, losses)

    def traffic(self, arrived: list[Update], down: list[Sent]) -> dict[str, float]:
        """The byte figures of a round: `arrived` every update that came back, `down` what each
        client call received (:attr:`Broadcast.sent`); see :mod:`fedray.pipeline.traffic`."""
        assert self.shared_spec is not None, "traffic() before the first broadcast"
        dense = 4 * self.shared_spec.size
        up: list[Sent] = [
            (u.nbytes_up, dense + (0 if u.extra is None else nbytes(u.extra))) for u in arrived
        ]
        return self.pipeline.traffic.record(up, down)

    def evaluate(self, global_state: State) -> dict[str, float]:
        """The task's metrics of `global_state`, the test set sharded over every client actor.

        The state is put in the object store once; the metrics do not depend on the number of
        actors (each shard is whole batches; sums are added in batch order).
        """
        ref = ray.put(global_state)
        shard_of = self.placement.shard_of if self.placement.routed else None
        return self.task.metrics(add_sums(self.pool.each("evaluate_shard", ref, shard_of=shard_of)))


def update_metrics(
    updates: list[Update], arrived: list[Update], task: Task | None = None
) -> dict[str, float]:
    """Figures of a round's updates: `updates` the accepted ones, `arrived` all that came back.

    Personalized evaluations (``personal_*``) become ``eval_personal_*``: with the `task`, its
    metrics of the clients' pooled evaluation sums (every held-out sample counts once); without
    it, or when a client sent no sums, the mean of the clients' own figures."""
    n = sum(u.num_samples for u in updates)
    loss = sum(u.metrics.get("loss", 0.0) * u.num_samples for u in updates) / max(n, 1)
    out = {
        "clients_ok": float(len(updates)),
        "train_loss": loss,
        "train_samples": float(n),
        "client_compute_s": sum(u.metrics.get("compute_s", 0.0) for u in arrived),
        "client_delay_s": sum(u.metrics.get("delay_s", 0.0) for u in arrived),
    }
    if updates and not any("loss" in u.metrics for u in updates):
        del out["train_loss"]  # the clients kept their losses (privacy.reveals_client_metrics)
    personal = [u.metrics for u in updates if any(k.startswith("personal_") for k in u.metrics)]
    sums = [
        {k.removeprefix(PERSONAL_SUM): v for k, v in m.items() if k.startswith(PERSONAL_SUM)}
        for m in personal
    ]
    if task is not None and personal and all(sums):
        out.update({f"eval_personal_{k}": v for k, v in task.metrics(add_sums([sums])).items()})
    else:
        keys = sorted(
            {k for m in personal for k in m if k.startswith("personal_")}
            - {"personal_train_loss"}
            - {k for m in personal for k in m if k.startswith(PERSONAL_SUM)}
        )
        for key in keys:
            values = [m[key] for m in personal if key in m]
            out[f"eval_{key}"] = sum(values) / len(values)
    if personal:
        out["eval_personal_clients"] = float(len(personal))
    return out


@dataclass
class RoundTimer:
    """Wall time of a round and the driver's memory after it."""

    start: float = field(default_factory=time.perf_counter)

    def finish(self) -> dict[str, float]:
        return {
            "round_s": time.perf_counter() - self.start,
            "driver_rss_mb": psutil.Process().memory_info().rss / 2**20,
        }
