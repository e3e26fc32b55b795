"""End to end through Hydra's composition, Ray actors, the driver and MLflow (shrunken runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fedray.app.cli import compose
from fedray.app.run import run_experiment
from fedray.models import save_tiny_causal_lm, save_tiny_classifier

SMALL = [
    "partition=iid",
    "partition.num_clients=4",
    "partition.max_samples_per_client=24",
    "mode.rounds=2",
    "mode.clients_per_round=4",
    "mode.eval_initial=true",
    "mode.eval_every=1",
    "data.max_test=96",
    "data.max_length=32",
    "client.num_cpus=1",
    "client.lr=3e-3",
]


def _tracking(tmp_path: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=e2e"]


@pytest.fixture(scope="module")
def minilm_run(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = compose([*SMALL, "client.num_actors=2", *_tracking(tmp)])
    return run_experiment(cfg, tmp / "run", cwd=tmp, out=None), tmp


def test_run_uses_two_actors_and_improves_the_global_model(minilm_run) -> None:
    result, _ = minilm_run
    assert len(result.ready.actors) == 2
    assert len({a["pid"] for a in result.ready.actors}) == 2
    assert [row["round"] for row in result.history] == [1, 2]
    assert all(row["clients_ok"] == 4 and row["clients_failed"] == 0 for row in result.history)
    assert result.history[-1]["eval_loss"] < result.initial["eval_loss"]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_mlflow_run_holds_config_metrics_and_artifacts(minilm_run) -> None:
    result, tmp = minilm_run
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["partition.num_clients"] == "4"
    assert run.data.params["algorithm.name"] == "fedavg"
    for key in (
        "eval_accuracy",
        "eval_loss",
        "train_loss",
        "round_s",
        "bytes_down",
        "bytes_up",
        "clients_ok",
        "clients_failed",
    ):
        steps = [m.step for m in client.get_metric_history(result.run_id, key)]
        assert sorted(steps) == ([0, 1, 2] if key.startswith("eval_") else [1, 2]), key
    bytes_up = client.get_metric_history(result.run_id, "bytes_up")[0].value
    # 4 clients x float32 x (LoRA r=8 on q,k,v,attn-out,ffn-in,ffn-out of layers 3-5: 165,888
    # + classifier 2,310 + pooler 147,840)
    assert bytes_up == 4 * 4 * 316_038
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "label_histogram.png", "curves.png", "model"} <= names
    assert result.ui_command.startswith("mlflow ui --backend-store-uri sqlite:///")


def test_final_adapter_loads_with_peft(minilm_run, tmp_path: Path) -> None:
    import mlflow
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from fedray.models import resolve_model_path

    result, tmp = minilm_run
    # tracking_uri per call: mlflow.set_tracking_uri would also export MLFLOW_TRACKING_URI to
    # every later test and subprocess of this session
    local = mlflow.artifacts.download_artifacts(
        run_id=result.run_id,
        artifact_path="model",
        dst_path=str(tmp_path),
        tracking_uri=f"sqlite:///{tmp}/mlflow.db",
    )
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("builtin:minilm"), num_labels=6
    )
    model = PeftModel.from_pretrained(base, local)
    assert model(input_ids=torch.tensor([[101, 2000, 102]])).logits.shape == (1, 6)


def test_logical_gpus_pin_four_actors_to_two_devices(ray_cluster, tmp_path: Path) -> None:
    model = save_tiny_classifier(tmp_path / "tiny")
    cfg = compose(
        [
            *SMALL,
            "mode.rounds=1",
            "mode.eval_initial=false",
            "client.num_cpus=0.5",
            "client.num_gpus=0.5",
            "client.device=cpu",
            f"model.name_or_path={model}",
            "model.lora.layers=null",
            "tracking=none",
        ]
    )
    result = run_experiment(cfg, tmp_path / "run", cwd=tmp_path, out=None)
    devices = sorted(a["cuda_visible_devices"] for a in result.ready.actors)
    assert devices == ["0", "0", "1", "1"]
    assert result.history[0]["clients_ok"] == 4


def test_causal_lm_on_speaking_roles(ray_cluster, tmp_path: Path) -> None:
    model = save_tiny_causal_lm(tmp_path / "gpt")
    cfg = compose(
        [
            "data=shakespeare_lm",
            "partition=natural",
            "partition.max_samples_per_client=8",
            "mode.rounds=2",
            "mode.clients_per_round=4",
            "mode.eval_initial=true",
            "data.max_test=64",
            "data.max_length=32",
            "client.num_cpus=1",
            "client.lr=1e-2",
            f"model.name_or_path={model}",
            "model.finetune=full",
            "client.seed_scheme=hash",
            "tracking=none",
        ]
    )
    result = run_experiment(cfg, tmp_path / "run", cwd=tmp_path, out=None)
    assert result.history[-1]["eval_loss"] < result.initial["eval_loss"]
    assert result.history[-1]["eval_perplexity"] > 1.0
