"""Bad input through the real `fedray` command, table-driven (issue 4).

Each case: exit status 2, exactly one `fedray: error:` line on stderr naming the offending key
or file, no Python traceback, no MLflow run left RUNNING, and no Ray process left behind (every
process whose command line mentions this test's private Ray temp dir must be gone).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

# name: (arguments, text the error line must contain); {tmp}, {csv}, {port}... are filled in
CASES: dict[str, tuple[list[str], str]] = {
    "malformed override": (["mode.rounds=[1,"], "mode.rounds"),
    "malformed run config YAML": (["resume", "{broken_run}"], "config.yaml"),
    "malformed data file": (["data=files", "data.path={bad_json}"], "bad.json"),
    "unknown key": (["mode.roundz=3"], "mode.roundz"),
    "pow-d with fewer candidates than picks": (
        ["selection=power_of_choice", "selection.d=2"],
        "selection.d",
    ),
    "pow-d fresh losses in async mode": (
        ["selection=power_of_choice", "selection.loss=fresh", "mode=async", "algorithm=fedbuff"],
        "selection.loss=fresh probes the candidates",
    ),
    "unknown top-level key": (["+learning_rate=0.1"], "learning_rate"),
    "unknown attack option": (["attack.strength=3"], "attack.strength"),
    "unknown group option": (["partition=random"], "partition/random"),
    "wrong type int": (["partition.num_clients=2.5"], "partition.num_clients"),
    "wrong type float": (["client.lr=fast"], "client.lr"),
    "wrong type bool": (["mode.eval_initial=maybe"], "mode.eval_initial"),
    "alpha zero": (["partition.alpha=0"], "partition.alpha"),
    "alpha negative": (["partition.alpha=-0.5"], "partition.alpha"),
    "negative rounds": (["mode.rounds=-3"], "mode.rounds"),
    "test fraction above 1": (["data.test_fraction=1.5"], "data.test_fraction"),
    "attack fraction above 1": (["attack=scale", "attack.fraction=1.5"], "attack.fraction"),
    "fault rate above 1": (["faults.rate=2"], "faults.rate"),
    "zero clients": (["partition.num_clients=0"], "partition.num_clients"),
    "zero cpus per actor": (["client.num_cpus=0"], "client.num_cpus"),
    "quorum above cohort": (["mode.min_clients=20"], "mode.min_clients"),
    "hang without timeout": (["faults.schedule=[1:0:hang]"], "mode.client_timeout_s"),
    "malformed fault entry": (["faults.schedule=[1-0-raise]"], "faults.schedule"),
    "unknown quorum policy": (["mode.on_quorum_loss=ignore"], "mode.on_quorum_loss"),
    "norm ratio below 1": (["mode.max_norm_ratio=0.5"], "mode.max_norm_ratio"),
    "unknown dtype": (["model.dtype=float8"], "model.dtype"),
    "hub data without a name": (["data=hf"], "data.path"),
    "missing data file": (["data=files", "data.path={tmp}/nope.csv"], "data.path"),
    "empty dataset": (["data=files", "data.path={empty_csv}"], "empty.csv"),
    "missing column": (["data=files", "data.path={csv}", "data.label_column=genre"], "genre"),
    "model path not a model": (["model.name_or_path={not_model}"], "model.name_or_path"),
    "unwritable output dir": (["hydra.run.dir={a_file}/out"], "hydra.run.dir"),
    "unwritable tracking store": (["tracking.uri=sqlite:///{a_file}/db/mlflow.db"], "tracking.uri"),
    "resume of a non-run dir": (["resume", "{tmp}"], "not a fedray run directory"),
    "unreachable ray address": (
        ["cluster.address=127.0.0.1:{port}", "mode.rounds=1"],
        "cluster.address",
    ),
}
SLOW = {"unreachable ray address", "model path not a model", "empty dataset", "missing column"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


@pytest.fixture
def files(tmp_path: Path) -> Iterator[dict[str, str]]:
    rows = [f"speech number {i} about kings and crowns and love,{'ab'[i % 2]}" for i in range(30)]
    (tmp_path / "small.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "empty.csv").write_text("text,label\n")
    (tmp_path / "bad.json").write_text('{"text": "to be", "label": ')
    (tmp_path / "notmodel").mkdir()
    (tmp_path / "notmodel" / "README.txt").write_text("not a model")
    (tmp_path / "afile").write_text("")
    run = tmp_path / "run" / ".hydra"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("mode: {rounds: [1, 2\n")
    (tmp_path / "run" / "fedray_run.json").write_text('{"run_id": null, "tracking_uri": null}')
    (tmp_path / "run" / "checkpoint").mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="frb", dir="/tmp")  # short: Ray's socket paths are limited
    yield {
        "tmp": str(tmp_path),
        "csv": str(tmp_path / "small.csv"),
        "empty_csv": str(tmp_path / "empty.csv"),
        "bad_json": str(tmp_path / "bad.json"),
        "not_model": str(tmp_path / "notmodel"),
        "a_file": str(tmp_path / "afile"),
        "broken_run": str(tmp_path / "run"),
        "port": str(_closed_port()),
        "ray_tmp": ray_tmp,
    }
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _ray_leftovers(marker: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if marker in cmd:
            found.append(cmd[:120])
    return found


def _running_runs(tmp_path: Path) -> list[str]:
    db = tmp_path / "mlflow.db"
    if not db.exists():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exps = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_id for r in client.search_runs(exps) if r.info.status == "RUNNING"]


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in sorted(CASES)]
)
def test_bad_input(case: str, tmp_path: Path, files: dict[str, str]) -> None:
    args, expected = CASES[case]
    args = [a.format(**files) for a in args]
    expected = expected.format(**files)
    if args[0] != "resume" and not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={tmp_path}/out")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "RAY_TMPDIR": files["ray_tmp"],
    }
    cmd = [sys.executable, "-c", "from fedray.app.cli import main; main()", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("fedray: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert expected in errors[0], errors[0]
    assert _running_runs(tmp_path) == []
    assert _ray_leftovers(files["ray_tmp"]) == []


def test_table_covers_at_least_25_inputs() -> None:
    assert len(CASES) >= 25
