"""Embedding-row lookups during local training, for `client.embedding_rows=lookups`.

A client whose data touches only a few rows of a large embedding table (a user's rated items
in a recommender) changes only those rows. Sample-weighted FedAvg then averages each row over
the whole cohort, most of whom did not touch it, so a row moves by a small fraction of one
client's step per round. With ``lookups`` the client counts, per row of every trainable
:class:`torch.nn.Embedding`, how often its training forward passes looked the row up; the
server averages each row over the clients that looked it up, weighted by those counts
(:func:`fedray.core.statemath.mean_of`). The counts travel beside the update as
(rows, counts) pairs and count towards its bytes. They say which rows a client used, which the
non-zero rows of a sparse update say too; no privacy mechanism runs with them (refused at
config time).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from fedray.core.types import RowCounts
from fedray.models.state import state_keys


class Lookups:
    """Running per-row lookup counts of a model's trainable embedding tables."""

    def __init__(self) -> None:
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, key: str, rows: int, ids: torch.Tensor) -> None:
        counts = torch.bincount(ids.reshape(-1).to("cpu", torch.int64), minlength=rows)
        if key in self.counts:
            self.counts[key] += counts
        else:
            self.counts[key] = counts

    def sparse(self) -> RowCounts:
        """{state key: (rows looked up, int64 ascending; their counts, float32)}."""
        out: RowCounts = {}
        for key, counts in self.counts.items():
            rows = torch.nonzero(counts).reshape(-1)
            out[key] = (rows.numpy().astype(np.int64), counts[rows].numpy().astype(np.float32))
        return out


def trainable_embeddings(model: torch.nn.Module) -> dict[str, torch.nn.Embedding]:
    """{state key of the weight: module} for every embedding whose weight is trained and sent."""
    keys = state_keys(model)
    return {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Embedding)
        and module.weight.requires_grad
        and f"{name}.weight" in keys
    }


@contextmanager
def count_lookups(model: torch.nn.Module, enabled: bool = True) -> Iterator[Lookups | None]:
    """Within the block, count the rows that training-mode forward passes of `model`'s
    trainable embeddings look up (evaluation passes do not count); None when not `enabled`."""
    if not enabled:
        yield None
        return
    lookups = Lookups()
    handles = []
    for key, module in trainable_embeddings(model).items():

        def hook(mod: torch.nn.Module, args: tuple, output: torch.Tensor, key: str = key) -> None:
            if mod.training:
                lookups.add(key, mod.num_embeddings, args[0])

        handles.append(module.register_forward_hook(hook))
    try:
        yield lookups
    finally:
        for handle in handles:
            handle.remove()
