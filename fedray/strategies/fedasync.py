"""FedAsync (Xie et al., 2019): merge each client model into the global one as it arrives.

    global <- (1 - a_tau) * global + a_tau * client_model,   a_tau = alpha * s(tau)

The client model is the state it started from plus its delta, so the driver hands
:meth:`FedAsync.apply` the base state of the version the client trained from.
Async mode only (`mode=async`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.core.registry import register
from fedray.core.types import Contribution, State
from fedray.core.validate import check_like
from fedray.strategies.base import AsyncStrategy
from fedray.strategies.staleness import check_staleness_options, staleness_weight


@dataclass
class FedAsyncOptions:
    """Options of `algorithm=fedasync`."""

    name: str = "fedasync"
    alpha: float = 0.6  # Xie et al. sweep alpha in {0.4, 0.6, 0.8, 0.9}; 0.6 is mid-range
    staleness: str = "polynomial"  # constant | polynomial | hinge
    a: float = 0.5  # polynomial exponent / hinge slope (the paper's a=0.5 polynomial)
    b: float = 4.0  # hinge: staleness tolerated at full weight (the paper uses b=4)

    def check(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha={self.alpha} must be in (0, 1] (the mixing weight)")
        check_staleness_options(self.staleness, self.a, self.b)


@register("algorithm", "fedasync", FedAsyncOptions)
class FedAsync(AsyncStrategy):
    """One new global version per applied update."""

    def __init__(self, options: FedAsyncOptions) -> None:
        self.options = options

    def mixing_weight(self, tau: int) -> float:
        """a_tau = alpha * s(tau)."""
        o = self.options
        return o.alpha * staleness_weight(o.staleness, tau, o.a, o.b)

    def apply(
        self, global_state: State, base_state: State, contribution: Contribution, staleness: int
    ) -> State:
        """The next global state (FedAsync never buffers)."""
        check_like(contribution.delta, global_state, "fedasync: the update")
        a = np.float32(self.mixing_weight(staleness))
        one_minus = np.float32(1.0) - a
        new: State = {}
        for k, g in global_state.items():
            client = np.add(base_state[k], contribution.delta[k], dtype=np.float32)
            client *= a
            new[k] = np.add(np.multiply(g, one_minus, dtype=np.float32), client)
        return new
