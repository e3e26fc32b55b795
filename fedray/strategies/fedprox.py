"""FedProx (Li et al., 2020): FedAvg on the server, a proximal term on the client.

The client minimises ``F_i(w) + mu / 2 * ||w - w_global||²`` (see
:class:`~fedray.client.rules.ProximalRule`); the server is sample-weighted FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedray.core.registry import register
from fedray.core.types import Aggregate, State
from fedray.strategies.base import Strategy
from fedray.strategies.fedavg import FedAvg, FedAvgOptions


@dataclass
class FedProxOptions:
    """Options of `algorithm=fedprox`."""

    name: str = "fedprox"
    mu: float = 0.01  # Li et al. tune mu in {0.001, 0.01, 0.1, 1}; 0 gives back FedAvg
    server_lr: float = 1.0  # 1.0 is FedAvg's step

    def check(self) -> None:
        if self.mu < 0:
            raise ValueError(f"mu={self.mu} must be >= 0")
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")


@register("algorithm", "fedprox", FedProxOptions)
class FedProx(Strategy):
    """Client rule: proximal term `mu`; server: FedAvg with `server_lr`."""

    keeps_partial_work = True  # Li et al. 2020: FedProx aggregates stragglers' partial work

    def __init__(self, options: FedProxOptions) -> None:
        self.options = options
        self.server = FedAvg(FedAvgOptions(server_lr=options.server_lr))

    def client_rule(self) -> dict[str, Any]:
        return {"name": "proximal", "mu": self.options.mu}

    def step(self, global_state: State, aggregate: Aggregate) -> State:
        return self.server.step(global_state, aggregate)
