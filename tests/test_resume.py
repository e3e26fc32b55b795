"""Checkpoint and resume: a run continued from its checkpoint matches an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from fedray.app.cli import compose
from fedray.app.run import run_experiment
from fedray.core.checkpoint import load_checkpoint
from fedray.models import save_tiny_classifier


def test_resumed_run_matches_uninterrupted_run(ray_cluster, tmp_path: Path) -> None:
    model = save_tiny_classifier(tmp_path / "tiny")
    base = [
        "partition.num_clients=6",
        "partition.max_samples_per_client=16",
        "mode.clients_per_round=3",
        "mode.checkpoint_every=1",
        "data.max_test=48",
        "data.max_length=24",
        "client.num_cpus=1",
        "client.lr=5e-3",
        f"model.name_or_path={model}",
        "model.lora.layers=null",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    ]
    full = run_experiment(compose([*base, "mode.rounds=3"]), tmp_path / "a", cwd=tmp_path, out=None)
    first = run_experiment(
        compose([*base, "mode.rounds=2"]), tmp_path / "b", cwd=tmp_path, out=None
    )
    assert load_checkpoint(tmp_path / "b" / "checkpoint").round == 2
    rest = run_experiment(
        compose([*base, "mode.rounds=3"]),
        tmp_path / "b",
        cwd=tmp_path,
        out=None,
        resume_run_id=first.run_id,
    )
    assert [r["round"] for r in rest.history] == [3]
    assert rest.history[0]["eval_loss"] == full.history[-1]["eval_loss"]
    assert rest.history[0]["train_loss"] == full.history[-1]["train_loss"]
    a = load_checkpoint(tmp_path / "a" / "checkpoint").global_state
    b = load_checkpoint(tmp_path / "b" / "checkpoint").global_state
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    steps = [m.step for m in client.get_metric_history(first.run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3]
    assert client.get_run(first.run_id).info.status == "FINISHED"
