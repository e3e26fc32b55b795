"""Averaging updates of client groups (`model.groups`): every component over its trainers.

A client of a lower rank, or one that tunes fewer layers or another architecture, sends an
update that is exactly zero where it trained nothing (:func:`fedray.models.groups.trained_part`).
Plain averaging would shrink those components towards zero by the share of clients that did
not train them; these helpers average each component over the clients that did (or, for
HetLoRA's zero padding, deliberately over everyone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedray.core.config import FedrayConfig
from fedray.core.types import Contribution, State
from fedray.models import groups


class ClientGroups:
    """The run's groups and which client belongs to which (the same mapping as the actors)."""

    def __init__(self, spec: FedrayConfig, num_clients: int) -> None:
        self.groups = groups.resolve(spec.model)
        self.of = groups.assign(self.groups, num_clients, spec.seed)

    def group(self, client_id: int) -> groups.Group:
        """The group of a client."""
        return self.groups[int(self.of[client_id])]

    def rule_options(self) -> dict[str, object]:
        """What the `rank_groups` client rule needs: group per client, rank and layers."""
        return {
            "group_of": [int(g) for g in self.of],
            "ranks": [g.r for g in self.groups],
            "layers": [None if g.layers is None else list(g.layers) for g in self.groups],
        }


def common_part(members: Sequence[groups.Group], key: str, shape: tuple[int, ...]) -> groups.Part:
    """The components of `key` that every group in `members` trains (HetLoRA's truncation)."""
    parts = [groups.trained_part(g, key, shape) for g in members]
    if any(p is None for p in parts):
        return None
    smallest = min(members, key=lambda g: g.r)
    return groups.trained_part(smallest, key, shape)


def grouped_mean(
    reference: State,
    contributions: Sequence[Contribution],
    of: ClientGroups,
    weights: Sequence[float],
    mode: str = "component",
) -> State:
    """The weighted mean delta, component by component.

    `mode`: ``component`` divides each component by the weight of the clients that trained it
    (an unbiased mean over them); ``pad`` divides by the total weight (HetLoRA's zero padding:
    components few clients train shrink); ``truncate`` keeps only the components every
    client of the cohort trained (rank: the cohort's smallest) and leaves the others at zero.
    """
    if mode not in ("component", "pad", "truncate"):
        raise ValueError(f"mode={mode!r}: use component, pad or truncate")
    members = [of.group(c.client_id) for c in contributions]
    total = float(sum(weights))
    out: State = {}
    for key, ref in reference.items():
        shape = np.shape(ref)
        acc = np.zeros(shape, np.float32)
        got = np.zeros(shape, np.float32)
        common = common_part(members, key, shape) if mode == "truncate" else None
        for c, g, w in zip(contributions, members, weights, strict=True):
            part = common if mode == "truncate" else groups.trained_part(g, key, shape)
            if part is None:
                continue
            acc[part] += np.float32(w) * np.asarray(c.delta[key], np.float32)[part]
            got[part] += np.float32(w)
        if mode == "component":
            out[key] = np.divide(acc, got, out=np.zeros_like(acc), where=got > 0)
        else:
            out[key] = acc / np.float32(total) if total > 0 else acc
    return out
