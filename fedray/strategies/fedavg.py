"""FedAvg (McMahan et al., 2017): the sample-weighted mean of client models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedray.registry import register
from fedray.strategies.aggregate import add, sample_weights, weighted_sum
from fedray.strategies.base import Contribution, check_state_keys
from fedray.types import State


@dataclass
class FedAvgOptions:
    """Options of `algorithm=fedavg`."""

    name: str = "fedavg"
    server_lr: float = 1.0  # 1.0 is plain FedAvg; other values scale the averaged delta

    def check(self) -> None:
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")


@register("algorithm", "fedavg", FedAvgOptions)
class FedAvg:
    """new = global + server_lr * sum_i (n_i / sum_j n_j) * delta_i."""

    requires_individual_updates = False

    def __init__(self, options: FedAvgOptions) -> None:
        self.options = options

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        weights = sample_weights([c.num_samples for c in contributions])
        mean_delta = weighted_sum([c.delta for c in contributions], weights)
        return add(global_state, mean_delta, self.options.server_lr)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(set(), state, "FedAvg")
