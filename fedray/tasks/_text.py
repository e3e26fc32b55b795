"""What the text tasks share: tokenizing a federated corpus and loading a Hugging Face model."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedray.core.config import ModelConfig
from fedray.data.base import EncodedData, FederatedData


def encode_text(
    data: FederatedData, model: ModelConfig, max_length: int, *, labels: bool
) -> EncodedData:
    """Tokenize the samples that some client or the test set uses, once.

    Columns: ``input_ids`` and ``attention_mask`` ([N, max_length] int64, padded and
    truncated), plus ``labels`` (int64 class index) when `labels`.
    """
    from fedray.models import encode, load_tokenizer

    tokenizer = load_tokenizer(model)
    used = np.unique(np.concatenate([c for c in data.clients if len(c)] or [np.empty(0, int)]))
    row_of = np.full(len(data.corpus.texts), -1, dtype=np.int64)
    row_of[used] = np.arange(len(used))
    texts = data.corpus.texts
    train = encode(tokenizer, [texts[i] for i in used], max_length)
    test = encode(tokenizer, [texts[i] for i in data.test_idx], max_length)
    if labels:
        assert data.corpus.labels is not None
        train["labels"] = data.corpus.labels[used].astype(np.int64)
        test["labels"] = data.corpus.labels[data.test_idx].astype(np.int64)
    return EncodedData(train=train, test=test, clients=[row_of[c] for c in data.clients])


def token_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The model inputs of a tokenized batch."""
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
