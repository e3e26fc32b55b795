"""Personalized federated learning: FedPer (local layers) and Ditto (personal models).

Both aggregate what is shared with sample-weighted FedAvg; what is personal lives in the
driver's client-state store under the client id and is never aggregated. Client halves:
:mod:`fedray.client.personal`. The global model is evaluated as usual (``eval_accuracy``; for
FedPer that is the shared body with the head the model was loaded with); the personalized
models are evaluated by the clients on a seeded hold-out of their own samples
(``eval_personal_accuracy``, the mean over a round's clients).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedray.core.registry import register
from fedray.core.statemath import split_local
from fedray.core.types import Aggregate, State
from fedray.strategies.base import Strategy
from fedray.strategies.fedavg import FedAvg, FedAvgOptions


def _check_holdout(holdout: float) -> None:
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout} must be in (0, 1) (share of each client's samples)")


@dataclass
class FedPerOptions:
    """Options of `algorithm=fedper`."""

    name: str = "fedper"
    local_keys: list[str] = field(default_factory=lambda: ["classifier"])  # substrings of keys
    holdout: float = 0.2  # share of each client's samples kept for its personalized evaluation
    server_lr: float = 1.0

    def check(self) -> None:
        if not self.local_keys:
            raise ValueError("local_keys must name at least one parameter group, e.g. classifier")
        _check_holdout(self.holdout)
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")


@register("algorithm", "fedper", FedPerOptions)
class FedPer(Strategy):
    """Shares and averages every trainable key except those matching `local_keys`."""

    def __init__(self, options: FedPerOptions) -> None:
        self.options = options
        self.server = FedAvg(FedAvgOptions(server_lr=options.server_lr))

    def shared_state(self, global_state: State) -> State:
        """The part of the global state that is sent down and aggregated."""
        return split_local(global_state, self.options.local_keys)[0]

    def client_rule(self) -> dict[str, Any]:
        o = self.options
        return {"name": "fedper", "local_keys": list(o.local_keys), "holdout": o.holdout}

    def step(self, global_state: State, aggregate: Aggregate) -> State:
        shared = self.server.step(self.shared_state(global_state), aggregate)
        return self.merge_shared(global_state, shared)


@dataclass
class DittoOptions:
    """Options of `algorithm=ditto`."""

    name: str = "ditto"
    lam: float = 0.1  # pull of the personal model toward the global one; Li et al. tune 0.01-2
    holdout: float = 0.2  # share of each client's samples kept for its personalized evaluation
    server_lr: float = 1.0

    def check(self) -> None:
        if self.lam < 0:
            raise ValueError(f"lam={self.lam} must be >= 0")
        _check_holdout(self.holdout)
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")


@register("algorithm", "ditto", DittoOptions)
class Ditto(Strategy):
    """Global model: FedAvg; personal models: the client rule's regularized local training."""

    def __init__(self, options: DittoOptions) -> None:
        self.options = options
        self.server = FedAvg(FedAvgOptions(server_lr=options.server_lr))

    def client_rule(self) -> dict[str, Any]:
        return {"name": "ditto", "lam": self.options.lam, "holdout": self.options.holdout}

    def step(self, global_state: State, aggregate: Aggregate) -> State:
        return self.server.step(global_state, aggregate)
