"""Power-of-choice with fresh losses through Ray: the probe, the cohort it yields, its bytes."""

from __future__ import annotations

from pathlib import Path

from fedray.app.cli import compose
from fedray.core import registry
from fedray.core.events import RoundEnd


def test_the_cohort_is_the_candidates_with_the_highest_fresh_loss(ray_cluster, tmp_path) -> None:
    import ray

    from fedray.app.run import prepare
    from fedray.client.actor import ActorSpec, ClientWorker
    from fedray.core.types import spec_of
    from fedray.server.driver import start

    cfg = compose(
        [
            "experiment=movielens",  # random embeddings: distinct losses from round 1
            "selection=power_of_choice",
            "selection.loss=fresh",
            "selection.d=8",
            "mode.clients_per_round=3",
            "mode.rounds=2",
            "mode.eval_every=2",
            "client.epochs=1",
            "client.num_actors=2",
            "tracking=none",
        ]
    )
    spec, data, encoded = prepare(cfg)
    sizes = data.client_sizes().tolist()
    labels = None  # ratings: no classes
    driver = start(spec, ray.put(encoded), sizes, labels, str(Path(tmp_path) / "ckpt"))
    events = [ray.get(ref) for ref in driver.run.remote()]
    rounds = [e for e in events if isinstance(e, RoundEnd)]
    assert len(rounds) == 2

    # round 1, replayed in process: the same candidates, scored on the initial global model
    replay = registry.build(
        "selection", spec.selection, num_clients=len(sizes), seed=spec.seed, client_sizes=sizes
    )
    rule = registry.build("algorithm", spec.algorithm).client_rule()
    worker = ClientWorker(ActorSpec(spec, labels, rule, len(sizes)), encoded)
    g = worker.initial_state()
    candidates = replay.candidates()
    payload = worker.pipeline.encode_down(g, spec_of(g), seed=0)
    losses = worker.probe_losses(candidates, payload, spec_of(g))
    top = sorted(sorted(candidates, key=lambda c: (-losses[c], c))[:3])
    assert rounds[0].selected == top
    assert len(set(losses.values())) == len(candidates)  # distinct: the ranking is not a tie

    model_bytes = sum(a.nbytes for a in g.values())
    for r in rounds:
        assert r.metrics["probe_clients"] == 8 and r.metrics["probe_failed"] == 0
        # 3 trained clients and 5 other candidates each received the model once
        assert r.metrics["bytes_down"] == 8 * model_bytes
        assert r.metrics["bytes_up"] == 3 * model_bytes
