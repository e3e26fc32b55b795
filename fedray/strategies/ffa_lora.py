"""FFA-LoRA (Sun et al. 2024): LoRA A frozen at its seeded initialisation, only B trained.

Every client holds the same A (the base model and its adapters are initialised from the run
seed, identically on every actor), so the average of the clients' adapters is exactly the
average of their models: ``mean_i(B_i) A = mean_i(B_i A)``. A never travels, which also halves
the adapter bytes up and down. The heads (`modules_to_save`) are averaged as in FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedray.core.registry import register
from fedray.core.types import Aggregate, State
from fedray.strategies.base import Strategy
from fedray.strategies.fedavg import FedAvg, FedAvgOptions

FROZEN = ".lora_A."


@dataclass
class FFALoRAOptions:
    """Options of `algorithm=ffa_lora`."""

    name: str = "ffa_lora"
    server_lr: float = 1.0

    def check(self) -> None:
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")

    def check_against(self, spec: Any) -> str | None:
        if spec.model.finetune != "lora":
            return "name=ffa_lora freezes LoRA A: it needs model.finetune=lora"
        return None


@register("algorithm", "ffa_lora", FFALoRAOptions)
class FFALoRA(Strategy):
    """FedAvg of everything but the frozen LoRA A, which stays in the global state unchanged."""

    def __init__(self, options: FFALoRAOptions) -> None:
        self.options = options
        self.server = FedAvg(FedAvgOptions(server_lr=options.server_lr))

    def shared_state(self, global_state: State) -> State:
        shared = {k: v for k, v in global_state.items() if FROZEN not in k}
        if len(shared) == len(global_state):
            raise ValueError("algorithm=ffa_lora: the trainable state has no LoRA A to freeze")
        return shared

    def client_rule(self) -> dict[str, Any]:
        return {"name": "frozen_a"}

    def step(self, global_state: State, aggregate: Aggregate) -> State:
        shared = self.server.step(self.shared_state(global_state), aggregate)
        return self.merge_shared(global_state, shared)
