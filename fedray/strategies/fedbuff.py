"""FedBuff (Nguyen et al., 2022): buffer K staleness-weighted deltas, then one server step.

    buffer += s(tau_i) * delta_i                     for each arriving update
    after K updates:  mean = buffer / K
                      global <- server_step(global, mean)

The server step is any FedOpt-style sync algorithm (`fedavg` with its server_lr, `fedavgm`,
`fedadam`, `fedyogi`, `fedadagrad`), built from the registry and fed the buffered mean as a
single contribution, so the optimizer code is not duplicated. Async mode only (`mode=async`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedray.core import registry
from fedray.core.checkpoint import check_state_keys
from fedray.core.errors import ConfigError
from fedray.core.types import Aggregate, Contribution, State
from fedray.core.validate import check_like
from fedray.strategies.base import AsyncStrategy
from fedray.strategies.staleness import check_staleness_options, staleness_weight

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


@dataclass
class FedBuffOptions:
    """Options of `algorithm=fedbuff`."""

    name: str = "fedbuff"
    k: int = 5  # buffer size; Nguyen et al. find K=10 good at 1000 concurrency, smaller here
    staleness: str = "polynomial"  # constant | polynomial | hinge
    a: float = 0.5  # polynomial exponent: s = 1/sqrt(1 + tau), the paper's choice
    b: float = 4.0  # hinge only: staleness tolerated at full weight
    server: dict[str, Any] = field(
        default_factory=lambda: {"name": "fedavg", "server_lr": 1.0},
        metadata={"help": "Server step: an algorithm node, one of " + ", ".join(SERVER_OPTIMIZERS)},
    )

    def check(self) -> None:
        if self.k < 1:
            raise ValueError(f"k={self.k} must be >= 1 (updates buffered per server step)")
        check_staleness_options(self.staleness, self.a, self.b)
        name = self.server.get("name")
        if name not in SERVER_OPTIMIZERS:
            raise ValueError(
                f"server.name={name!r} is not a server optimizer; use one of "
                + ", ".join(SERVER_OPTIMIZERS)
            )
        try:
            registry.parse("algorithm", self.server)
        except ConfigError as exc:
            raise ValueError(f"server: {str(exc).removeprefix('algorithm.')}") from None


@registry.register("algorithm", "fedbuff", FedBuffOptions)
class FedBuff(AsyncStrategy):
    """A new global version every K arrived updates; None from :meth:`apply` in between.

    Needs individual updates: each delta is weighted by its own staleness.
    """

    def __init__(self, options: FedBuffOptions) -> None:
        self.options = options
        self.server = registry.build("algorithm", dict(options.server))
        self._sum: State | None = None
        self._count = 0

    def weight(self, tau: int) -> float:
        """s(tau) applied to one delta before it enters the buffer."""
        o = self.options
        return staleness_weight(o.staleness, tau, o.a, o.b)

    def apply(
        self, global_state: State, base_state: State, contribution: Contribution, staleness: int
    ) -> State | None:
        """Buffer one update; after K of them, the next global state (else None)."""
        check_like(contribution.delta, global_state, "fedbuff: the update")
        w = np.float32(self.weight(staleness))
        if self._sum is None:
            self._sum = {k: np.zeros(a.shape, np.float32) for k, a in global_state.items()}
        for k, d in contribution.delta.items():
            self._sum[k] += np.multiply(d, w, dtype=np.float32)
        self._count += 1
        if self._count < self.options.k:
            return None
        count = self._count
        mean = {k: v / np.float32(count) for k, v in self._sum.items()}
        self._sum, self._count = None, 0
        return self.server.step(global_state, Aggregate(mean, float(count), count))

    @property
    def buffered(self) -> int:
        """Updates waiting in the buffer."""
        return self._count

    def state_dict(self) -> dict[str, Any]:
        buf = None if self._sum is None else {k: v.copy() for k, v in self._sum.items()}
        return {"sum": buf, "count": self._count, "server": self.server.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"sum", "count", "server"}, state, "FedBuff")
        s = state["sum"]
        self._sum = None if s is None else {k: np.array(v, np.float32) for k, v in s.items()}
        self._count = int(state["count"])
        self.server.load_state_dict(state["server"])
