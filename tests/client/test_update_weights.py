"""What the client actor sends for aggregation: the embedding rows it looked up
(`client.embedding_rows=lookups`) and the update's weight (samples, or 1 when the selector
draws by size). In process, through the actor's own code."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.app.cli import compose
from fedray.app.run import prepare
from fedray.client.actor import ActorSpec, ClientWorker
from fedray.core import registry
from fedray.core.types import TrainJob, spec_of

CLIENT = 3


def _worker(overrides: list[str]) -> tuple[ClientWorker, object]:
    spec, data, encoded = prepare(compose([*overrides, "tracking=none", "client.num_cpus=1"]))
    rule = registry.build("algorithm", spec.algorithm).client_rule()
    labels = data.corpus.label_names
    population = len(data.client_sizes())
    worker = ClientWorker(
        ActorSpec(spec, len(labels) if labels else None, rule, population), encoded
    )
    return worker, encoded


def _train(worker: ClientWorker):
    g = worker.initial_state()
    spec = spec_of(g)
    payload = worker.pipeline.encode_down(g, spec, seed=7)
    job = TrainJob(round=1, client_id=CLIENT, seed=11, attempt=0, spec=spec)
    return worker.train(job, payload)


@pytest.mark.parametrize("rows", ["samples", "lookups"])
def test_a_client_sends_the_rows_it_looked_up_and_counts_their_bytes(rows: str) -> None:
    worker, encoded = _worker(
        ["experiment=movielens", "client.epochs=2", f"client.embedding_rows={rows}"]
    )
    update = _train(worker)
    payload_bytes = int(update.payload.nbytes)
    if rows == "samples":
        assert update.row_counts is None and update.nbytes_up == payload_bytes
        return
    items = encoded.train["item"][encoded.clients[CLIENT]]
    got, counts = update.row_counts["item.weight"]
    want, want_counts = np.unique(items, return_counts=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(counts, 2 * want_counts)  # two epochs, every sample once each
    assert "user.weight" in update.row_counts
    extra = sum(r.nbytes + c.nbytes for r, c in update.row_counts.values())
    assert update.nbytes_up == payload_bytes + extra


@pytest.mark.parametrize(("weights", "equal"), [("equal", True), ("samples", False)])
def test_power_of_choice_asks_for_equal_update_weights(weights: str, equal: bool) -> None:
    worker, encoded = _worker(
        [
            "experiment=synthetic",
            "selection=power_of_choice",
            f"selection.weights={weights}",
            "client.max_steps=1",
        ]
    )
    update = _train(worker)
    samples = len(encoded.clients[CLIENT])
    assert samples > 1
    assert update.num_samples == (1 if equal else samples)


def test_a_probe_scores_the_broadcast_model_on_each_clients_own_samples() -> None:
    worker, encoded = _worker(
        ["experiment=synthetic", "selection=power_of_choice", "selection.loss=fresh"]
    )
    g = worker.initial_state()
    g = {k: v + np.float32(0.3) for k, v in g.items()}  # not the model the actor holds
    spec = spec_of(g)
    losses = worker.probe_losses([2, 5], worker.pipeline.encode_down(g, spec, seed=7), spec)
    for cid in (2, 5):
        rows = encoded.clients[cid]
        x, y = encoded.train["x"][rows], encoded.train["labels"][rows]
        logits = x @ g["linear.weight"].T.astype(np.float64) + g["linear.bias"]
        logits -= logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        assert losses[cid] == pytest.approx(-log_p[np.arange(len(y)), y].mean(), rel=1e-5)
