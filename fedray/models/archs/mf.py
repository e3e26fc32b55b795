"""`model.arch.name=mf`: biased matrix factorisation for explicit ratings.

With ``num_users=1`` (the default) each client's model holds one user vector and bias, its
own: under ``algorithm=fedper 'algorithm.local_keys=[user]'`` they never leave the client while
the item embeddings and biases and the global offset are federated; under FedAvg-like
algorithms the single user vector is averaged too (one global "average user"). With
``num_users=N`` the model holds a table of N users indexed by user id (central training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedray.core.registry import register
from fedray.models.archs._rating import RatingOptions

if TYPE_CHECKING:
    from fedray.core.config import ModelConfig


@dataclass
class MFOptions(RatingOptions):
    """Options of `model.arch=mf`."""

    name: str = "mf"


@register("arch", "mf", MFOptions)
class MFArchitecture:
    """``offset + b_u + b_i + <p_u, q_i>`` (:class:`fedray.models.nets.MatrixFactorization`)."""

    kinds = ("rating",)

    def __init__(self, options: MFOptions | None = None) -> None:
        self.options = options or MFOptions()

    def build(self, model: ModelConfig, kind: str, num_labels: int | None, seed: int) -> Any:
        import torch

        from fedray.models.nets import MatrixFactorization

        o = self.options
        torch.manual_seed(seed)
        return MatrixFactorization(o.num_users, o.num_items, o.dim, o.init_std, o.mean, o.l2)
