"""The client actor: a thin Ray wrapper around :class:`~fedray.client.trainer.Trainer`.

One actor loads the frozen base model once and then trains many virtual clients in turn. It
holds no client state between rounds: what must survive comes in with the job and goes back
with the update, keyed by client id, so any actor can train any client. Within one round it
keeps each of its clients' *session* (what a multi-phase privacy mechanism's client keeps
between round trips, such as its secret keys), which never leaves the actor.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

from fedray.client.attack import Attack
from fedray.client.faults import FaultInjector
from fedray.client.speed import Work, delay_s, speed_factors
from fedray.core.config import FedrayConfig
from fedray.core.statemath import nbytes, subtract
from fedray.core.types import State, TrainJob, Update
from fedray.data.base import EncodedData
from fedray.pipeline import Pipeline
from fedray.tasks.base import shard_rows


def pick_device(requested: str, num_gpus: float) -> str:
    """The torch device an actor trains on; raises instead of silently falling back."""
    import torch

    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or num_gpus > 0:
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"client.device={requested} with client.num_gpus={num_gpus}, but torch sees no "
                "CUDA device on this node; set client.device=cpu to use logical GPUs on CPUs"
            )
        return "cuda"
    return "cpu"


@dataclass(frozen=True)
class ActorSpec:
    """What a client actor needs, already typed: the run spec, the data's label count and
    the algorithm's client rule (a `rule` registry node)."""

    run: FedrayConfig
    num_labels: int | None
    rule: dict[str, Any]


class ClientWorker:
    """Trains virtual clients on one CPU/GPU slot. Wrapped by ``ray.remote`` in the driver."""

    def __init__(self, spec: ActorSpec, data: EncodedData) -> None:
        from fedray.client.trainer import Recipe, Trainer
        from fedray.core import registry

        run = spec.run
        c = run.client
        threads = c.torch_threads or max(1, math.ceil(c.num_cpus))
        task = registry.build("task", {"name": run.data.task})
        self.trainer = Trainer(
            run.model,
            task,
            spec.num_labels,
            seed=run.seed,
            device=pick_device(c.device, c.num_gpus),
            threads=threads,
        )
        self.eval_batch_size = c.eval_batch_size
        self.pipeline = Pipeline.from_spec(run)
        self.data = data
        self.rule = registry.build("rule", spec.rule, trainer=self.trainer, seed=run.seed)
        self.recipe = Recipe.from_config(c)
        self.speed = speed_factors(run.speed, len(data.clients), run.seed)
        algorithm = registry.entry("algorithm", run.algorithm.name).factory
        self.work = Work.of(run.speed, run.seed, run.algorithm.name, algorithm.keeps_partial_work)
        self.faults = FaultInjector(run.faults)
        self.attack = Attack(run.attack, len(data.clients), run.seed)
        self.sessions: dict[int, dict[str, Any]] = {}  # client id -> session, this round only
        self.session_round = -1

    def ready(self) -> dict[str, Any]:
        """Where this actor runs: pid, device, and the GPUs Ray pinned it to."""
        import ray

        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "device": str(self.trainer.device),
            "gpu_ids": [
                str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            ],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    def initial_state(self) -> State:
        """The trainable state right after loading (the round-0 global state)."""
        return self.trainer.get_state()

    def _session(self, round: int, client_id: int) -> dict[str, Any]:
        if round != self.session_round:  # a new round: the last one's sessions are over
            self.sessions, self.session_round = {}, round
        return self.sessions.setdefault(client_id, {})

    def phase(self, phase: str, round: int, messages: dict[int, Any]) -> dict[int, Any]:
        """One round trip of the privacy mechanism for this actor's clients of the round.

        A client whose handler raises is left out of the reply: it dropped out.
        """
        replies: dict[int, Any] = {}
        for cid, message in messages.items():
            try:
                replies[cid] = self.pipeline.mechanism.client_phase(
                    phase,
                    client_id=cid,
                    round=round,
                    message=message,
                    session=self._session(round, cid),
                )
            except Exception:
                self.sessions.pop(cid, None)
        return replies

    def train(
        self, job: TrainJob, payload: Any, extra: State | None = None, round_message: Any = None
    ) -> Update:
        """Local training of one virtual client by the algorithm's client rule, then the
        pipeline's client transforms.

        `payload` is the broadcast (the downlink codec's encoding of the shared global state),
        `extra` what the strategy broadcast beside it (SCAFFOLD's c); the rule's own extra
        state goes back in the update and counts towards `nbytes_up`.
        """
        from fedray.client.rules import LocalJob

        self.faults.inject(job.round, job.client_id, job.attempt)
        n = self.data.num_samples(job.client_id)  # simulated stragglers do less (or drop out)
        recipe = self.work.recipe(self.recipe, job.round, job.client_id, job.cohort, n)
        global_state = self.pipeline.decode_down(payload, job.spec)
        stored = dict(job.client_state)
        local = LocalJob(
            job.client_id,
            job.seed,
            self.data.client_batch(job.client_id),
            global_state,
            stored.pop("rule", None),
            extra,
        )
        result = self.rule.run(self.trainer, local, recipe)
        trained = self.attack.apply(result.trained, global_state, job.client_id, job.round)
        delay = delay_s(float(self.speed[job.client_id]), result.metrics["compute_s"])
        result.metrics["delay_s"] = delay
        time.sleep(delay)  # simulated straggler (speed.*); 0 by default
        sent, state = self.pipeline.client(
            subtract(trained, global_state),
            spec=job.spec,
            weight=float(result.num_samples),
            client_id=job.client_id,
            round=job.round,
            seed=job.seed,
            round_message=round_message,
            client_message=job.message,
            client_state=stored,
            session=self._session(job.round, job.client_id),
        )
        if result.client_state is not None:
            state["rule"] = result.client_state
        return Update(
            client_id=job.client_id,
            num_samples=result.num_samples,
            payload=sent,
            nbytes_up=int(sent.nbytes) + (0 if result.extra is None else nbytes(result.extra)),
            metrics=result.metrics,
            client_state=state,
            extra=result.extra,
        )

    def evaluate_shard(self, global_state: State, shard: int, shards: int) -> list[dict]:
        """Per-batch sums of the global state over shard `shard` of `shards` of the test set."""
        n = len(next(iter(self.data.test.values())))
        start, stop = shard_rows(n, self.eval_batch_size, shard, shards)
        if start == stop:  # more actors than test batches
            return []
        self.trainer.set_state(global_state)
        return self.trainer.eval_sums(self.data.test, self.eval_batch_size, start, stop)

    def export(self, global_state: State) -> dict[str, bytes]:
        """The global model as files (peft adapter or full HF model), to ship to the driver."""
        return self.trainer.export_adapter(global_state)
