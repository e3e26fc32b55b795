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


def main(args: list[str]) -> None:
    """`fedray resume RUN_DIR|RUN_ID`: continue a checkpointed run in the same MLflow run."""
    import json

    from omegaconf import OmegaConf

    from fedray.app.console import VerbParser, condense, fail
    from fedray.app.run import RUN_INFO, run_experiment
    from fedray.core.errors import FedrayError

    parser = VerbParser(
        prog="fedray resume",
        description="Continue a run checkpointed with mode.checkpoint_every=N, in the same "
        "MLflow run; a sync run ends with the same weights, bit for bit, as an uninterrupted one.",
    )
    parser.add_argument(
        "target",
        metavar="RUN_DIR|RUN_ID",
        help="the run directory the original run printed, or its MLflow run id (looked up in "
        "$MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    target = parser.parse_args(args).target
    try:
        path = run_dir_of(target, os.getcwd())
    except FedrayError as exc:
        fail(str(exc))
    run_dir = str(path)
    cfg_file, info_file = path / ".hydra" / "config.yaml", path / RUN_INFO
    if not cfg_file.exists() or not info_file.exists():
        fail(f"{run_dir}: not a fedray run directory (needs .hydra/config.yaml and {RUN_INFO})")
    if not (path / "checkpoint").exists():
        fail(f"{run_dir}: no checkpoint; run with mode.checkpoint_every=N to make runs resumable")
    try:
        cfg = OmegaConf.load(cfg_file)
        info = json.loads(info_file.read_text())
    except Exception as exc:
        fail(
            f"{run_dir}: cannot read {cfg_file.name} or {RUN_INFO} ({condense(str(exc))}); "
            "restore them (the MLflow run keeps config.yaml as an artifact)"
        )
    if cfg.tracking.enabled and info.get("tracking_uri"):
        cfg.tracking.uri = info["tracking_uri"]
    try:
        run_experiment(cfg, path, cwd=os.getcwd(), resume_run_id=info.get("run_id"))
    except FedrayError as exc:
        fail(condense(str(exc)))
