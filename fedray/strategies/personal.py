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
from typing import TYPE_CHECKING, Any

from fedray.registry import register
from fedray.strategies.base import Contribution
from fedray.strategies.fedavg import FedAvg, FedAvgOptions
from fedray.types import State

if TYPE_CHECKING:
    from fedray.client.rules import ClientRule
    from fedray.client.trainer import Trainer


def is_local(key: str, patterns: list[str]) -> bool:
    """Whether a state key belongs to a local (never shared) parameter group."""
    return any(p in key for p in patterns)


def split_local(state: State, patterns: list[str]) -> tuple[State, State]:
    """(shared part, local part) of a state; ValueError if either part would be empty."""
    local = {k: v for k, v in state.items() if is_local(k, patterns)}
    shared = {k: v for k, v in state.items() if k not in local}
    if not local:
        example = next(iter(state), "none")
        raise ValueError(
            f"local_keys={patterns} match no trainable key (keys look like {example!r}); "
            "name a substring of the head's keys, e.g. classifier"
        )
    if not shared:
        raise ValueError(f"local_keys={patterns} match every trainable key; nothing is shared")
    return shared, local


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
class FedPer:
    """Shares and averages every trainable key except those matching `local_keys`."""

    requires_individual_updates = False

    def __init__(self, options: FedPerOptions) -> None:
        self.options = options
        self.server = FedAvg(FedAvgOptions(server_lr=options.server_lr))

    def shared_state(self, global_state: State) -> State:
        """The part of the global state that is sent down and aggregated."""
        return split_local(global_state, self.options.local_keys)[0]

    def client_rule(self, trainer: Trainer, *, seed: int) -> ClientRule:
        from fedray.client.personal import FedPerRule

        return FedPerRule(trainer, self.options.local_keys, self.options.holdout, seed)

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        shared = self.server.aggregate(self.shared_state(global_state), contributions)
        return {**global_state, **shared}

    def state_dict(self) -> dict[str, Any]:
        return self.server.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server.load_state_dict(state)


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
class Ditto:
    """Global model: FedAvg; personal models: the client rule's regularized local training."""

    requires_individual_updates = False

    def __init__(self, options: DittoOptions) -> None:
        self.options = options
        self.server = FedAvg(FedAvgOptions(server_lr=options.server_lr))

    def client_rule(self, trainer: Trainer, *, seed: int) -> ClientRule:
        from fedray.client.personal import DittoRule

        return DittoRule(self.options.lam, self.options.holdout, seed)

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        return self.server.aggregate(global_state, contributions)

    def state_dict(self) -> dict[str, Any]:
        return self.server.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server.load_state_dict(state)
