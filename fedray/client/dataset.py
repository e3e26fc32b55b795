"""Tokenized federated data as the client actors hold it: encoded once, shared zero-copy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.data import FederatedData


@dataclass
class EncodedData:
    """Token arrays for every training row any client uses, the test rows, and who owns what."""

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    clients: list[np.ndarray]  # client id -> rows of `train`, in training order

    def client_batch(self, client_id: int) -> dict[str, np.ndarray]:
        """The arrays of one client's samples, in its training order."""
        rows = self.clients[client_id]
        return {k: v[rows] for k, v in self.train.items()}

    def num_samples(self, client_id: int) -> int:
        """How many samples a client holds."""
        return len(self.clients[client_id])


def encode_federated(data: FederatedData, tokenizer, max_length: int) -> EncodedData:
    """Tokenize the samples that some client or the test set uses, once."""
    from fedray.models import encode

    used = np.unique(np.concatenate([c for c in data.clients if len(c)] or [np.empty(0, int)]))
    row_of = np.full(len(data.corpus.texts), -1, dtype=np.int64)
    row_of[used] = np.arange(len(used))
    texts = data.corpus.texts
    task = data.corpus.task
    train = encode(tokenizer, [texts[i] for i in used], max_length, task)
    test = encode(tokenizer, [texts[i] for i in data.test_idx], max_length, task)
    if task == "classification":
        assert data.corpus.labels is not None
        train["labels"] = data.corpus.labels[used].astype(np.int64)
        test["labels"] = data.corpus.labels[data.test_idx].astype(np.int64)
    clients = [row_of[c] for c in data.clients]
    return EncodedData(train=train, test=test, clients=clients)
