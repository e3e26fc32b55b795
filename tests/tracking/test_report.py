"""`fedray report` against a real `mlflow server` (sqlite backend): runs read back, the final
table's mean and spread over seeds, the report logged to the parent run, and the page rendering
its images in headless Chromium."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from browser_helpers import chromium_dom
from mlflow.tracking import MlflowClient

from fedray.app.report import main as report_main
from fedray.core.config import TrackingConfig
from fedray.tracking.tracker import Tracker

FINAL = {
    ("fedavg", "0"): 0.40,
    ("fedavg", "1"): 0.44,
    ("fedprox", "0"): 0.30,
    ("fedprox", "1"): 0.36,
}


@pytest.fixture(scope="module")
def sweep(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A parent run with four children (algorithm x seed), as a sweep leaves them."""
    cwd = tmp_path_factory.mktemp("report-cwd")
    cfg = TrackingConfig(uri=mlflow_server, experiment="report-test")
    parent = Tracker(cfg, cwd)
    parent_id = parent.start("study-sweep", tags={"fedray.sweep_axes": "algorithm,seed"})
    for (algo, seed), final in FINAL.items():
        with Tracker(cfg, cwd) as child:
            child.start(
                f"{algo}-{seed}",
                tags={
                    "mlflow.parentRunId": parent_id,
                    "sweep.algorithm": algo,
                    "sweep.seed": seed,
                    "fedray.objective": "eval_accuracy",
                    "fedray.direction": "maximize",
                },
            )
            for rnd in (1, 2, 3):
                child.log_metrics(
                    {
                        "eval_accuracy": final - 0.1 * (3 - rnd),
                        "bytes_up": 2e6 if algo == "fedavg" else 1e6,
                        "bytes_down": 1e6,
                        "epsilon": 0.5 * rnd,
                    },
                    step=rnd,
                )
    parent.end()
    return parent_id


def _report(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from fedray.app.cli import main; main()", "report", *args]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_report_of_a_sweep(mlflow_server: str, sweep: str, tmp_path: Path, chromium: str) -> None:
    out = tmp_path / "rep"
    proc = _report(
        ["--parent", sweep, "--tracking-uri", mlflow_server, "--out", str(out)], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    page = (out / "report.html").read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert images == [
        "objective_vs_round.png",
        "objective_vs_bytes.png",
        "objective_vs_epsilon.png",
    ]
    for algo in ("fedavg", "fedprox"):  # the final table: mean and std over the two seeds
        values = [FINAL[(algo, s)] for s in ("0", "1")]
        row = re.search(
            rf"<tr><td>{algo}</td><td>([0-9.]+)( \(best\))?</td><td>([0-9.]+)</td>", page
        )
        assert row is not None, page
        assert float(row.group(1)) == pytest.approx(statistics.fmean(values), abs=1e-4)
        assert float(row.group(3)) == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert bool(row.group(2)) == (algo == "fedavg")  # the best mean is marked
    client = MlflowClient(mlflow_server)
    logged = {a.path for a in client.list_artifacts(sweep, "report")}
    assert "report/report.html" in logged and "report/objective_vs_round.png" in logged

    # Headless Chromium: every image decodes to a non-empty bitmap.
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.replace(
            "</body>",
            "<script>window.addEventListener('load',()=>{const i=[...document.images];"
            "document.body.setAttribute('data-images',i.length+':'+"
            "i.filter(x=>x.complete&&x.naturalWidth>300).length)});</script></body>",
        )
    )
    dom = chromium_dom(chromium, probe.as_uri(), tmp_path / "profile")
    assert 'data-images="3:3"' in dom, dom[:500]


def test_report_selects_by_experiment_and_tag(
    mlflow_server: str, sweep: str, tmp_path: Path
) -> None:
    out = tmp_path / "rep"
    args = ["--experiment", "report-test", "--tag", "sweep.algorithm=fedprox", "--no-log"]
    proc = _report([*args, "--tracking-uri", mlflow_server, "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "report: 2 runs" in proc.stdout
    assert "fedavg" not in (out / "report.html").read_text().split("<h2>runs</h2>")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "nope"], "--experiment nope: no such MLflow experiment"),
        (["--experiment", "report-test", "--tag", "sweep.algorithm=none"], "no runs match"),
        ([], "name the runs: --parent RUN_ID or --experiment NAME"),
    ],
)
def test_report_errors_are_one_line(
    mlflow_server: str,
    sweep: str,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report_main([*args, "--tracking-uri", mlflow_server])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedray: error:") and message in lines[0], lines
