"""mode=async end to end (Hydra, Ray actors, MLflow) with simulated stragglers, and its resume."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from fedray.app.cli import compose
from fedray.app.run import run_experiment
from fedray.core.checkpoint import load_checkpoint
from fedray.models import save_tiny_classifier


def test_async_run_with_stragglers_accounts_every_update_and_resumes(
    ray_cluster, tmp_path: Path
) -> None:
    model = save_tiny_classifier(tmp_path / "tiny")
    base = [
        "mode=async",
        "algorithm=fedasync",
        "partition=iid",
        "partition.num_clients=6",
        "partition.max_samples_per_client=16",
        "mode.clients_per_round=3",
        "mode.max_concurrency=2",
        "mode.checkpoint_every=1",
        "mode.eval_every=1",
        "speed.kind=slow_fraction",
        "speed.slow_fraction=0.34",  # 2 of 6 clients
        "speed.slowdown=5",
        "data.max_test=48",
        "data.max_length=24",
        "client.num_cpus=1",
        "client.num_actors=2",
        "client.lr=5e-3",
        f"model.name_or_path={model}",
        "model.lora.layers=null",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        "tracking.log_model=false",
    ]
    first = run_experiment(
        compose([*base, "mode.rounds=2"]), tmp_path / "run", cwd=tmp_path, out=None
    )
    assert [r["round"] for r in first.history] == [1, 2]
    for row in first.history:
        assert row["clients"] == 3 and row["clients_failed"] == 0
        assert row["updates_applied"] + row["updates_dropped"] == 3  # fedasync never buffers
        assert (
            sum(v for k, v in row.items() if k.startswith("staleness_") and k[10:].isdigit()) == 3
        )
        assert "eval_accuracy" in row
    assert first.history[-1]["global_version"] == first.history[-1]["updates_total_applied"]
    assert sum(r["client_delay_s"] for r in first.history) > 0  # a straggler was trained
    saved = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert saved.round == 2 and saved.loop["arrived"] == 6
    assert saved.loop["version"] == first.history[-1]["global_version"]

    rest = run_experiment(
        compose([*base, "mode.rounds=3"]),
        tmp_path / "run",
        cwd=tmp_path,
        out=None,
        resume_run_id=first.run_id,
    )
    assert [r["round"] for r in rest.history] == [3]
    assert rest.history[0]["clients"] == 3
    final = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert final.round == 3 and final.loop["arrived"] == 9
    assert final.loop["version"] == rest.history[0]["global_version"]
    assert final.loop["queue"] == []  # nothing in flight or queued at the end of the budget

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for key in ("global_version", "updates_applied", "updates_dropped", "staleness_mean", "wall_s"):
        steps = [m.step for m in client.get_metric_history(first.run_id, key)]
        assert sorted(steps) == [1, 2, 3], key
    assert client.get_run(first.run_id).info.status == "FINISHED"
