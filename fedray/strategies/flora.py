"""FLoRA (Wang et al. 2024): exact aggregation of LoRA products by stacking.

Averaging A and B separately gives ``mean(B_i) mean(A_i)``, not the mean of the clients'
models. FLoRA stacks the factors: ``[w_1 B_1, ..., w_n B_n] [A_1; ...; A_n] = sum_i w_i B_i A_i``
exactly, whatever the ranks. How that product enters the global model here, with a frozen base
shared read-only by every actor (so it cannot be merged into the base weights as in the
paper): every adapted layer keeps a dense merged delta D (out x in, float32) in the trainable
global state, and the layer computes ``W x + s (D + B A) x``
(:func:`fedray.models.lora.attach_merged_deltas`). Each round

    D <- D + sum_i w_i B_i A_i       (w_i = n_i / sum_j n_j; exact, float32)
    B <- 0,  A <- a fresh seeded kaiming-uniform draw      (so B A = 0: the model is W + s D)

and clients train a new rank-r adapter on top. Why a dense D rather than a growing rank: the
clients are stateless (any client may join in any round), so each must receive the cumulative
product; stacked factors grow by n r per round, and a dense layer is smaller than its stack
once the accumulated rank exceeds ``in * out / (in + out)`` (192 for a 384 x 384 layer, i.e.
after two rounds of 10 clients at rank 8), and it keeps the forward pass at one extra matmul.
The price is the download: D is dense (a full copy of the adapted layers), while uploads stay
adapter-sized because D comes back unchanged (its delta is zero; `compression=trim` sends
nothing for it, and this algorithm requires it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.checkpoint import check_state_keys
from fedray.core.config import FedrayConfig
from fedray.core.registry import register
from fedray.core.statemath import sample_weights, weighted_sum
from fedray.core.types import Contribution, State
from fedray.models.lora import DELTA_KEY, lora_a_init, lora_pairs
from fedray.strategies.base import ServerCompute, Strategy


def uses_trim(compression: Any) -> bool:
    """Whether the uplink codec starts with `trim` (lossless: unchanged tensors cost nothing)."""
    if compression.name == "trim":
        return True
    codecs = getattr(compression, "codecs", None) or []
    first = codecs[0] if codecs else None
    name = first.get("name") if hasattr(first, "get") else getattr(first, "name", None)
    return compression.name == "chain" and name == "trim"


@dataclass
class FLoRAOptions:
    """Options of `algorithm=flora`."""

    name: str = "flora"

    def check_against(self, spec: Any) -> str | None:
        if spec.model.finetune != "lora":
            return "name=flora aggregates LoRA products: it needs model.finetune=lora"
        if spec.model.groups:
            return "name=flora runs one architecture and rank: remove model.groups"
        if not uses_trim(spec.compression):
            return (
                "name=flora: clients send their merged dense delta back unchanged; use "
                "compression=trim (lossless) so that it costs nothing on the uplink"
            )
        return None


@register("algorithm", "flora", FLoRAOptions)
class FLoRA(Strategy):
    """Exact FedAvg of the clients' LoRA products into a dense merged delta per layer."""

    requires_individual_updates = True  # the products need each client's own factors

    def __init__(self, options: FLoRAOptions) -> None:
        self.options = options
        self.seed = 0
        self.rounds = 0  # aggregations done: seeds the next fresh A

    def bind(self, spec: FedrayConfig, compute: ServerCompute) -> None:
        self.seed = spec.seed

    def client_rule(self) -> dict[str, Any]:
        return {"name": "merged_delta"}

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        pairs = lora_pairs(global_state)
        deltas = {p + DELTA_KEY for p in pairs}
        missing = sorted(d for d in deltas if d not in global_state)
        if missing:
            raise ValueError(f"flora: the global state has no merged delta {missing[0]}")
        weights = sample_weights([c.num_samples for c in contributions])
        factors = {k for a, b in pairs.values() for k in (a, b)}
        rest = [k for k in global_state if k not in factors and k not in deltas]
        out = dict(global_state)
        if rest:  # heads and other trainable tensors: FedAvg of their deltas
            mean = weighted_sum([{k: c.delta[k] for k in rest} for c in contributions], weights)
            out.update({k: (global_state[k] + mean[k]).astype(np.float32) for k in rest})
        self.rounds += 1
        rng = np.random.default_rng([self.seed, self.rounds, 0x666C6F7261])
        for prefix, (ka, kb) in pairs.items():
            d = np.array(global_state[prefix + DELTA_KEY], dtype=np.float32, copy=True)
            for c, w in zip(contributions, weights, strict=True):
                a = global_state[ka] + c.delta[ka]
                b = global_state[kb] + c.delta[kb]
                d += np.float32(w) * (b @ a)  # the stacked product, term by term
            out[prefix + DELTA_KEY] = d
            out[kb] = np.zeros_like(global_state[kb])
            out[ka] = lora_a_init(global_state[ka].shape, rng)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"rounds"}, state, "FLoRA")
        self.rounds = int(state["rounds"])
