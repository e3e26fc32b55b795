"""fedray's MLflow links open its experiments in the UI's model-training view (MLflow 3.17),
checked in headless Chromium against a local `mlflow server`."""

from __future__ import annotations

import re
from pathlib import Path

from browser_helpers import chromium_dom
from mlflow.tracking import MlflowClient

from fedray.core.config import TrackingConfig
from fedray.tracking.tracker import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker


def _text(dom: str) -> str:
    dom = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_ui_link_opens_the_training_runs_view(
    mlflow_server: str, tmp_path: Path, chromium: str
) -> None:
    cfg = TrackingConfig(uri=mlflow_server, experiment="ui-view")
    with Tracker(cfg, tmp_path) as tracker:
        tracker.start("fedray-ui-run")
        tracker.log_metrics({"eval_accuracy": 0.3}, step=1)
    experiment = MlflowClient(mlflow_server).get_experiment(tracker.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    link = tracker.ui_command()
    assert link.endswith(f"/#/experiments/{tracker.experiment_id}?workflowType=machine_learning")
    page = _text(chromium_dom(chromium, link, tmp_path / "p1", budget_ms=15000))
    assert "fedray-ui-run" in page and "Run Name" in page, page[:800]  # the runs table
    assert "Token Usage" not in page
    # Without the view in the link, MLflow 3.17 opens the GenAI overview, whatever the tag says.
    bare = link.split("?")[0]
    genai = _text(chromium_dom(chromium, bare, tmp_path / "p2", budget_ms=15000))
    assert "Token Usage" in genai and "fedray-ui-run" not in genai, genai[:800]
