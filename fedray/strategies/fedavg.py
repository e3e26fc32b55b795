"""FedAvg (McMahan et al., 2017): the sample-weighted mean of client models."""

from __future__ import annotations

from dataclasses import dataclass

from fedray.core.registry import register
from fedray.core.statemath import add
from fedray.core.types import Aggregate, State
from fedray.strategies.base import Strategy


@dataclass
class FedAvgOptions:
    """Options of `algorithm=fedavg`."""

    name: str = "fedavg"
    server_lr: float = 1.0  # 1.0 is plain FedAvg; other values scale the averaged delta

    def check(self) -> None:
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")


@register("algorithm", "fedavg", FedAvgOptions)
class FedAvg(Strategy):
    """new = global + server_lr * sum_i (n_i / sum_j n_j) * delta_i."""

    def __init__(self, options: FedAvgOptions) -> None:
        self.options = options

    def step(self, global_state: State, aggregate: Aggregate) -> State:
        return add(global_state, aggregate.mean, self.options.server_lr)
