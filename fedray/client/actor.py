"""The client actor: a thin Ray wrapper around :class:`~fedray.client.trainer.Trainer`.

One actor loads the frozen base model once and then trains many virtual clients in turn. It
holds no client state of its own: whatever must survive between rounds comes in with the call
and goes back with the result, keyed by client id, so any actor can train any client.
"""

from __future__ import annotations

import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedray.client.dataset import EncodedData
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
        attempt: int = 0,
    ) -> ClientUpdate:
        """Local training of one virtual client from the global state; returns its update."""
        c = self.cfg.client
        self.faults.inject(round, client_id, attempt)
        batch = self.data.client_batch(client_id)
        self.trainer.set_state(global_state)
        metrics = self.trainer.fit(
            batch,
            seed=seed,
            epochs=c.epochs,
            batch_size=c.batch_size,
            lr=c.lr,
            weight_decay=c.weight_decay,
            max_steps=c.max_steps,
        )
        trained = self.attack.apply(self.trainer.get_state(), global_state, client_id, round)
        payload, nbytes_up = self.pipeline.client(
            trained, global_state, client_id=client_id, round=round
        )
        return ClientUpdate(
            client_id=client_id,
            num_samples=self.data.num_samples(client_id),
            payload=payload,
            nbytes_up=nbytes_up,
            metrics=metrics,
            client_state=client_state,
        )

    def evaluate(self, global_state: State) -> dict[str, float]:
        """Metrics of the global state on the held-out test set."""
        self.trainer.set_state(global_state)
        return self.trainer.evaluate(self.data.test, batch_size=self.cfg.client.eval_batch_size)

    def export(self, global_state: State) -> dict[str, bytes]:
        """The global model as files (peft adapter or full HF model), to ship to the driver."""
        return self.trainer.export_adapter(global_state)
