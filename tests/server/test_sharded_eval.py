"""Evaluation sharded over the client actors: same metrics for any actor count; lost actors."""

from __future__ import annotations

import itertools
import os

from fedray.app.cli import compose
from fedray.app.run import run_experiment
from fedray.models import save_tiny_classifier
from fedray.server.pool import ActorPool


def _shard_worker() -> type:
    """Defined in a function so Ray ships the class by value (workers cannot import tests/)."""

    class ShardWorker:
        def __init__(self, doomed: bool) -> None:
            self.doomed = doomed

        def ready(self) -> dict:
            return {}

        def shard(self, tag: str, i: int, n: int) -> tuple[str, int, int]:
            if self.doomed and tag == "y":
                os._exit(1)  # the process dies mid-call
            return tag, i, n

    return ShardWorker


def test_each_gives_every_actor_its_share_and_replaces_a_dead_one(ray_cluster) -> None:
    cls = ray_cluster.remote(_shard_worker()).options(num_cpus=0)
    made = itertools.count()
    pool = ActorPool(lambda _: cls.remote(next(made) == 1), 3)  # the second actor dies on "y"
    try:
        assert pool.each("shard", "x") == [("x", 0, 3), ("x", 1, 3), ("x", 2, 3)]
        assert pool.each("shard", "y") == [("y", 0, 3), ("y", 1, 3), ("y", 2, 3)]
        assert pool.replaced == 1
    finally:
        pool.shutdown()


def test_metrics_do_not_depend_on_the_number_of_actors(ray_cluster, tmp_path) -> None:
    model = save_tiny_classifier(tmp_path / "tiny")
    base = [
        "partition=iid",
        "partition.num_clients=6",
        "partition.max_samples_per_client=12",
        "mode.rounds=1",
        "mode.clients_per_round=6",
        "mode.eval_initial=true",
        "mode.eval_every=1",
        "data.max_test=45",
        "data.max_length=24",
        "client.eval_batch_size=8",  # 6 batches, the last short; 3 actors score 2 each
        "client.num_cpus=0.5",
        "client.torch_threads=1",
        f"model.name_or_path={model}",
        "model.lora.layers=null",
        "tracking=none",
    ]
    runs = {
        k: run_experiment(
            compose([*base, f"client.num_actors={k}"]), tmp_path / f"run{k}", cwd=tmp_path, out=None
        )
        for k in (1, 3)
    }
    one, three = runs[1], runs[3]
    assert three.ready is not None and len(three.ready.actors) == 3
    assert one.initial == three.initial
    keys = ("train_loss", "eval_loss", "eval_accuracy")
    assert [[r[k] for k in keys] for r in one.history] == [
        [r[k] for k in keys] for r in three.history
    ]
    assert one.history[-1]["eval_loss"] != one.initial["eval_loss"]  # the model did change
