"""FedNova (Wang et al. 2020): normalised averaging for clients that do different local work.

FedAvg weights client i's update by p_i = n_i / sum_j n_j whatever the number of local steps
behind it, so clients that run more steps (more data, more epochs, faster devices) pull the
global model toward their own optimum: the objective it converges to is inconsistent. FedNova
divides each update by ``a_i`` (the client's normaliser: its number of local SGD steps, or the
momentum-weighted count; :func:`fedray.client.fednova.normaliser`) and rescales the mean by
``tau_eff = sum_i p_i a_i``:

    new = global + server_lr * tau_eff * sum_i p_i * delta_i / a_i

With equal ``a_i`` this is FedAvg. A straggler's partial update (``speed.stragglers``) is
kept: its smaller ``a_i`` is exactly what the normalisation accounts for.

How it fits the round protocol: the client rule ``fednova`` sends ``a_i`` as extra state (the
strategy broadcasts a one-value template, as the screen checks extra state against the
broadcast), and the strategy reads every update (``requires_individual_updates``): a secure
sum cannot carry the per-client normaliser. The local step counts are also in each update's
metrics, but a strategy sees contributions, not metrics, so the extra state carries them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedray.core.config import FedrayConfig
from fedray.core.extra import tagged, untagged
from fedray.core.registry import register
from fedray.core.statemath import add, sample_weights, weighted_sum
from fedray.core.types import Contribution, State
from fedray.strategies.base import Strategy

_TEMPLATE = {"a": np.zeros(1, dtype=np.float32)}


@dataclass
class FedNovaOptions:
    """Options of `algorithm=fednova`."""

    name: str = "fednova"
    server_lr: float = 1.0  # 1.0: the paper's plain FedNova (no server momentum)

    def check(self) -> None:
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")

    def check_against(self, spec: FedrayConfig) -> str | None:
        if spec.client.optimizer != "sgd":
            return (
                f"name=fednova normalises by local SGD steps, but client.optimizer="
                f"{spec.client.optimizer}; set client.optimizer=sgd"
            )
        return None


@register("algorithm", "fednova", FedNovaOptions)
class FedNova(Strategy):
    """Server half of FedNova; see the module docstring."""

    requires_individual_updates: ClassVar[bool] = True
    sends_extra: ClassVar[bool] = True
    keeps_partial_work: ClassVar[bool] = True

    def __init__(self, options: FedNovaOptions) -> None:
        self.options = options

    def client_rule(self) -> dict[str, Any]:
        return {"name": "fednova"}

    def broadcast(self, global_state: State) -> State:
        """A template of the clients' extra state (``nova/a``, one float32), for the screen."""
        return tagged(_TEMPLATE, "nova")

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        if not contributions:
            raise ValueError("no updates to aggregate")
        a = [float(untagged(c.extra, "nova", _TEMPLATE, "fednova")["a"][0]) for c in contributions]
        if min(a) <= 0:
            raise ValueError("fednova: a client reported no local step (a_i = 0)")
        p = sample_weights([c.num_samples for c in contributions])
        tau_eff = sum(pi * ai for pi, ai in zip(p, a, strict=True))
        weights = [pi * tau_eff / ai for pi, ai in zip(p, a, strict=True)]
        step = weighted_sum([c.delta for c in contributions], weights)
        return add(global_state, step, self.options.server_lr)
