"""Fault injection through Ray: a seeded schedule, and an actor killed from outside mid-round.

Every count is known in advance: which client fails in which round, how often, and how.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fedray.app.cli import compose
from fedray.app.run import run_experiment
from fedray.core.events import Done, RoundEnd
from fedray.models import save_tiny_classifier


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny"))


def _base(model: str, tmp_path: Path) -> list[str]:
    return [
        "partition=iid",
        "partition.num_clients=4",
        "partition.max_samples_per_client=16",
        "mode.clients_per_round=4",  # every client every round: the schedule is exact
        "mode.eval_every=1",
        "data.max_test=48",
        "data.max_length=24",
        "client.num_cpus=1",
        "client.num_actors=2",  # clients 0, 2 on actor 0 and 1, 3 on actor 1 (least loaded first)
        "client.lr=5e-3",
        f"model.name_or_path={model}",
        "model.lora.layers=null",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    ]


COLS = ("clients_ok", "clients_failed", "client_errors", "retries", "calls_lost", "round_skipped")


@pytest.mark.slow  # a 20 s hang-until-timeout by design
def test_seeded_fault_schedule_gives_exact_counts(ray_cluster, tiny_model, tmp_path) -> None:
    schedule = [
        "1:0:raise",  # retried, succeeds
        "2:2:die",  # actor 0's second call: SIGKILLs itself; replaced; retried, succeeds
        "2:3:hang",  # actor 1's second call: times out; actor 1 replaced; retried, succeeds
        "3:2:raise:2",  # fails its retry too
        "3:3:raise:2",  # ... so round 3 has 2 valid updates < min_clients=3: skipped
    ]
    cfg = compose(
        [
            *_base(tiny_model, tmp_path),
            "mode.rounds=3",
            "mode.max_retries=1",
            "mode.min_clients=3",
            "mode.on_quorum_loss=skip",
            "mode.client_timeout_s=20",
            "faults.hang_s=120",
            f"faults.schedule=[{','.join(schedule)}]",
        ]
    )
    result = run_experiment(cfg, tmp_path / "run", cwd=tmp_path, out=None)
    got = [tuple(int(row[k]) for k in COLS) for row in result.history]
    assert got == [(4, 0, 1, 1, 0, 0), (4, 0, 2, 2, 1, 0), (0, 4, 4, 2, 0, 1)]
    rounds_completed = len(result.history)
    updates_aggregated = sum(row["clients_ok"] for row in result.history)
    failures_recorded = sum(row["client_errors"] for row in result.history)
    assert (rounds_completed, updates_aggregated, failures_recorded) == (3, 8, 7)
    # a skipped round leaves the global model as it was
    assert result.history[2]["eval_loss"] == result.history[1]["eval_loss"]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(result.run_id).info.status == "FINISHED"
    recorded = {}
    for rnd in (1, 2, 3):
        path = client.download_artifacts(result.run_id, f"failures/round_{rnd:04d}.json", tmp_path)
        recorded[rnd] = [(f["client_id"], f["error"]) for f in json.loads(Path(path).read_text())]
    assert [cid for cid, _ in recorded[1]] == [0]
    assert "InjectedFault: injected fault: client 0 in round 1 (attempt 1)" in recorded[1][0][1]
    assert [cid for cid, _ in recorded[2]] == [2, 3]
    assert recorded[2][0][1].startswith("actor lost: ")
    assert recorded[2][1][1] == "timeout after 20 s (attempt 1)"
    # failed attempts in the order they happened (a failure is retried at once)
    assert sorted(cid for cid, _ in recorded[3]) == [2, 2, 3, 3]
    for cid in (2, 3):
        errors = [err for c, err in recorded[3] if c == cid]
        assert "(attempt 1)" in errors[0] and "(attempt 2)" in errors[1]


def test_actor_killed_from_outside_mid_round(ray_cluster, tiny_model, tmp_path) -> None:
    """SIGKILL one client actor's process while it trains; NaN attacker rejected throughout."""
    import ray

    from fedray.app.run import prepare
    from fedray.client.attack import attack_config, attackers
    from fedray.server.driver import start

    cfg = compose(
        [
            *_base(tiny_model, tmp_path),
            "mode.rounds=2",
            "mode.max_retries=1",
            "faults.schedule=[1:0:delay,1:1:delay,1:2:delay,1:3:delay]",
            "faults.delay_s=8",  # every round-1 call sleeps first: the kill lands mid-call
            "mode.checkpoint_every=1",
            "attack=nans",
            "attack.fraction=0.25",  # one of the 4 clients sends NaN every round
            "tracking=none",
        ]
    )
    [nan_client] = attackers(attack_config(cfg.attack), 4, cfg.seed)
    spec, data, encoded = prepare(cfg)
    labels = len(data.corpus.label_names)
    sizes = data.client_sizes().tolist()
    driver = start(spec, ray.put(encoded), sizes, labels, str(tmp_path / "ckpt"))
    events = driver.run.remote()
    ready = ray.get(next(events))
    victim = ready.actors[0]["pid"]
    time.sleep(1.5)
    os.kill(victim, signal.SIGKILL)
    rest = [ray.get(ref) for ref in events]
    rounds = [e for e in rest if isinstance(e, RoundEnd)]
    got = [(*(int(e.metrics[k]) for k in COLS), e.metrics["updates_rejected"]) for e in rounds]
    # round 1: actor 0's two calls (clients 0 and 2) lost and retried; the NaN client rejected
    assert got == [(3, 1, 2, 2, 2, 0, 1), (3, 1, 0, 0, 0, 0, 1)]
    lost = [f.client_id for f in rounds[0].failures if f.error.startswith("actor lost")]
    assert lost == [0, 2]
    assert all("NaN or Inf" in f.error for f in rounds[1].failures if f.client_id == nan_client)
    assert isinstance(rest[-1], Done) and rest[-1].actors_replaced == 1
    from fedray.core.checkpoint import load_checkpoint

    final = load_checkpoint(tmp_path / "ckpt")
    assert final.round == 2
    assert all(np.isfinite(a).all() for a in final.global_state.values())
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)
