"""MLflow tracking against a local sqlite store under tmp_path, and against a real mlflow server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fedray.core.config import FedrayConfig, TrackingConfig
from fedray.tracking import tracker as tracking
from fedray.tracking.plots import curve_figure, label_histogram_figure
from fedray.tracking.tracker import Tracker, default_tracking_uri, flatten_config


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One working directory (and sqlite store) shared by this module's tests: init costs ~3 s."""
    return tmp_path_factory.mktemp("mlflow-cwd")


def _tracker(cwd: Path, **overrides: object) -> Tracker:
    return Tracker(TrackingConfig(**overrides), cwd)


def _run_cfg():
    cfg = OmegaConf.structured(FedrayConfig)
    OmegaConf.set_struct(cfg, False)
    cfg.algorithm = {"name": "fedavg", "server_lr": 1.0}
    cfg.selection = {"name": "uniform"}
    cfg.compression = {"name": "none"}
    cfg.privacy = {"name": "none", "note": "x" * 7000}
    cfg.name = "run-${partition.alpha}"
    cfg.extra = {f"k{i:03d}": i for i in range(150)}  # > 100 params in total: several batches
    return cfg


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def _figure():
    hist = np.array([[3, 0, 1], [0, 5, 2]])
    return label_histogram_figure(hist, ["neg", "neu", "pos"])


def test_default_uri_is_sqlite_under_cwd(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert uri.startswith("sqlite:////")
    t = _tracker(tmp_path)
    assert t.uri == uri
    assert t.ui_command() == f"mlflow ui --backend-store-uri {uri}"
    assert _tracker(tmp_path, uri="http://h:5000").ui_command() == "http://h:5000"


def test_flatten_config() -> None:
    flat = flatten_config(OmegaConf.create({"a": {"b": 0.5, "c": [1, "x"], "d": None}, "e": True}))
    assert flat == {"a.b": "0.5", "a.c": '[1, "x"]', "a.d": "null", "e": "true"}


def test_full_run_reads_back(store: Path) -> None:
    cfg = _run_cfg()
    with _tracker(store, experiment="full") as t:
        run_id = t.start("full-run", tags={"sweep": "s1"})
        assert run_id is not None and t.run_id == run_id
        t.log_config(cfg)
        for step in range(3):
            t.log_metrics(
                {
                    "accuracy": 0.5 + step / 10,
                    "bytes_up": np.int64(step * 1000),
                    "loss": np.float32(0.25),
                    "note": "x",
                    "eps": None,
                },
                step=step,
            )
        t.log_figure(_figure(), "plots/label_histogram.png")
        t.log_files({"adapter/adapter_config.json": b"{}", "adapter/w.bin": b"\x00" * 8}, "model")
        t.log_text("hello", "notes/readme.txt")

    client = MlflowClient(tracking_uri=default_tracking_uri(store))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    assert run.info.run_name == "full-run"
    assert run.info.artifact_uri.startswith((store / "mlartifacts").resolve().as_uri())
    params = run.data.params
    assert params["partition.alpha"] == "0.5"
    assert params["model.lora.target_modules"] == '["query", "value"]'
    assert params["tracking.uri"] == "null"
    assert params["name"] == "run-0.5"  # resolved interpolation
    assert params["algorithm.name"] == "fedavg"
    assert params["extra.k149"] == "149"
    assert len(params["privacy.note"]) == 6000  # truncated to mlflow's limit
    assert run.data.tags["sweep"] == "s1"
    assert "mlflow.user" in run.data.tags  # context tags as the fluent API sets them
    history = client.get_metric_history(run_id, "accuracy")
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.value for m in history] == pytest.approx([0.5, 0.6, 0.7])
    assert [m.value for m in client.get_metric_history(run_id, "bytes_up")] == [0, 1000, 2000]
    assert run.data.metrics["loss"] == 0.25
    assert "note" not in run.data.metrics and "eps" not in run.data.metrics
    assert _artifact_paths(client, run_id) == {
        "config.yaml",
        "plots/label_histogram.png",
        "model/adapter/adapter_config.json",
        "model/adapter/w.bin",
        "notes/readme.txt",
    }
    local = Path(client.download_artifacts(run_id, "config.yaml", str(store / "dl")))
    assert OmegaConf.load(local).partition.alpha == 0.5
    png = Path(client.download_artifacts(run_id, "plots/label_histogram.png", str(store / "dl")))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exception_marks_failed_then_resume_appends(store: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), _tracker(store, experiment="resume") as t:
        run_id = t.start("crashes")
        t.log_config(OmegaConf.create({"mode": {"rounds": 2}, "seed": 0}))
        t.log_metrics({"loss": 1.0}, step=0)
        t.log_metrics({"loss": 0.9}, step=1)
        raise RuntimeError("boom")
    client = MlflowClient(tracking_uri=default_tracking_uri(store))
    assert client.get_run(run_id).info.status == "FAILED"

    with _tracker(store, experiment="resume") as t2:
        assert t2.start("ignored", run_id=run_id) == run_id
        assert client.get_run(run_id).info.status == "RUNNING"
        t2.log_config(OmegaConf.create({"mode": {"rounds": 4}, "seed": 0, "resumed": True}))
        t2.log_metrics({"loss": 0.8}, step=2)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "crashes"
    assert run.data.params["mode.rounds"] == "2"  # params are immutable: the first value stays
    assert run.data.params["resumed"] == "true"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2]


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (KeyboardInterrupt(), "KILLED"),
        (SystemExit(3), "FAILED"),
        (SystemExit(0), "FINISHED"),
        (RuntimeError("boom\nsecond line"), "FAILED"),
    ],
)
def test_exit_status(store: Path, exc: BaseException, status: str) -> None:
    with pytest.raises(type(exc)), _tracker(store, experiment="exits") as t:
        run_id = t.start("exit")
        raise exc
    run = MlflowClient(tracking_uri=t.uri).get_run(run_id)
    assert run.info.status == status
    if isinstance(exc, RuntimeError):
        assert run.data.tags["fedray.error"] == "RuntimeError: boom"
    else:
        assert "fedray.error" not in run.data.tags


def test_end_is_idempotent_and_parent_and_atexit(store: Path) -> None:
    client = MlflowClient(tracking_uri=default_tracking_uri(store))
    parent = _tracker(store, experiment="sweep")
    parent_id = parent.start("sweep")
    child = _tracker(store, experiment="sweep")
    child_id = child.start("job-0", parent_run_id=parent_id)
    assert client.get_run(child_id).data.tags["mlflow.parentRunId"] == parent_id
    child.end("KILLED")
    child.end()  # no-op
    assert client.get_run(child_id).info.status == "KILLED"
    with pytest.raises(ValueError):
        child.end("DONE")
    tracking.end_open_trackers()  # what atexit does with a run nobody ended
    assert client.get_run(parent_id).info.status == "FAILED"
    assert parent not in tracking._open_trackers


def test_disabled_tracker_is_a_noop(tmp_path: Path) -> None:
    t = _tracker(tmp_path, enabled=False)
    with t:
        assert t.start("x", tags={"a": "b"}) is None
        t.log_config(_run_cfg())
        t.log_metrics({"accuracy": 1.0}, step=0)
        t.log_figure(_figure(), "f.png")
        t.log_files({"a.txt": b"a"}, "files")
        t.log_text("t", "t.txt")
        t.log_dir(tmp_path)
        t.end("FAILED")
    assert t.run_id is None and t._client is None
    assert list(tmp_path.iterdir()) == []


def test_log_files_rejects_escaping_names(store: Path) -> None:
    with _tracker(store, experiment="names") as t:
        t.start("names")
        with pytest.raises(ValueError):
            t.log_files({"../evil": b"x"}, "files")


def test_label_histogram_caps_clients() -> None:
    rng = np.random.default_rng(0)
    fig = label_histogram_figure(rng.integers(0, 9, size=(150, 4)), None)
    ax = fig.axes[0]
    assert "first 100" in ax.get_title() and "150 clients" in ax.get_title()
    assert len(ax.patches) == 100 * 4
    small = label_histogram_figure(np.ones((3, 2)), ["a", "b"])
    assert "first" not in small.axes[0].get_title()
    with pytest.raises(ValueError):
        label_histogram_figure(np.ones((3, 2)), ["a"])


def test_curve_figure_skips_missing_rounds() -> None:
    history = [
        {"round": 1, "loss": 1.0},
        {"round": 2, "loss": 0.8, "accuracy": 0.5},
        {"round": 3, "accuracy": 0.6},
    ]
    fig = curve_figure(history, ["loss", "accuracy", "absent"], "curves")
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy"]  # one panel per metric
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1]
    assert list(lines["loss"].get_xdata()) == [1, 2]
    assert list(lines["accuracy"].get_xdata()) == [2, 3]
    loss_ax, acc_ax = fig.axes
    assert acc_ax.get_ylim()[1] < 1.0 < loss_ax.get_ylim()[1]  # each keeps its own scale
    assert "absent" not in lines
    assert curve_figure([], ["loss"], "empty").axes[0].texts[0].get_text() == "no data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log_file: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited {proc.returncode}: {log_file.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"mlflow server not ready in {timeout}s: {log_file.read_text()[-2000:]}")


@pytest.mark.slow  # the server takes 20-45 s to start on a small machine
def test_remote_server_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no job runner process
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    log_file = tmp_path / "server.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", default_tracking_uri(server_dir),
        "--artifacts-destination", str(server_dir / "artifacts"),
    ]  # fmt: skip
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=server_dir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_ready(f"{uri}/health", proc, log_file)
        work = tmp_path / "work"
        work.mkdir()
        with _tracker(work, uri=uri, experiment="remote") as t:
            run_id = t.start("remote-run")
            t.log_config(OmegaConf.create({"partition": {"alpha": 0.5}, "seed": 1}))
            for step in range(3):
                t.log_metrics({"accuracy": step / 4}, step=step)
            t.log_figure(_figure(), "label_histogram.png")
            t.log_files({"a.txt": b"a"}, "files")
        assert (
            t.ui_command() == f"{uri}/#/experiments/{t.experiment_id}?workflowType=machine_learning"
        )
        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params == {"partition.alpha": "0.5", "seed": "1"}
        assert [m.step for m in client.get_metric_history(run_id, "accuracy")] == [0, 1, 2]
        assert _artifact_paths(client, run_id) == {
            "config.yaml",
            "label_histogram.png",
            "files/a.txt",
        }
        assert list(work.iterdir()) == []  # a remote store writes nothing locally
        assert any((server_dir / "artifacts").rglob("label_histogram.png"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
