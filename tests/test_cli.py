"""The real `fedray` command on bad input: one line on stderr, exit 2, no traceback, no run
left RUNNING in MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BAD = {
    "unknown option in a group": (["algorithm=nope"], "algorithm/nope"),
    "alpha <= 0": (["partition.alpha=0"], "partition.alpha"),
    "clients per round > clients": (["mode.clients_per_round=30"], "mode.clients_per_round"),
    "wrong type": (["mode.rounds=many"], "mode.rounds"),
    "unknown key": (["partition.alpah=1"], "partition.alpah"),
    "missing dataset path": (["data=files", "data.path=/nonexistent/train.csv"], "data.path"),
    "missing column": (
        ["data=files", "data.path={csv}", "data.text_column=body"],
        "data.text_column",
    ),
    "more clients than samples": (
        [
            "data=files",
            "data.path={csv}",
            "partition=iid",
            "partition.num_clients=40",
            "data.test_fraction=0.2",
        ],
        "partition.num_clients",
    ),
    "unknown model path": (["model.name_or_path=/nonexistent/model"], "model.name_or_path"),
    "colliding seeds": (["partition=natural", "client.seed_scheme=linear"], "client.round_stride"),
}


def _fedray(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-c",
        "from fedray.app.cli import main; main()",
        *args,
        f"hydra.run.dir={cwd}/out",
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    rows = [f"speech number {i} about kings and crowns and love,{'ab'[i % 2]}" for i in range(30)]
    path = tmp_path / "small.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_line_and_exit_2(case: str, tmp_path: Path, small_csv: Path) -> None:
    overrides, key = BAD[case]
    proc = _fedray([o.replace("{csv}", str(small_csv)) for o in overrides], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("fedray: error:")]
    assert len(errors) == 1 and key in errors[0], proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # failed before any run was opened


def test_failure_after_start_marks_the_run_failed(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    proc = _fedray(
        ["model.lora.target_modules=[nope]", "mode.rounds=1", "cluster.num_cpus=2"], tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("fedray: error:")]
    assert len(errors) == 1 and "target_modules" in errors[0], proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [experiment] = [e for e in client.search_experiments() if e.name == "fedray"]
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.slow
def test_multirun_records_one_finished_run_per_job(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from fedray.models import save_tiny_classifier

    model = save_tiny_classifier(tmp_path / "tiny")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-c",
        "from fedray.app.cli import main; main()",
        "-m",
        "partition=iid,dirichlet",
        f"model.name_or_path={model}",
        "model.lora.layers=null",
        "mode.rounds=1",
        "mode.clients_per_round=4",
        "partition.max_samples_per_client=16",
        "data.max_test=48",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("fedray")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["fedray-0", "fedray-1", "fedray-sweep"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    [parent] = [r for r in runs if r.info.run_name == "fedray-sweep"]
    runs = [r for r in runs if r is not parent]  # the jobs, nested under the sweep's run
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert {r.data.params["partition.name"] for r in runs} == {"iid", "dirichlet"}
