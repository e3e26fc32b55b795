"""Small torch models built from scratch: logistic regression and two rating models.

Loaded only where a model is built (client actors, tests): it imports torch. The rating models
name every user parameter ``user*`` (and no other parameter contains ``user``): FedPer's
``local_keys=[user]`` keeps exactly those on their client.
"""

from __future__ import annotations

import torch
from torch import nn


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: ``forward(x) -> logits`` through one ``linear`` layer."""

    def __init__(self, in_features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _embedding(rows: int, dim: int, std: float) -> nn.Embedding:
    table = nn.Embedding(rows, dim)
    nn.init.normal_(table.weight, std=std)
    return table


def _bias(rows: int) -> nn.Embedding:
    table = nn.Embedding(rows, 1)
    nn.init.zeros_(table.weight)
    return table


class MatrixFactorization(nn.Module):
    """Biased MF (Koren et al. 2009): ``offset + b_u + b_i + <p_u, q_i>``.

    Parameters: ``user`` (p) and ``user_bias`` (b_u) [users, ...], ``item`` (q) and
    ``item_bias`` (b_i) [items, ...], ``offset`` (a learned global mean, starting at `mean`).
    """

    def __init__(self, users: int, items: int, dim: int, std: float, mean: float) -> None:
        super().__init__()
        self.user, self.user_bias = _embedding(users, dim, std), _bias(users)
        self.item, self.item_bias = _embedding(items, dim, std), _bias(items)
        self.offset = nn.Parameter(torch.tensor([float(mean)]))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        dot = (self.user(user) * self.item(item)).sum(-1)
        return self.offset + self.user_bias(user)[..., 0] + self.item_bias(item)[..., 0] + dot


class NeuralCF(nn.Module):
    """NeuMF (He et al. 2017) for explicit ratings: a GMF branch ``p_u * q_i`` and an MLP over
    ``[p'_u, q'_i]``, concatenated into one linear output, plus a learned ``offset``.

    User parameters: ``user_gmf``, ``user_mlp``; item parameters: ``item_gmf``, ``item_mlp``;
    shared layers: ``mlp``, ``out``.
    """

    def __init__(
        self, users: int, items: int, dim: int, layers: list[int], std: float, mean: float
    ) -> None:
        super().__init__()
        self.user_gmf, self.item_gmf = _embedding(users, dim, std), _embedding(items, dim, std)
        self.user_mlp, self.item_mlp = _embedding(users, dim, std), _embedding(items, dim, std)
        blocks: list[nn.Module] = []
        width = 2 * dim
        for size in layers:
            blocks += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*blocks)
        self.out = nn.Linear(dim + width, 1)
        self.offset = nn.Parameter(torch.tensor([float(mean)]))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        gmf = self.user_gmf(user) * self.item_gmf(item)
        mlp = self.mlp(torch.cat([self.user_mlp(user), self.item_mlp(item)], dim=-1))
        return self.offset + self.out(torch.cat([gmf, mlp], dim=-1))[..., 0]
