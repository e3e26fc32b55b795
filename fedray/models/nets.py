"""Small torch models built from scratch: logistic regression and two rating models.

Loaded only where a model is built (client actors, tests): it imports torch. The rating models
name every user parameter ``user*`` (and no other parameter contains ``user``): FedPer's
``local_keys=[user]`` keeps exactly those on their client.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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


def _rows_l2(tables: list[nn.Embedding], index: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the batch of the summed squares of the rows each sample looks up.

    Reads the rows with ``F.embedding`` rather than calling the tables, so that forward hooks
    counting lookups (``client.embedding_rows=lookups``) see each rating once, from the forward.
    """
    total = sum(
        F.embedding(i, table.weight).square().sum(-1)
        for table, i in zip(tables, index, strict=True)
    )
    return total.mean()  # type: ignore[union-attr]


class MatrixFactorization(nn.Module):
    """Biased MF (Koren et al. 2009): ``offset + b_u + b_i + <p_u, q_i>``.

    Parameters: ``user`` (p) and ``user_bias`` (b_u) [users, ...], ``item`` (q) and
    ``item_bias`` (b_i) [items, ...], ``offset`` (a learned global mean, starting at `mean`).
    :meth:`penalty` is Koren's per-rating regularizer ``l2 * (|p_u|² + |q_i|² + b_u² + b_i²)``.
    """

    def __init__(
        self, users: int, items: int, dim: int, std: float, mean: float, l2: float = 0.0
    ) -> None:
        super().__init__()
        self.user, self.user_bias = _embedding(users, dim, std), _bias(users)
        self.item, self.item_bias = _embedding(items, dim, std), _bias(items)
        self.offset = nn.Parameter(torch.tensor([float(mean)]))
        self.l2 = float(l2)

    def penalty(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """``l2`` times the batch mean of the squared rows the ratings look up.

        A sum over ratings, so a client's share of it is the share its ratings carry: the
        federated objective is the central one, whatever the split (weight decay, applied to
        every row at every optimizer step, is not: it scales with the number of steps).
        """
        tables = [self.user, self.item, self.user_bias, self.item_bias]
        return self.l2 * _rows_l2(tables, [user, item, user, item])

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
        self,
        users: int,
        items: int,
        dim: int,
        layers: list[int],
        std: float,
        mean: float,
        l2: float = 0.0,
    ) -> None:
        super().__init__()
        self.l2 = float(l2)
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

    def penalty(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """``l2`` times the batch mean of the squared embedding rows the ratings look up."""
        tables = [self.user_gmf, self.user_mlp, self.item_gmf, self.item_mlp]
        return self.l2 * _rows_l2(tables, [user, user, item, item])
