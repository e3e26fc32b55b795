"""FedAvgM (Hsu et al., 2019): FedAvg with heavy-ball momentum on the server.

    v = momentum * v + mean_delta        (mean_delta: sample-weighted, as in FedAvg)
    new = global + server_lr * v

With momentum=0 and server_lr=1 this is FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.checkpoint import check_state_keys
from fedray.core.registry import register
from fedray.core.types import Aggregate, State
from fedray.core.validate import check_like
from fedray.strategies.base import Strategy


@dataclass
class FedAvgMOptions:
    """Options of `algorithm=fedavgm`."""

    name: str = "fedavgm"
    server_lr: float = 1.0  # 1.0 keeps FedAvg's step size; Hsu et al. tune it with momentum
    momentum: float = 0.9  # common heavy-ball value, in Hsu et al.'s sweep; step ~ lr/(1-momentum)

    def check(self) -> None:
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum} must be in [0, 1)")


@register("algorithm", "fedavgm", FedAvgMOptions)
class FedAvgM(Strategy):
    """new = global + server_lr * v, v = momentum * v + mean_delta; v starts at 0."""

    def __init__(self, options: FedAvgMOptions) -> None:
        self.options = options
        self._v: State | None = None

    def step(self, global_state: State, aggregate: Aggregate) -> State:
        o = self.options
        delta = aggregate.mean  # updated in place below: the aggregate is this step's to use up
        check_like(delta, global_state, "fedavgm: the mean update")
        if self._v is None:
            self._v = {k: np.zeros(a.shape, np.float32) for k, a in global_state.items()}
        check_like(self._v, global_state, "fedavgm: the momentum buffer")
        new: State = {}
        for k, d in delta.items():
            v = self._v[k]
            v *= np.float32(o.momentum)
            v += d
            np.multiply(v, np.float32(o.server_lr), out=d)
            new[k] = np.add(global_state[k], d, dtype=np.float32)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"v": _copy(self._v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"v"}, state, "FedAvgM")
        self._v = _copy(state["v"])


def _copy(state: State | None) -> State | None:
    """Writable float32 copies (inputs may be read-only or shared with a checkpoint)."""
    return None if state is None else {k: np.array(a, np.float32) for k, a in state.items()}
