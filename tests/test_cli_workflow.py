"""The everyday workflow through the real `fedray` command: verbs and --help, an unreachable
tracking server, SIGTERM, sweeps with a failed job (parent and child MLflow runs), --cfg with -m,
the Optuna sweeper's defaults, and the README's causal-LM example."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fedray.app.cli import VERBS, compose

ROOT = Path(__file__).resolve().parents[1]
TINY = [  # a sweep job small enough for the test box
    "model.lora.layers=null",
    "mode.rounds=1",
    "mode.clients_per_round=2",
    "partition.max_samples_per_client=8",
    "data.max_test=32",
    "data.max_length=32",
    "client.num_cpus=1",
    "cluster.num_cpus=2",
]


def _cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-c", "from fedray.app.cli import main; main()", *args]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }


def _fedray(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("fedray: error:")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedray.models import save_tiny_classifier

    return save_tiny_classifier(tmp_path_factory.mktemp("tiny") / "cls")


@pytest.mark.parametrize("verb", ["run", *sorted(VERBS)])
def test_every_verb_has_help(verb: str, tmp_path: Path) -> None:
    proc = _fedray(["--help"] if verb == "run" else [verb, "--help"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = "Verbs:" if verb == "run" else f"usage: fedray {verb} "
    assert expected in proc.stdout and "Traceback" not in proc.stderr


def test_unreachable_tracking_server_fails_in_seconds_before_ray(tmp_path: Path) -> None:
    from fedray.app.preflight import check_tracking_uri
    from fedray.core.errors import ConfigError

    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="no MLflow server answers"):
        check_tracking_uri("http://127.0.0.1:1")
    assert time.monotonic() - t0 < 10  # one try with a 5 s timeout, not minutes of retries
    t0 = time.monotonic()
    proc = _fedray(["tracking.uri=http://127.0.0.1:1", "mode.rounds=1"], tmp_path, timeout=300)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    [error] = _errors(proc.stderr)
    assert "tracking.uri=http://127.0.0.1:1: no MLflow server answers" in error
    assert "Retrying" not in proc.stderr and "Ray" not in proc.stderr  # nothing started
    assert elapsed < 120, elapsed  # was > 200 s of urllib3 retries, then Ray; here start-up


def test_cfg_with_multirun_prints_each_combination(tmp_path: Path) -> None:
    proc = _fedray(["--cfg", "job", "-m", "partition.alpha=0.1,1.0"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    headers = [ln for ln in proc.stdout.splitlines() if ln.startswith("# ")]
    assert headers == ["# partition.alpha=0.1", "# partition.alpha=1.0"]
    assert "Traceback" not in proc.stderr


def test_optuna_sweeper_bad_params_is_one_line(tmp_path: Path) -> None:
    args = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.params={client.lr:interval(1e-4,1e-2)}"]
    proc = _fedray(args, tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    [error] = _errors(proc.stderr)
    assert "sweep each key on its own" in error and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("data", "direction"), [("shakespeare", "maximize"), ("shakespeare_lm", "minimize")]
)
def test_optuna_sweeper_defaults_follow_the_task(data: str, direction: str) -> None:
    cfg = compose(["hydra/sweeper=fedray_optuna", f"data={data}", "seed=7"], hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == direction
    assert sweeper.sampler.seed == 7 and sweeper.sampler._target_.endswith("TPESampler")
    assert sweeper.storage.url.endswith("/optuna.db")


def test_sweep_with_a_failed_job_finishes_the_others_and_exits_1(
    tmp_path: Path, tiny: Path
) -> None:
    rows = [f"speech number {i} about kings and crowns and love,{'ab'[i % 2]}" for i in range(60)]
    csv = tmp_path / "small.csv"
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    args = [
        "-m",
        "partition=iid",
        "partition.num_clients=4,80",  # 80 clients > the training samples: job 1 fails
        "data=files",
        f"data.path={csv}",
        f"model.name_or_path={tiny}",
        *TINY,
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    proc = _fedray(args, tmp_path)
    assert proc.returncode == 1, proc.stderr
    [error] = _errors(proc.stderr)
    assert "1 of 2 sweep jobs failed: #1 (partition.num_clients=80)" in error
    assert "fedray: job 1 failed: partition.num_clients=80 exceeds" in proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("fedray").experiment_id])
    [parent] = [r for r in runs if "fedray.sweep_axes" in r.data.tags]
    children = {r.data.tags.get("sweep.partition.num_clients"): r for r in runs if r is not parent}
    assert parent.data.tags["fedray.sweep_axes"] == "partition.num_clients"
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_failed"] == 1
    assert {k: r.info.status for k, r in children.items()} == {"4": "FINISHED", "80": "FAILED"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children.values())
    assert "exceeds the" in children["80"].data.tags["fedray.error"]
    summary = client.download_artifacts(parent.info.run_id, "sweep_summary.csv", str(tmp_path))
    lines = Path(summary).read_text().splitlines()
    assert lines[0].startswith("run,status,partition.num_clients") and len(lines) == 3
    info = json.loads((tmp_path / "sweep" / "fedray_sweep.json").read_text())
    assert info["parent_run_id"] == parent.info.run_id


def test_sigterm_ends_with_one_line_and_a_killed_run(tmp_path: Path, tiny: Path) -> None:
    run_dir = tmp_path / "run"
    args = [f"model.name_or_path={tiny}", *TINY, "mode.rounds=200", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        _cmd(args),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "fedray_run.json").exists():  # the MLflow run is open
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.5)
        time.sleep(3)  # into the rounds
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "SIGTERM received" not in err and "PC: @" not in err and "Traceback" not in err
    assert _errors(err) == [
        "fedray: error: terminated by SIGTERM; open MLflow runs were marked KILLED"
    ]
    run_id = json.loads((run_dir / "fedray_run.json").read_text())["run_id"]
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id).info.status == "KILLED"


def test_readme_causal_lm_example_shows_the_task_metrics(tmp_path: Path) -> None:
    from fedray.models import save_tiny_causal_lm

    model = save_tiny_causal_lm(tmp_path / "gpt")
    args = [  # README: fedray partition=natural data=shakespeare_lm model=hf_lora ... (shrunk)
        "partition=natural",
        "data=shakespeare_lm",
        "model=hf_lora",
        f"model.name_or_path={model}",
        "model.lora.target_modules=[c_attn]",
        "mode.rounds=1",
        "mode.clients_per_round=2",
        "partition.max_samples_per_client=4",
        "data.max_test=16",
        "data.max_length=16",
        "client.num_cpus=1",
        "tracking=none",
        f"hydra.run.dir={tmp_path}/run",
    ]
    proc = _fedray(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    [header] = [ln for ln in lines if ln.split()[:1] == ["round"]]
    assert header.split()[:6] == [
        "round",
        "clients",
        "failed",
        "train_loss",
        "eval_perplexity",
        "eval_accuracy",
    ]
    [row] = [
        ln for ln in lines if ln.split()[:1] == ["1"] and len(ln.split()) == len(header.split())
    ]
    perplexity, accuracy = (float(v) for v in row.split()[4:6])
    assert perplexity > 1.0 and 0.0 <= accuracy <= 1.0


@pytest.mark.slow
def test_three_axis_sweep_is_one_parent_with_eight_tagged_children(
    tmp_path: Path, tiny: Path
) -> None:
    args = [
        "-m",
        "algorithm=fedavg,fedprox",
        "partition=iid,dirichlet",
        "compression=none,fp16",
        f"model.name_or_path={tiny}",
        *TINY,
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    proc = _fedray(args, tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("fedray").experiment_id])
    [parent] = [r for r in runs if "fedray.sweep_axes" in r.data.tags]
    children = [r for r in runs if r is not parent]
    assert parent.data.tags["fedray.sweep_axes"] == "algorithm,partition,compression"
    assert len(children) == 8
    combos = {
        tuple(r.data.tags[f"sweep.{a}"] for a in ("algorithm", "partition", "compression"))
        for r in children
    }
    assert len(combos) == 8
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["compression.name"] == run.data.tags["sweep.compression"]
    fp16 = [
        r.data.metrics["bytes_up"] for r in children if r.data.tags["sweep.compression"] == "fp16"
    ]
    dense = [
        r.data.metrics["bytes_up"] for r in children if r.data.tags["sweep.compression"] == "none"
    ]
    assert max(fp16) < min(dense)  # the swept codec really ran


@pytest.mark.slow
def test_tune_runs_a_pruned_study_on_ray(tmp_path: Path, tiny: Path) -> None:
    args = [
        "tune",
        "--trials",
        "4",
        "--concurrency",
        "2",
        "--startup-trials",
        "1",
        "--warmup-rounds",
        "0",
        "client.lr=tag(log,interval(1e-5,1e-1))",
        f"model.name_or_path={tiny}",
        *[o for o in TINY if not o.startswith(("mode.rounds", "client.num_cpus"))],
        "mode.rounds=3",
    ]
    proc = _fedray(args, tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    assert "each trial gets client.num_actors=1 client.num_cpus=1" in proc.stdout
    [summary] = [ln for ln in proc.stdout.splitlines() if ln.startswith("tune: 4 trials")]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("fedray").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("fedray.sweeper") == "fedray tune"]
    trials = [r for r in runs if r is not parent]
    assert len(trials) == 4 and {r.info.status for r in trials} == {"FINISHED"}
    pruned = [r for r in trials if "fedray.stop_reason" in r.data.tags]
    assert parent.data.metrics["trials_pruned"] == len(pruned)
    assert f"({len(pruned)} pruned)" in summary
