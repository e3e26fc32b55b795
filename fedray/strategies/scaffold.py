"""SCAFFOLD (Karimireddy et al., 2020): control variates correct the clients' drift.

Server state: the control variate ``c`` (zeros at first), broadcast with the global state as
extra state tagged ``c``. Each client ``i`` keeps ``c_i`` in the driver's client-state store and
returns ``delta y_i`` (its update) and ``delta c_i`` (extra state, tagged ``c``). Then

    x = x + server_lr * sum_i (n_i / sum_j n_j) * delta y_i      (sample-weighted, as FedAvg)
    c = c + (|S| / N) * (1 / |S|) * sum_i delta c_i              (N: all clients)

so ``c`` stays the mean of all clients' ``c_i``. The client half is
:class:`~fedray.client.rules.ScaffoldRule`; for LoRA runs both variates cover the trainable
state only (adapters + modules_to_save).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedray.registry import register
from fedray.strategies.aggregate import add, sample_weights, weighted_sum
from fedray.strategies.base import Contribution, check_state_keys
from fedray.strategies.extra import tagged, untagged
from fedray.strategies.validate import check_like
from fedray.types import State

if TYPE_CHECKING:
    from fedray.client.rules import ClientRule
    from fedray.client.trainer import Trainer


@dataclass
class ScaffoldOptions:
    """Options of `algorithm=scaffold`."""

    name: str = "scaffold"
    server_lr: float = 1.0  # the paper's global step size eta_g; 1 = take the mean update

    def check(self) -> None:
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")


@register("algorithm", "scaffold", ScaffoldOptions)
class Scaffold:
    """Server half of SCAFFOLD; see the module docstring for the update equations."""

    requires_individual_updates = False

    def __init__(self, options: ScaffoldOptions) -> None:
        self.options = options
        self.num_clients: int | None = None
        self.c: State | None = None

    def setup(self, *, num_clients: int) -> None:
        """Learn N, the number of clients (the driver calls this once)."""
        self.num_clients = num_clients

    def client_rule(self, trainer: Trainer, *, seed: int) -> ClientRule:
        from fedray.client.rules import ScaffoldRule

        return ScaffoldRule()

    def broadcast(self, global_state: State) -> State:
        """The server control variate c (zeros before the first round), tagged ``c``."""
        if self.c is None:
            self.c = {k: np.zeros(a.shape, np.float32) for k, a in global_state.items()}
        return tagged(self.c, "c")

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        if self.num_clients is None:
            raise ValueError("scaffold: setup(num_clients=...) was not called")
        if not contributions:
            raise ValueError("no updates to aggregate")
        if self.c is None:
            self.broadcast(global_state)
        assert self.c is not None
        deltas_c = [untagged(u.extra, "c", global_state, "scaffold") for u in contributions]
        for i, d in enumerate(deltas_c):
            check_like(d, global_state, f"scaffold: delta c of update {i}")
        weights = sample_weights([u.num_samples for u in contributions])
        new = add(
            global_state,
            weighted_sum([u.delta for u in contributions], weights),
            self.options.server_lr,
        )
        share = len(contributions) / self.num_clients  # |S| / N
        mean_dc = weighted_sum(deltas_c, [1.0 / len(deltas_c)] * len(deltas_c))
        self.c = add(self.c, mean_dc, share)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"c": None if self.c is None else {k: v.copy() for k, v in self.c.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"c"}, state, "Scaffold")
        c = state["c"]
        self.c = None if c is None else {k: np.array(v, np.float32) for k, v in c.items()}
