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


def _node_id() -> str:
    """The Ray node this process runs on ('' outside Ray: a Trainer test, say)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def model_size(model: Any) -> tuple[int, int]:
    """(parameters of the whole model without its peft adapters, trainable parameters).

    A peft model holds its tuner's adapter weights (names with the tuner's prefix, e.g.
    `lora_`) and a trainable copy of each `modules_to_save` module beside the original; neither
    is part of the model a full fine-tuning run would train.
    """
    from peft import PeftModel

    skip: tuple[str, ...] = ()
    if isinstance(model, PeftModel):
        skip = (str(model.base_model.prefix), ".modules_to_save.")
    total = trainable = 0
    for name, p in model.named_parameters():
        trainable += p.numel() if p.requires_grad else 0
        if not any(s in name for s in skip):
            total += p.numel()
    return total, trainable


@dataclass(frozen=True)
class ActorSpec:
    """What a client actor needs, already typed: the run spec, the data's label count, the
    algorithm's client rule (a `rule` registry node), the number of clients of the run, and
    the global id of the first client in the actor's data (a silo's share starts later)."""

    run: FedrayConfig
    num_labels: int | None
    rule: dict[str, Any]
    population: int
    first_client: int = 0


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
        self.first_client = spec.first_client
        self.speed = speed_factors(run.speed, spec.population, run.seed)
        algorithm = registry.entry("algorithm", run.algorithm.name).factory
        self.work = Work.of(run.speed, run.seed, run.algorithm.name, algorithm.keeps_partial_work)
        self.faults = FaultInjector(run.faults)
        self.attack = Attack(run.attack, spec.population, run.seed)
        self.node = _node_id()
        self.sessions: dict[int, dict[str, Any]] = {}  # client id -> session, this round only
        self.session_round = -1

    def ready(self) -> dict[str, Any]:
        """Where this actor runs (pid, device, the GPUs Ray pinned it to) and the size of its
        model: `model_params` (the whole model, adapters excluded), `model_fp32_bytes` (as
        float32: what a full fine-tuning update would send), `trainable_params`."""
        import ray

        params, trainable = model_size(self.trainer.model)
        return {
            "model_params": params,
            "model_fp32_bytes": 4 * params,
            "trainable_params": trainable,
            "pid": os.getpid(),
            "node": self.node,
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
        # simulated stragglers do less (or drop out)
        n = self.data.num_samples(job.client_id - self.first_client)
        recipe = self.work.recipe(self.recipe, job.round, job.client_id, job.cohort, n)
        global_state = self.pipeline.decode_down(payload, job.spec)
        stored = dict(job.client_state)
        mechanism = self.pipeline.mechanism
        session = self._session(job.round, job.client_id)
        local = LocalJob(
            job.client_id,
            job.seed,
            self.data.client_batch(job.client_id - self.first_client),
            global_state,
            stored.pop("rule", None),
            extra,
        )
        training = mechanism.client_training(
            client_id=job.client_id,
            round=job.round,
            seed=job.seed,
            state=stored.get("privacy"),
            session=session,
        )
        with self.trainer.shaped(training):  # e.g. DP-SGD around every fit of the rule
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
            session=session,
        )
        privacy, figures = mechanism.client_finish(
            client_id=job.client_id, round=job.round, state=stored.get("privacy"), session=session
        )
        if privacy is None:
            state.pop("privacy", None)
        else:
            state["privacy"] = privacy
        result.metrics.update(figures)
        if result.client_state is not None:
            state["rule"] = result.client_state
        metrics = result.metrics
        if not self.pipeline.mechanism.reveals_client_metrics:  # e.g. DP: the loss stays here
            metrics = {k: metrics[k] for k in ("compute_s", "delay_s") if k in metrics}
        return Update(
            client_id=job.client_id,
            num_samples=result.num_samples,
            payload=sent,
            nbytes_up=int(sent.nbytes) + (0 if result.extra is None else nbytes(result.extra)),
            metrics=metrics,
            client_state=state,
            extra=result.extra,
            node=self.node,
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
