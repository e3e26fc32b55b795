"""A real `fedray` process killed with SIGKILL after a checkpoint, then `fedray resume RUN_ID`:
bit-identical final weights to an uninterrupted run, one MLflow run, no leftover processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from fedray.core.checkpoint import load_checkpoint
from fedray.models import save_tiny_classifier


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fedray.app.cli import main; main()", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _gone(procs: list[psutil.Process], timeout_s: float) -> list[str]:
    """Wait for `procs` to exit; the command lines of those still alive."""
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return [" ".join(p.cmdline()[:3]) for p in alive if p.is_running()]


def _run_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "round_s"))


@pytest.mark.slow
def test_killed_cli_resumes_bit_identically(tmp_path: Path) -> None:
    model = save_tiny_classifier(tmp_path / "tiny")
    args = [
        "partition=iid",
        "partition.num_clients=4",
        "partition.max_samples_per_client=16",
        "mode.clients_per_round=3",
        "mode.rounds=4",
        "mode.checkpoint_every=1",
        "mode.eval_every=2",
        "data.max_test=48",
        "data.max_length=24",
        "client.num_cpus=1",
        "client.num_actors=1",
        "cluster.num_cpus=1",
        "client.lr=5e-3",
        f"model.name_or_path={model}",
        "model.lora.layers=null",
        "faults.schedule=[3:0:delay,3:1:delay,3:2:delay,3:3:delay]",
        "faults.delay_s=4",  # round 3 is slow: the kill lands in it, after checkpoint 2
    ]
    full = subprocess.run(
        _cmd(*args, f"hydra.run.dir={tmp_path}/a"),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert full.returncode == 0, full.stderr

    proc = subprocess.Popen(
        _cmd(*args, f"hydra.run.dir={tmp_path}/b"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    info, deadline = tmp_path / "b" / "fedray_run.json", time.monotonic() + 300
    while time.monotonic() < deadline:  # until round 2 is checkpointed and logged
        ckpt = load_checkpoint(tmp_path / "b" / "checkpoint") if info.exists() else None
        if ckpt is not None and ckpt.round >= 2:
            run_id = json.loads(info.read_text())["run_id"]
            if 2 in _run_steps(client, run_id):
                break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the run did not reach its round-2 checkpoint")
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children  # Ray's local processes and the actors
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # Ray's agents notice their raylet's death by polling: on a loaded 2-core box that has taken
    # over a minute, so allow three
    assert _gone(children, timeout_s=180) == []
    assert load_checkpoint(tmp_path / "b" / "checkpoint").round == 2
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: nothing could end it

    resumed = subprocess.run(
        _cmd("resume", run_id),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr

    a = load_checkpoint(tmp_path / "a" / "checkpoint")
    b = load_checkpoint(tmp_path / "b" / "checkpoint")
    assert a.round == b.round == 4
    assert a.global_state.keys() == b.global_state.keys()
    assert all((a.global_state[k] == b.global_state[k]).all() for k in a.global_state)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _run_steps(client, run_id) == [1, 2, 3, 4]
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval_accuracy")) == [2, 4]
    full_run = json.loads((tmp_path / "a" / "fedray_run.json").read_text())["run_id"]
    final = {
        k: client.get_metric_history(r, "eval_loss")[-1].value
        for k, r in (("a", full_run), ("b", run_id))
    }
    assert final["a"] == final["b"]


def test_resume_of_an_unknown_run_id_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        _cmd("resume", "0123456789abcdef"),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("fedray: error: 0123456789abcdef: ")
    assert "run id" in line and "MLFLOW_TRACKING_URI" in line  # the store may be elsewhere
