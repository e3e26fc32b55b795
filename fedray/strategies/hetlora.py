"""HetLoRA (Cho et al. 2024): clients of different LoRA ranks and tuned layers in one run.

Groups come from `model.groups` (rank `r`, tuned `layers`, `share` of the clients). Every actor
holds the superset adapter (the largest rank, the union of layers); a client trains the
truncated global adapter of its rank on its layers (the `rank_groups` rule), so its update is
exactly zero on every component it does not hold. Aggregation (`aggregation`):

- ``component`` (default): each component is the weighted mean over the clients that trained
  it (as FlexLoRA / HeteroFL do), so higher ranks are not diluted by the clients without them;
- ``pad``: HetLoRA's zero padding: every update is padded with zeros to the largest rank and
  the weighted mean runs over all clients (components held by few clients shrink);
- ``truncate``: only the components every client of the cohort holds are updated (the
  cohort's smallest rank, the layers every group tunes).

Weights (`weighting`): ``samples`` (n_i), ``rank`` (n_i r_i: rank-dependent, larger adapters
count more), ``norm`` (n_i ||delta_i||: HetLoRA's sparsity-weighted aggregation, updates that
moved more count more). With `compression=trim` a client uploads only its block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.config import FedrayConfig
from fedray.core.registry import register
from fedray.core.statemath import add
from fedray.core.types import Contribution, State
from fedray.core.validate import update_norm
from fedray.models import groups
from fedray.strategies._groups import ClientGroups, grouped_mean
from fedray.strategies.base import ServerCompute, Strategy


@dataclass
class HetLoRAOptions:
    """Options of `algorithm=hetlora`."""

    name: str = "hetlora"
    aggregation: str = "component"  # component | pad | truncate
    weighting: str = "samples"  # samples | rank | norm
    server_lr: float = 1.0

    def check(self) -> None:
        if self.aggregation not in ("component", "pad", "truncate"):
            raise ValueError(f"aggregation={self.aggregation!r}: use component, pad or truncate")
        if self.weighting not in ("samples", "rank", "norm"):
            raise ValueError(f"weighting={self.weighting!r}: use samples, rank or norm")
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")

    def check_against(self, spec: Any) -> str | None:
        if spec.model.finetune != "lora":
            return "name=hetlora needs model.finetune=lora"
        if len(groups.architectures(spec.model)) > 1:
            return (
                "name=hetlora averages one architecture; model.groups with different "
                "num_layers need algorithm=feddf"
            )
        return None


def client_weights(
    contributions: list[Contribution], of: ClientGroups, weighting: str
) -> list[float]:
    """Aggregation weight of each update: n_i, n_i r_i or n_i ||delta_i||."""
    if weighting == "samples":
        return [float(c.num_samples) for c in contributions]
    if weighting == "rank":
        return [float(c.num_samples * of.group(c.client_id).r) for c in contributions]
    return [float(c.num_samples) * update_norm(c.delta) for c in contributions]


@register("algorithm", "hetlora", HetLoRAOptions)
class HetLoRA(Strategy):
    """Rank- and layer-heterogeneous LoRA clients, averaged component by component."""

    requires_individual_updates = True  # each update's components and weight are its own
    reads_groups = True

    def __init__(self, options: HetLoRAOptions) -> None:
        self.options = options
        self.num_clients = 0
        self.of: ClientGroups | None = None
        self._metrics: dict[str, float] = {}

    def setup(self, *, num_clients: int) -> None:
        self.num_clients = num_clients

    def bind(self, spec: FedrayConfig, compute: ServerCompute) -> None:
        self.of = ClientGroups(spec, self.num_clients)

    def _groups(self) -> ClientGroups:
        if self.of is None:
            raise RuntimeError("HetLoRA.bind(spec, compute) was not called")
        return self.of

    def client_rule(self) -> dict[str, Any]:
        return {"name": "rank_groups", **self._groups().rule_options()}

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        of = self._groups()
        weights = client_weights(contributions, of, self.options.weighting)
        if not sum(weights) > 0:
            raise ValueError("hetlora: every update has zero weight (all-zero deltas?)")
        mean = grouped_mean(global_state, contributions, of, weights, self.options.aggregation)
        ranks = [of.group(c.client_id).r for c in contributions]
        self._metrics = {"cohort_rank_mean": float(np.mean(ranks))}
        return add(global_state, mean, self.options.server_lr)

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)
