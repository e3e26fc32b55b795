"""The client actor: a thin Ray wrapper around :class:`~fedray.client.trainer.Trainer`.

One actor loads the frozen base model once and then trains many virtual clients in turn. It
holds no client state of its own: whatever must survive between rounds comes in with the call
and goes back with the result, keyed by client id, so any actor can train any client.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedray.client.dataset import EncodedData
from fedray.client.speed import delay_s, speed_config, speed_factors
from fedray.evaluation import EvalSums, shard_rows
from fedray.server.hooks import extra_nbytes
from fedray.types import ClientUpdate, State


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


class ClientWorker:
    """Trains virtual clients on one CPU/GPU slot. Wrapped by ``ray.remote`` in the driver."""

    def __init__(
        self, cfg: dict[str, Any], data: EncodedData, task: str, num_labels: int | None
    ) -> None:
        from fedray.client.attack import Attack
        from fedray.client.faults import FaultInjector
        from fedray.client.rules import Recipe, client_rule
        from fedray.client.trainer import Trainer
        from fedray.pipeline import Pipeline

        self.cfg: DictConfig = OmegaConf.create(cfg)
        c = self.cfg.client
        threads = c.torch_threads or max(1, math.ceil(c.num_cpus))
        device = pick_device(c.device, c.num_gpus)
        self.trainer = Trainer(
            self.cfg.model, task, num_labels, seed=self.cfg.seed, device=device, threads=threads
        )
        self.pipeline = Pipeline.from_config(self.cfg)
        self.data = data
        self.rule = client_rule(self.cfg, self.trainer)
        self.recipe = Recipe.from_config(c)
        speed = speed_config(self.cfg.speed)
        self.speed = speed_factors(speed, len(data.clients), self.cfg.seed)
        self.faults = FaultInjector(self.cfg.get("faults"))
        self.attack = Attack(self.cfg.get("attack"), len(data.clients), self.cfg.seed)

    def ready(self) -> dict[str, Any]:
        """Where this actor runs: pid, device, and the GPUs Ray pinned it to."""
        import ray

        return {
            "pid": os.getpid(),
            "device": str(self.trainer.device),
            "gpu_ids": [
                str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            ],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    def initial_state(self) -> State:
        """The trainable state right after loading (the round-0 global state)."""
        return self.trainer.get_state()

    def train(
        self,
        round: int,
        client_id: int,
        seed: int,
        global_state: State,
        client_state: State | None = None,
        extra: State | None = None,
        attempt: int = 0,
    ) -> ClientUpdate:
        """Local training of one virtual client by the algorithm's client rule.

        `extra` is what the strategy broadcast beside the global state (SCAFFOLD's c); the
        rule's own extra state goes back in the update and counts towards `nbytes_up`.
        `attempt` counts retries within the round (the fault schedule may depend on it).
        """
        from fedray.client.rules import LocalJob

        self.faults.inject(round, client_id, attempt)
        job = LocalJob(
            client_id, seed, self.data.client_batch(client_id), global_state, client_state, extra
        )
        result = self.rule.run(self.trainer, job, self.recipe)
        trained = self.attack.apply(result.trained, global_state, client_id, round)
        delay = delay_s(float(self.speed[client_id]), result.metrics["compute_s"])
        result.metrics["delay_s"] = delay
        time.sleep(delay)  # simulated straggler (speed.*); 0 by default
        payload, nbytes_up = self.pipeline.client(
            trained, global_state, client_id=client_id, round=round
        )
        return ClientUpdate(
            client_id=client_id,
            num_samples=result.num_samples,
            payload=payload,
            nbytes_up=nbytes_up + extra_nbytes(result.extra),
            metrics=result.metrics,
            client_state=result.client_state,
            extra=result.extra,
        )

    def evaluate(self, global_state: State) -> dict[str, float]:
        """Metrics of the global state on the held-out test set."""
        self.trainer.set_state(global_state)
        return self.trainer.evaluate(self.data.test, batch_size=self.cfg.client.eval_batch_size)

    def evaluate_shard(self, global_state: State, shard: int, shards: int) -> EvalSums:
        """Sums of the global state over shard `shard` of `shards` of the test set."""
        size = self.cfg.client.eval_batch_size
        n = len(next(iter(self.data.test.values())))
        start, stop = shard_rows(n, size, shard, shards)
        if start == stop:  # more actors than test batches
            return {"loss_sums": [], "correct": 0, "count": 0}
        self.trainer.set_state(global_state)
        return self.trainer.eval_sums(self.data.test, size, start, stop)

    def export(self, global_state: State) -> dict[str, bytes]:
        """The global model as files (peft adapter or full HF model), to ship to the driver."""
        return self.trainer.export_adapter(global_state)
