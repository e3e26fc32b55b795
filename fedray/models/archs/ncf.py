"""`model.arch.name=ncf`: neural collaborative filtering (NeuMF, He et al. 2017) for ratings.

User parameters (``user_gmf``, ``user_mlp``) follow `num_users` exactly as in `mf`: with the
default 1, each client holds only its own, and FedPer's ``local_keys=[user]`` keeps them there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedray.core.registry import register
from fedray.models.archs._rating import RatingOptions

if TYPE_CHECKING:
    from fedray.core.config import ModelConfig


@dataclass
class NCFOptions(RatingOptions):
    """Options of `model.arch=ncf`."""

    name: str = "ncf"
    layers: list[int] = field(default_factory=lambda: [32, 16, 8])  # the MLP tower after [p, q]

    def check(self) -> None:
        super().check()
        if any(size < 1 for size in self.layers):
            raise ValueError(f"layers={self.layers}: every layer needs >= 1 unit")


@register("arch", "ncf", NCFOptions)
class NCFArchitecture:
    """GMF + MLP towers (:class:`fedray.models.nets.NeuralCF`)."""

    kinds = ("rating",)

    def __init__(self, options: NCFOptions | None = None) -> None:
        self.options = options or NCFOptions()

    def build(self, model: ModelConfig, kind: str, num_labels: int | None, seed: int) -> Any:
        import torch

        from fedray.models.nets import NeuralCF

        o = self.options
        torch.manual_seed(seed)
        return NeuralCF(o.num_users, o.num_items, o.dim, list(o.layers), o.init_std, o.mean, o.l2)
