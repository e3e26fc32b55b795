"""SCAFFOLD (Karimireddy et al., 2020): control variates correct the clients' drift.

Server state: the control variate ``c`` (zeros at first), broadcast with the global state as
extra state tagged ``c``. Each client ``i`` keeps ``c_i`` in the driver's client-state store and
returns ``delta y_i`` (its update) and ``delta c_i`` (extra state, tagged ``c``). Then

    x = x + server_lr * sum_i (n_i / sum_j n_j) * delta y_i      (sample-weighted, as FedAvg)
    c = c + (|S| / N) * (1 / |S|) * sum_i delta c_i              (N: all clients)

so ``c`` stays the mean of all clients' ``c_i``. The client half is the rule ``scaffold``
(:class:`~fedray.client.rules.ScaffoldRule`); for LoRA runs both variates cover the trainable
state only (adapters + modules_to_save).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.checkpoint import check_state_keys
from fedray.core.extra import tagged, untagged
from fedray.core.registry import register
from fedray.core.statemath import add
from fedray.core.types import Aggregate, State
from fedray.core.validate import check_like
from fedray.strategies.base import Strategy


@dataclass
class ScaffoldOptions:
    """Options of `algorithm=scaffold`."""

    name: str = "scaffold"
    server_lr: float = 1.0  # the paper's global step size eta_g; 1 = take the mean update

    def check(self) -> None:
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")


@register("algorithm", "scaffold", ScaffoldOptions)
class Scaffold(Strategy):
    """Server half of SCAFFOLD; see the module docstring for the update equations."""

    sends_extra = True

    def __init__(self, options: ScaffoldOptions) -> None:
        self.options = options
        self.num_clients: int | None = None
        self.c: State | None = None

    def setup(self, *, num_clients: int) -> None:
        """Learn N, the number of clients (the driver calls this once)."""
        self.num_clients = num_clients

    def client_rule(self) -> dict[str, Any]:
        return {"name": "scaffold"}

    def broadcast(self, global_state: State) -> State:
        """The server control variate c (zeros before the first round), tagged ``c``."""
        if self.c is None:
            self.c = {k: np.zeros(a.shape, np.float32) for k, a in global_state.items()}
        return tagged(self.c, "c")

    def step(self, global_state: State, aggregate: Aggregate) -> State:
        if self.num_clients is None:
            raise ValueError("scaffold: setup(num_clients=...) was not called")
        if self.c is None:
            self.broadcast(global_state)
        assert self.c is not None
        mean_dc = untagged(aggregate.extra_mean, "c", global_state, "scaffold")
        check_like(mean_dc, global_state, "scaffold: the mean delta c")
        new = add(global_state, aggregate.mean, self.options.server_lr)
        share = aggregate.count / self.num_clients  # |S| / N
        self.c = add(self.c, mean_dc, share)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"c": None if self.c is None else {k: v.copy() for k, v in self.c.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"c"}, state, "Scaffold")
        c = state["c"]
        self.c = None if c is None else {k: np.array(v, np.float32) for k, v in c.items()}
