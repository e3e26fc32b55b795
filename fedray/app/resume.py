"""`fedray resume` targets: a run directory, or an MLflow run id resolved to its run directory."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from fedray.core.errors import ConfigError

RUN_DIR_TAG = "fedray.run_dir"


def tracking_uri(cwd: str | Path) -> str:
    """Where to look a run id up: $MLFLOW_TRACKING_URI, else the local store under `cwd`."""
    from fedray.tracking.tracker import default_tracking_uri

    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(cwd)


def run_dir_of(target: str, cwd: str | Path) -> Path:
    """`target` itself if it is a directory, else the run directory of MLflow run `target`."""
    if Path(target).is_dir():
        return Path(target)
    uri = tracking_uri(cwd)
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and not Path(unquote(parsed.path)).exists():
        raise ConfigError(
            f"{target}: not a directory, and there is no MLflow store at {uri} to look it up "
            "as a run id; run from the directory holding mlflow.db or set MLFLOW_TRACKING_URI"
        )
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(uri).get_run(target)
    except MlflowException:
        raise ConfigError(
            f"{target}: neither a run directory nor an MLflow run id in {uri}; pass the run "
            "directory (printed by the original run) or set MLFLOW_TRACKING_URI"
        ) from None
    run_dir = run.data.tags.get(RUN_DIR_TAG)
    if not run_dir:
        raise ConfigError(
            f"MLflow run {target} has no {RUN_DIR_TAG} tag (not started by the fedray CLI); "
            "pass its run directory instead"
        )
    return Path(run_dir)
