"""The data types every other part of fedray reads: a corpus and its federated split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedray.core import registry
from fedray.core.errors import DataError


def needs_labels(task: str) -> bool:
    """Whether samples of `task` (a registered task name) carry class labels."""
    return bool(registry.entry("task", task).factory.needs_labels)


@dataclass
class Corpus:
    """All samples of a source, in corpus order.

    Attributes:
        texts: The input text of each sample (empty for sources without text).
        labels: int64 class index per sample (classification); None for causal_lm.
        groups: Natural owner of each sample (e.g. ``genre/play.md/SPEAKER``), or None.
        label_names: Class names, index = label; None for causal_lm.
        task: The registered task the source was read for (``data.task``).
        features: Inputs that are not text, one array (or object array) per name with one row
            per sample, e.g. ``pixels`` [N, H, W, C] uint8, ``x`` [N, d] float32, or ``user``,
            ``item``, ``rating``; the task's ``encode`` reads the names it needs.
    """

    texts: list[str]
    labels: np.ndarray | None
    groups: list[str] | None
    label_names: list[str] | None
    task: str
    features: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        if self.texts or not self.features:
            return len(self.texts)
        return len(next(iter(self.features.values())))

    def num_labels(self) -> int:
        """Number of classes (0 for causal_lm)."""
        if self.label_names is not None:
            return len(self.label_names)
        return 0 if self.labels is None or not len(self.labels) else int(self.labels.max()) + 1


@dataclass
class FederatedData:
    """A corpus, its held-out test set and the training indices of every virtual client.

    Attributes:
        corpus: The samples.
        test_idx: int64 corpus indices of the test set, in split order (see ``load_source``).
        clients: Client id -> int64 corpus indices, in the client's training order.
    """

    corpus: Corpus
    test_idx: np.ndarray
    clients: list[np.ndarray]

    def num_clients(self) -> int:
        """Number of virtual clients."""
        return len(self.clients)

    def client_sizes(self) -> np.ndarray:
        """int64 array: samples held by each client."""
        return np.array([len(c) for c in self.clients], dtype=np.int64)

    def label_histogram(self) -> np.ndarray:
        """int64 array ``[n_clients, n_labels]`` of per-client class counts."""
        labels = self.corpus.labels
        if labels is None:
            raise DataError(
                f"label_histogram needs class labels; data.task={self.corpus.task!r} has none"
            )
        n_labels = self.corpus.num_labels()
        hist = np.zeros((len(self.clients), n_labels), dtype=np.int64)
        for k, idx in enumerate(self.clients):
            hist[k] = np.bincount(labels[idx], minlength=n_labels)
        return hist

    def fingerprint(self, schedule: list[list[int]]) -> str:
        """16 hex digits identifying test set, client lists and a client schedule."""
        payload = [self.test_idx.tolist(), [c.tolist() for c in self.clients], schedule]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


class ClientBatch(dict[str, np.ndarray]):
    """One client's training arrays (a plain column dict), plus its own test rows when the data
    declares them (`own_test`, e.g. a user's held-out last rating; zero rows for a client
    without any; None when the data declares none). Personalized rules evaluate the personal
    model on `own_test`; every rule trains on the columns only."""

    def __init__(
        self, columns: dict[str, np.ndarray], own_test: dict[str, np.ndarray] | None = None
    ) -> None:
        super().__init__(columns)
        self.own_test = own_test


@dataclass
class EncodedData:
    """The arrays a task made of the federated data, as every client actor holds them.

    `train` and `test` are columns (name -> array, first dimension = rows); `clients[k]` lists
    client k's rows of `train` in its training order. `client_test[k]`, when the task sets it,
    lists the rows of `test` that belong to client k (leave-one-out test sets: each client's
    own held-out samples). Put in Ray's object store once and shared zero-copy by the actors.
    """

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    clients: list[np.ndarray]
    client_test: list[np.ndarray] | None = None

    def client_batch(self, client_id: int) -> ClientBatch:
        """The arrays of one client's samples, in its training order (and its own test rows)."""
        rows = self.clients[client_id]
        own = None
        if self.client_test is not None:  # declared: a client may still have no test row
            own = {k: v[self.client_test[client_id]] for k, v in self.test.items()}
        return ClientBatch({k: v[rows] for k, v in self.train.items()}, own)

    def num_samples(self, client_id: int) -> int:
        """How many samples a client holds."""
        return len(self.clients[client_id])
