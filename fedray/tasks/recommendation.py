"""`data.task=recommendation`: explicit ratings; RMSE, and HR@10 / NDCG@10 on leave-one-out.

Samples are (user, item, rating) triples (``features`` ``user``, ``item``: dense ids from 0,
``rating``). The model (``model.arch=mf`` or ``ncf``) predicts a rating and is trained on the
squared error. Evaluation follows the leave-one-out protocol of He et al. (2017): the test set is
each user's held-out (latest) rating; RMSE is over those ratings, and the held-out item is ranked
among :data:`NEGATIVES` items the user never rated, sampled once per user (seeded by the user
id alone, so every run, seed and algorithm ranks against the same candidates). HR@10 is the
share of test items ranked in the top 10, NDCG@10 = 1 / log2(rank + 2) for those (rank from 0);
a tie counts against the test item.

Each client's own test rows (its users' held-out ratings) are declared to the client
(``EncodedData.client_test``): personalized algorithms (``fedper``, ``ditto``) evaluate their
personal models on them (``eval_personal_rmse``, ``eval_personal_hr10``, ...).

With ``model.arch.num_users=1`` every sample's user is row 0: the client's own user vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.config import ModelConfig
from fedray.core.errors import DataError, ModelError
from fedray.core.registry import register
from fedray.data.base import EncodedData, FederatedData
from fedray.tasks.base import Batch, Objective, client_rows

NEGATIVES = 100  # He et al. (2017) rank the held-out item among 100 unrated items
TOP_K = 10
_STREAM = 0x4E6A7  # the negatives' generator: (stream, user id)


@dataclass
class RecommendationOptions:
    """Options of `data.task=recommendation`: none."""

    name: str = "recommendation"


def sample_negatives(
    user: np.ndarray, item: np.ndarray, test_users: np.ndarray, items: int
) -> np.ndarray:
    """[len(test_users), NEGATIVES] items each test user never rated (any split), without
    replacement while the user has that many unrated items (with replacement otherwise)."""
    rated = np.zeros((int(user.max()) + 1, items), dtype=bool)
    rated[user, item] = True
    out = np.empty((len(test_users), NEGATIVES), dtype=np.int64)
    for row, u in enumerate(test_users):
        pool = np.flatnonzero(~rated[u])
        if not len(pool):
            raise DataError(f"user {u} rated every item; no negative item to rank against")
        rng = np.random.default_rng([_STREAM, int(u)])
        out[row] = rng.choice(pool, NEGATIVES, replace=len(pool) < NEGATIVES)
    return out


@register("task", "recommendation", RecommendationOptions)
class Recommendation:
    """Rating prediction and top-10 ranking with a rating model (`mf`, `ncf`)."""

    objective = Objective("rmse", "minimize")
    display = ("rmse", "hr10", "ndcg10")
    needs_labels = False
    model_kind = "rating"
    per_sample_loss = False  # a mean of per-rating errors, but no sample_losses yet

    def __init__(self, options: RecommendationOptions | None = None) -> None:
        self.options = options or RecommendationOptions()

    def encode(self, data: FederatedData, model: ModelConfig, max_length: int) -> EncodedData:
        feats = data.corpus.features
        if not {"user", "item", "rating"} <= set(feats):
            raise DataError(
                "data.task=recommendation needs user, item and rating per sample; data.name "
                f"gives {sorted(feats) or 'text'} (use data=movielens)"
            )
        user = np.asarray(feats["user"], dtype=np.int64)
        item = np.asarray(feats["item"], dtype=np.int64)
        rating = np.asarray(feats["rating"], dtype=np.float32)
        arch = model.architecture
        items, users = int(item.max()) + 1, int(user.max()) + 1
        if items > arch.num_items:
            raise ModelError(
                f"model.arch.num_items={arch.num_items} but the data has {items} items; "
                f"set model.arch.num_items={items}"
            )
        if arch.num_users > 1 and users > arch.num_users:
            raise ModelError(
                f"model.arch.num_users={arch.num_users} but the data has {users} users; set it "
                f"to {users} (a user table) or 1 (each client holds its own user vector)"
            )
        model_user = user if arch.num_users > 1 else np.zeros_like(user)
        used, clients = client_rows(data)
        test = data.test_idx
        train_cols = {"user": model_user[used], "item": item[used], "rating": rating[used]}
        test_cols = {
            "user": model_user[test],
            "item": item[test],
            "rating": rating[test],
            "negatives": sample_negatives(user, item, user[test], items),
        }
        by_user: dict[int, list[int]] = {}
        for row, u in enumerate(user[test].tolist()):
            by_user.setdefault(u, []).append(row)
        client_test = [
            np.array(
                sorted(r for u in np.unique(user[c]).tolist() for r in by_user.get(u, [])),
                dtype=np.int64,
            )
            for c in data.clients
        ]
        return EncodedData(train_cols, test_cols, clients, client_test)

    def build_model(self, model: ModelConfig, num_labels: int | None, seed: int) -> Any:
        from fedray.models import build_model

        return build_model(model, self.model_kind, num_labels, seed)

    def loss(self, model: Any, batch: Batch) -> Any:
        import torch.nn.functional as F

        user, item = batch["user"], batch["item"]
        loss = F.mse_loss(model(user, item), batch["rating"])
        if getattr(model, "l2", 0.0):  # the rating models' per-rating L2 (model.arch.l2)
            loss = loss + model.penalty(user, item)
        return loss

    def eval_batch(self, model: Any, batch: Batch) -> dict[str, float]:
        import torch

        user, item = batch["user"], batch["item"]
        pred = model(user, item).float()
        sums = {
            "se_sum": float(((pred - batch["rating"]) ** 2).sum()),
            "count": float(len(pred)),
        }
        if "negatives" in batch:  # leave-one-out rows: rank the item among the negatives
            negatives = batch["negatives"]
            scores = model(user[:, None].expand_as(negatives), negatives).float()
            rank = (scores >= pred[:, None]).sum(-1)  # ties count against the test item
            hit = rank < TOP_K
            sums["hits"] = float(hit.sum())
            sums["ndcg_sum"] = float((hit / torch.log2(rank.float() + 2)).sum())
            sums["ranked"] = float(len(pred))
        return sums

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        count = max(totals.get("count", 0), 1)
        mse = totals.get("se_sum", 0.0) / count
        out = {"rmse": math.sqrt(mse), "loss": mse}
        if totals.get("ranked"):
            out["hr10"] = totals["hits"] / totals["ranked"]
            out["ndcg10"] = totals["ndcg_sum"] / totals["ranked"]
        return out
