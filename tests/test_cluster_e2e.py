"""`fedray submit` against a real Ray cluster of three nodes on this machine (`ray start`
processes, token authentication on): a head with the job server and two data-silo workers,
each in a private mount namespace holding its silo's data file, which exists nowhere else.

- a tiny run submitted as a job reaches SUCCEEDED and its MLflow run exists; submitting the
  same command again finds that job; a client without the token gets one line;
- a cross-silo run: every client trains on its own silo's node, each silo's arrays sit only in
  that node's object store, the head never sees the data path;
- a submitted run stopped after a checkpoint continues with `fedray submit resume RUN_ID`.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from raycluster import LocalCluster, can_unshare_mounts, job_server_installed

from fedray.models import save_tiny_classifier

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not job_server_installed(),
        reason="needs Ray's job server: pip install -e '.[cluster]'",
    ),
    pytest.mark.skipif(
        not can_unshare_mounts(), reason="needs `unshare -m` (root on Linux) for silo sandboxes"
    ),
]

WORDS = {
    "sea": ["ship", "wave", "salt", "tide", "harbour", "sail", "anchor", "deck", "storm", "gull"],
    "farm": ["cow", "barn", "hay", "field", "plough", "wheat", "tractor", "hen", "fence", "mud"],
    "city": [
        "tram",
        "street",
        "tower",
        "market",
        "crowd",
        "bridge",
        "lamp",
        "square",
        "bus",
        "cafe",
    ],
}


def _write_silo(path: Path, seed: int, n: int = 48) -> None:
    """A csv of `n` labelled texts; silo b has a class silo a lacks (the classes merge)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = ["sea", "farm"] if seed == 0 else ["farm", "sea", "city"]
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        for i in range(n):
            label = labels[i % 2]
            out.writerow([" ".join(rng.choices(WORDS[label], k=10)), label])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    c = LocalCluster(head_cpus=1, env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    silos = {}
    try:
        c.start_head()
        c.wait_nodes(1)
        for i, name in enumerate(("a", "b")):
            staged = Path(c.temp_dir) / f"stage_{name}"
            _write_silo(staged / "train.csv", seed=i)
            mount = Path(c.temp_dir) / f"silo_{name}"
            c.add_worker(1, {"silo": name}, sandbox=(mount, staged))
            c.wait_nodes(2 + i)  # one at a time: a loaded machine starts raylets slowly
            silos[name] = mount / "train.csv"
        for name in silos:  # the staged copies go; only the silo's namespace keeps its file
            for f in (Path(c.temp_dir) / f"stage_{name}").iterdir():
                f.unlink()
        c.silos, c.tmp = silos, tmp
        c.model = save_tiny_classifier(tmp / "tiny")
        yield c
    finally:
        c.stop()


def _submit(cluster, *args: str, token: bool = True, timeout: float = 600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    if token:
        env.update(cluster.auth_env)
    cmd = [sys.executable, "-m", "fedray.app.cli", "submit", "--address", cluster.address]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _tiny(cluster) -> list[str]:
    return [
        "partition=iid",
        "partition.num_clients=4",
        "partition.max_samples_per_client=12",
        "mode.rounds=2",
        "mode.clients_per_round=2",
        "data.max_test=24",
        "data.max_length=16",
        "client.num_cpus=1",
        "client.max_steps=1",
        f"model.name_or_path={cluster.model}",
        "model.lora.layers=null",
    ]


def _nodes(cluster) -> dict[str, dict]:
    """node id -> its labels, from the dashboard."""
    summary = cluster.get("/nodes?view=summary")["data"]["summary"]
    return {n["raylet"]["nodeId"]: n["raylet"].get("labels", {}) for n in summary}


def test_submitted_run_succeeds_and_a_resubmission_finds_the_same_job(cluster) -> None:
    root = cluster.tmp / "runs"
    args = ["--wait", "--root", str(root), *_tiny(cluster)]
    first = _submit(cluster, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "submitted job fedray-" in first.stdout
    assert f"ray job logs --address {cluster.address} --follow fedray-" in first.stdout
    assert "job fedray-" in first.stdout and "SUCCEEDED" in first.stdout
    run_id = next(
        ln.split()[2].rstrip(";") for ln in first.stdout.splitlines() if ln.startswith("MLflow run")
    )
    store = MlflowClient(f"sqlite:///{root}/mlflow.db")  # the default store, in the runs dir
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in store.get_metric_history(run_id, "round_s")] == [1, 2]
    assert run.data.params["cluster.address"] == "auto"

    again = _submit(cluster, *args)
    assert again.returncode == 0, again.stderr
    sid = first.stdout.split("submitted job ")[1].split()[0]
    assert f"job {sid} was already submitted (SUCCEEDED)" in again.stdout
    assert len({r.info.run_id for r in store.search_runs([run.info.experiment_id])}) == 1

    denied = _submit(cluster, *args, token=False, timeout=120)
    assert denied.returncode == 2
    lines = denied.stderr.strip().splitlines()
    assert len(lines) == 1 and "requires token authentication" in lines[0], denied.stderr


def test_silo_data_stays_on_its_node(cluster) -> None:
    for path in cluster.silos.values():
        assert not path.exists()  # the head (this test's namespace) cannot see a silo's data
    root = cluster.tmp / "silo-runs"
    silos = ",".join(
        f"{{name:{n},labels:{{silo:{n}}},path:{p},clients:2,actors:1}}"
        for n, p in cluster.silos.items()
    )
    args = [a for a in _tiny(cluster) if not a.startswith("partition.num_clients")]
    args += [
        "data=files",
        "data.test_fraction=0.25",
        f"cluster.silos=[{silos}]",
        "mode.clients_per_round=4",
        "mode.eval_every=1",
    ]
    done = _submit(cluster, "--wait", "--root", str(root), *args)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    run_id = next(
        ln.split()[2].rstrip(";") for ln in done.stdout.splitlines() if ln.startswith("MLflow run")
    )
    store = MlflowClient(f"sqlite:///{root}/mlflow.db")
    report = json.loads(Path(store.download_artifacts(run_id, "silos.json")).read_text())
    nodes = _nodes(cluster)
    head = next(n for n, labels in nodes.items() if "silo" not in labels)
    for silo, first in zip(report["silos"], (0, 2), strict=True):
        node = next(n for n, labels in nodes.items() if labels.get("silo") == silo["name"])
        assert silo["data_node"] == node
        assert silo["clients"] == [first, first + 1]
        # every client trained, in both rounds, and only on its silo's node
        assert silo["trained_on"] == {str(c): [node] for c in silo["clients"]}
        where = silo["data_in_object_store_of"]
        assert where["node_ids"] == [node] and head not in where["node_ids"], where
        assert where["object_size"] > 0
    history = store.get_metric_history(run_id, "eval_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert store.get_run(run_id).data.params["cluster.silos"].count("name") == 2
    assert report["silos"][1]["test_samples"] == 12


def test_a_stopped_job_resumes_as_a_submitted_job(cluster) -> None:
    from ray.job_submission import JobSubmissionClient  # noqa: F401 (the client, in a child)

    root = cluster.tmp / "resume-runs"
    args = [
        *_tiny(cluster),
        "mode.rounds=3",
        "mode.checkpoint_every=1",
        "faults.schedule=[2:0:delay,2:1:delay,2:2:delay,2:3:delay]",
        "faults.delay_s=30",  # round 2 is slow: the job is stopped in it, after checkpoint 1
    ]
    started = _submit(cluster, "--root", str(root), *args)
    assert started.returncode == 0, started.stderr
    sid = started.stdout.split("submitted job ")[1].split()[0]
    ckpt = None
    end = time.monotonic() + 900  # a loaded machine: model loads and round 1 take minutes
    while ckpt is None and time.monotonic() < end:
        found = list(root.glob("outputs/*/*/checkpoint"))
        ckpt = found[0] if found and any(found[0].iterdir()) else None
        status = _ray_job(cluster, "status", sid).stdout
        if ckpt is None and any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break  # the job ended without a checkpoint: show why below
        time.sleep(2)
    logs = "" if ckpt is not None else _ray_job(cluster, "logs", sid).stdout[-3000:]
    assert ckpt is not None, f"no checkpoint written; job logs: {logs}"
    stop = _ray_job(cluster, "stop", sid)
    assert stop.returncode == 0, stop.stderr
    info = json.loads((ckpt.parent / "fedray_run.json").read_text())

    resumed = _submit(cluster, "--wait", "--root", str(root), "resume", info["run_id"])
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    store = MlflowClient(f"sqlite:///{root}/mlflow.db")
    steps = [m.step for m in store.get_metric_history(info["run_id"], "round_s")]
    assert sorted(steps) == [1, 2, 3]  # round 1 from the first job, 2 and 3 from the resume
    assert store.get_run(info["run_id"]).info.status == "FINISHED"


def _ray_job(cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cluster.auth_env}
    ray = str(Path(sys.executable).parent / "ray")
    return subprocess.run(
        [ray, "job", *args, "--address", cluster.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
