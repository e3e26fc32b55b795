"""A Hydra sweep as one MLflow parent run with a nested child run per job.

:class:`SweepCallback` (registered in `conf/hydra/fedray.yaml`) opens the parent run when the
sweep starts, names the swept axes, and publishes the parent's id to the jobs through the
environment and `<sweep dir>/fedray_sweep.json` (a launcher that starts jobs in other processes
finds it there). Each job's run is tagged `mlflow.parentRunId` and `sweep.<key>=<value>` for
every axis. A failed job is a FAILED child run carrying its one-line error (`fedray.error`),
also when it failed before its run could start; the sweep goes on. At the end the parent holds
`sweep_summary.csv` / `sweep_summary.md` (one row per child: axes, status, final metrics,
error), its status (FINISHED, or FAILED when every job failed), and the CLI exits non-zero
naming the failed jobs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedray.app.space import job_values, parse_space
from fedray.tracking.tracker import PARENT_RUN_TAG, Tracker

log = logging.getLogger(__name__)

ENV_PARENT = "FEDRAY_SWEEP_PARENT_RUN_ID"
ENV_AXES = "FEDRAY_SWEEP_AXES"
SWEEP_FILE = "fedray_sweep.json"
AXIS_TAG = "sweep."  # + key: the job's value of each swept axis
AXES_TAG = "fedray.sweep_axes"
SUMMARY_METRICS = ("eval_accuracy", "eval_loss", "eval_perplexity", "train_loss", "epsilon")

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object  # type: ignore[misc, assignment]


@dataclass
class JobRecord:
    """One job of the sweep as the callback saw it end."""

    num: int
    overrides: list[str]
    ok: bool
    error: str = ""


@dataclass
class SweepState:
    """What the sweep's process knows once Hydra returns (read by the CLI for its exit code)."""

    parent_run_id: str | None = None
    axes: list[str] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)

    @property
    def failed(self) -> list[JobRecord]:
        return [j for j in self.jobs if not j.ok]

    def reset(self) -> None:
        self.parent_run_id, self.axes, self.jobs = None, [], []


STATE = SweepState()


def sweep_axes(config: DictConfig) -> list[str]:
    """The swept keys of the sweep whose (multirun) config this is."""
    overrides = list(config.hydra.overrides.task)
    params = config.hydra.sweeper.get("params") or {}
    params = {str(k): str(v) for k, v in params.items()}
    try:
        return list(parse_space(overrides, params).axes)
    except Exception as exc:  # the pre-check already validated these; never break the sweep
        log.warning("cannot read the sweep's axes: %s", exc)
        return []


class SweepCallback(Callback):  # type: ignore[misc, valid-type]
    """Hydra callback: the sweep's parent run, the job records, the summary."""

    def __init__(self) -> None:
        self.tracker: Tracker | None = None
        self.ray: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from fedray.app.cluster import ray_session
        from fedray.app.spec import build_spec

        STATE.reset()
        STATE.axes = sweep_axes(config)
        os.environ[ENV_AXES] = json.dumps(STATE.axes)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        info: dict[str, Any] = {"axes": STATE.axes, "parent_run_id": None}
        spec = build_spec(_job_config(config))
        if not any(a == "cluster" or a.startswith("cluster.") for a in STATE.axes):
            # One Ray for every job (each job reuses an initialised Ray): saves its start-up,
            # several seconds a job. Its actors die with the job's driver.
            self.ray = ray_session(spec.cluster)
            self.ray.__enter__()
        if config.tracking.enabled:
            self.tracker = Tracker(spec.tracking, str(config.hydra.runtime.cwd))
            name = f"{config.name}-sweep"
            tags = {
                AXES_TAG: ",".join(STATE.axes),
                "fedray.sweep_dir": str(sweep_dir),
                "fedray.overrides": " ".join(config.hydra.overrides.task),
                "fedray.sweeper": str(config.hydra.sweeper._target_).rsplit(".", 1)[-1],
            }
            STATE.parent_run_id = self.tracker.start(run_name=name, tags=tags)
            os.environ[ENV_PARENT] = STATE.parent_run_id or ""
            info["parent_run_id"] = STATE.parent_run_id
            info["tracking_uri"] = self.tracker.uri
            print(f"sweep: MLflow parent run {STATE.parent_run_id}; axes {', '.join(STATE.axes)}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(info))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        num = int(config.hydra.job.get("num", len(STATE.jobs)) or 0)
        overrides = list(job_return.overrides or [])
        error = ""
        ok = job_return.status == JobStatus.COMPLETED
        if ok:
            value = job_return.return_value
            if isinstance(value, JobOutcome):
                ok, error = value.ok, value.error
        else:  # `return_value` would re-raise the job's exception
            error = str(job_return._return_value).strip().splitlines()[0]
        STATE.jobs.append(JobRecord(num, overrides, ok, error))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        session, self.ray = self.ray, None
        if session is not None:
            session.__exit__(None, None, None)
        tracker, self.tracker = self.tracker, None
        if tracker is not None and tracker.active:
            close_parent(tracker, STATE)


def close_parent(tracker: Tracker, state: SweepState, metrics: dict[str, float] | None = None):
    """Log the sweep summary on the parent run and end it (FAILED only if every job failed)."""
    try:
        rows = summary_rows(tracker, state.parent_run_id or "", state.axes)
        tracker.log_text(rows_to_csv(rows), "sweep_summary.csv")
        tracker.log_text(rows_to_markdown(rows), "sweep_summary.md")
        failed = len(state.failed)
        tracker.log_metrics({"jobs": len(state.jobs), "jobs_failed": failed, **(metrics or {})}, 0)
        all_failed = bool(state.jobs) and failed == len(state.jobs)
        tracker.end("FAILED" if all_failed else "FINISHED")
    except Exception as exc:  # a summary that cannot be written must not hide the sweep's jobs
        log.warning("could not write the sweep summary: %s", exc)
        tracker.end("FINISHED")


@dataclass(frozen=True)
class JobOutcome:
    """What a sweep job returns to Hydra: the objective (for sweepers), ok, the error line."""

    value: float
    ok: bool = True
    error: str = ""

    def __float__(self) -> float:  # Hydra's Optuna sweeper calls float() on the return value
        return self.value


def child_tags(job_overrides: list[str]) -> dict[str, str]:
    """`mlflow.parentRunId` and `sweep.<key>` tags of a sweep job (empty outside a sweep)."""
    tags: dict[str, str] = {}
    parent = os.environ.get(ENV_PARENT)
    if parent:
        tags[PARENT_RUN_TAG] = parent
    axes = json.loads(os.environ.get(ENV_AXES, "[]"))
    for key, value in job_values(job_overrides, axes).items():
        tags[AXIS_TAG + key] = value
    return tags


def record_failed_job(
    cfg: DictConfig, cwd: str, run_name: str, tags: dict[str, str], error: str
) -> str | None:
    """A FAILED run for a job that failed before its own MLflow run started."""
    from fedray.tracking.tracker import ERROR_TAG

    tracking = cfg.tracking
    if not tracking.enabled:
        return None
    try:
        with Tracker(tracking, cwd) as tracker:
            run_id = tracker.start(run_name=run_name, tags={**tags, ERROR_TAG: error})
            tracker.log_config(cfg)
            tracker.end("FAILED")
        return run_id
    except Exception as exc:  # the store itself may be what failed
        log.warning("could not record the failed job in MLflow: %s", exc)
        return None


def summary_rows(tracker: Tracker, parent_run_id: str, axes: list[str]) -> list[dict[str, Any]]:
    """One row per child run of `parent_run_id`: name, status, axes, final metrics, error."""
    client = tracker.client
    runs = client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'",
        max_results=10000,
    )
    rows = []
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        tags, metrics = run.data.tags, run.data.metrics
        row: dict[str, Any] = {"run": run.info.run_name, "status": run.info.status}
        for key in axes:
            row[key] = tags.get(AXIS_TAG + key, "")
        objective = tags.get("fedray.objective")
        keys = [objective] if objective else []
        keys += [k for k in SUMMARY_METRICS if k != objective]
        for key in keys:
            if key in metrics:
                row[key] = metrics[key]
        row["error"] = tags.get("fedray.error", "")
        row["run_id"] = run.info.run_id
        rows.append(row)
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    return cols


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_columns(rows) or ["run"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def rows_to_markdown(rows: list[dict[str, Any]]) -> str:
    cols = _columns(rows) or ["run"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [_fmt(row.get(c, "")).replace("|", "/") for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _job_config(config: DictConfig) -> DictConfig:
    """The multirun config without its `hydra` node (what build_spec reads)."""
    cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    return cfg
