"""MLflow tracking: one MLflow run per experiment, params from the resolved config.

:class:`Tracker` talks to MLflow only through an explicit :class:`mlflow.tracking.MlflowClient`
(never the fluent ``mlflow.start_run`` state), so several trackers may live in one process
(a sweep's parent run beside its children). mlflow is imported lazily: a disabled tracker, or
merely importing this module, costs nothing.

Local default store: MLflow 3.x defaults to ``sqlite:///mlflow.db`` and refuses the ``./mlruns``
file store unless ``MLFLOW_ALLOW_FILE_STORE=true``, so the local store is ``<cwd>/mlflow.db``
with artifacts under ``<cwd>/mlartifacts``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from fedray.core.config import TrackingConfig

log = logging.getLogger(__name__)

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
STATUSES = ("FINISHED", "FAILED", "KILLED")
PARENT_RUN_TAG = "mlflow.parentRunId"
ERROR_TAG = "fedray.error"  # the one-line error of a run that ended FAILED or KILLED
# What the experiment is for, as MLflow 3.x records it ("custom_model_development": training
# runs, not GenAI traces and evaluations); read by MLflow UIs whose workflow switch is off.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17's UI ignores that tag: its sidebar's GenAI / model-training switch decides, and a
# link carrying this query opens the experiment in the model-training (runs) view.
UI_VIEW = "?workflowType=machine_learning"
_LOCAL_SCHEMES = ("", "file", "sqlite")
# Fallbacks matching mlflow 3.17's mlflow.utils.validation (used only if that import moves).
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_VAL_LENGTH = 6000
_MAX_TAG_VAL_LENGTH = 8000

_open_trackers: set[Tracker] = set()
_atexit_registered = False


def default_tracking_uri(cwd: str | Path) -> str:
    """The local store under ``cwd``: ``sqlite:///<abs cwd>/mlflow.db`` (MLflow 3.x's default)."""
    path = os.path.abspath(os.path.join(os.fspath(cwd), DB_FILE))
    return "sqlite:///" + quote(path)  # as mlflow.utils.file_utils.path_to_local_sqlite_uri


def is_local_uri(uri: str) -> bool:
    """True for stores that live on this machine's disk (sqlite database or file store)."""
    return urlparse(uri).scheme in _LOCAL_SCHEMES


def flatten_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, str]:
    """The resolved config as dotted keys -> string values (lists, null and bools as JSON)."""
    container = (
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    )
    flat: dict[str, str] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, name + ".")
            elif isinstance(value, str):
                flat[name] = value
            elif isinstance(value, int | float) and not isinstance(value, bool):
                flat[name] = str(value)
            else:
                flat[name] = json.dumps(value, default=str)

    walk(container, "")
    return flat


def _limits() -> tuple[int, int, int, int]:
    try:
        from mlflow.utils import validation as v

        return (
            v.MAX_PARAMS_TAGS_PER_BATCH,
            v.MAX_METRICS_PER_BATCH,
            v.MAX_PARAM_VAL_LENGTH,
            v.MAX_TAG_VAL_LENGTH,
        )
    except (ImportError, AttributeError):  # pragma: no cover - mlflow moved its constants
        return (
            _MAX_PARAMS_PER_BATCH,
            _MAX_METRICS_PER_BATCH,
            _MAX_PARAM_VAL_LENGTH,
            _MAX_TAG_VAL_LENGTH,
        )


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _as_float(value: Any) -> float | None:
    """A metric value as float, or None for None, strings and other non-numbers."""
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def end_open_trackers(status: str = "FAILED") -> list[str]:
    """End every run this process still has open with ``status`` (atexit: FAILED); their ids."""
    ended = []
    for tracker in list(_open_trackers):
        try:
            run_id = tracker.run_id
            tracker.end(status)
            ended.append(str(run_id))
        except Exception as exc:
            log.warning("could not end MLflow run %s: %s", tracker.run_id, exc)
    return ended


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, prefixed by its type unless a FedrayError."""
    from fedray.core.errors import FedrayError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, FedrayError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Tracker:
    """One MLflow run; every method is a no-op when ``cfg.enabled`` is false."""

    def __init__(self, cfg: TrackingConfig | DictConfig, cwd: str | Path) -> None:
        self.enabled: bool = bool(getattr(cfg, "enabled", True))
        self.experiment: str = getattr(cfg, "experiment", None) or "fedray"
        self.default_run_name: str | None = getattr(cfg, "run_name", None)
        self.cwd = Path(cwd).resolve()
        self.uri: str = getattr(cfg, "uri", None) or default_tracking_uri(self.cwd)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = False
        self._client: MlflowClient | None = None
        self._ended = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """A run was started and not yet ended."""
        return self.run_id is not None and not self._ended

    @property
    def client(self) -> MlflowClient:
        """The MlflowClient bound to :attr:`uri` (created on first use)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def artifact_location(self) -> str | None:
        """Where a new experiment keeps artifacts: under cwd for local stores, else the server's."""
        return (self.cwd / ARTIFACT_DIR).as_uri() if is_local_uri(self.uri) else None

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self.client
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                return client.create_experiment(
                    self.experiment,
                    artifact_location=self.artifact_location(),
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            except MlflowException:  # created concurrently by a sibling sweep job
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if EXPERIMENT_KIND_TAG not in exp.tags:  # never overrides a kind the user picked
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id

    def _system_tags(self, tags: dict[str, str]) -> dict[str, str]:
        """User, source and git tags as the fluent API records them, then ``tags``."""
        try:
            from mlflow.tracking.context.registry import resolve_tags

            resolved = resolve_tags(tags)
        except Exception as exc:  # context providers are best effort
            log.debug("mlflow context tags unavailable: %s", exc)
            resolved = dict(tags)
        max_len = _limits()[3]
        return {str(k): str(v)[:max_len] for k, v in resolved.items()}

    def start(
        self,
        run_name: str,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> str | None:
        """Create a run (or resume ``run_id``: status back to RUNNING); return its id."""
        if not self.enabled:
            return None
        if self.active:
            raise RuntimeError(f"tracker already has an open run {self.run_id}; end() it first")
        client = self.client
        tags = dict(tags or {})
        if run_id is not None:
            run = client.get_run(run_id)  # raises if the run does not exist
            client.update_run(run_id, status="RUNNING")
            self.experiment_id = run.info.experiment_id
            self.resumed = True
        else:
            if parent_run_id:
                tags[PARENT_RUN_TAG] = parent_run_id
            self.experiment_id = self._experiment_id()
            name = run_name or self.default_run_name or None
            run = client.create_run(self.experiment_id, tags=self._system_tags(tags), run_name=name)
            run_id = run.info.run_id
            tags = {}
            self.resumed = False
        self.run_id, self._ended = run_id, False
        _register(self)
        try:
            if tags:
                self.set_tags(tags)
        except BaseException:
            self.end("FAILED")
            raise
        log.info("MLflow run %s (%s); UI: %s", run_id, self.uri, self.ui_command())
        return run_id

    def end(self, status: str = "FINISHED") -> None:
        """Terminate the run with FINISHED, FAILED or KILLED; later calls do nothing."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if not self.active:
            return
        self.client.set_terminated(self.run_id, status=status)  # on error: retried at exit
        self._ended = True
        _open_trackers.discard(self)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        """End FINISHED; KILLED on Ctrl-C or SIGTERM (KeyboardInterrupt); FAILED if another
        exception (not ``SystemExit(0)``) is escaping, with its first line as ``fedray.error``."""
        clean = exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None))
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        if clean:
            self.end("FINISHED")
            return
        try:  # never mask the exception that is already escaping
            if self.active and not isinstance(exc, KeyboardInterrupt | SystemExit):
                self.set_tags({ERROR_TAG: one_line(exc)})
            self.end(status)
        except Exception as end_exc:
            log.warning("could not mark MLflow run %s %s: %s", self.run_id, status, end_exc)

    # -- logging -----------------------------------------------------------------------------

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set run tags (values stringified and truncated)."""
        if not self.active or not tags:
            return
        from mlflow.entities import RunTag

        per_batch, _, _, max_len = _limits()
        items = [RunTag(str(k), str(v)[:max_len]) for k, v in tags.items()]
        for chunk in _chunks(items, per_batch):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params, at most 100 per call, values truncated to MLflow's limit.

        On a resumed run, params already present with the same value are skipped; a changed
        value cannot be overwritten in MLflow, so it is skipped with a warning.
        """
        if not self.active or not params:
            return
        from mlflow.entities import Param

        per_batch, _, max_len, _ = _limits()
        values = {str(k): str(v)[:max_len] for k, v in params.items()}
        if self.resumed:
            existing = self.client.get_run(self.run_id).data.params
            changed = sorted(k for k, v in values.items() if k in existing and existing[k] != v)
            if changed:
                log.warning("resumed run %s keeps its old params %s", self.run_id, changed)
            values = {k: v for k, v in values.items() if k not in existing}
        items = [Param(k, v) for k, v in values.items()]
        for chunk in _chunks(items, per_batch):
            self.client.log_batch(self.run_id, params=chunk)

    def log_config(self, cfg: DictConfig) -> None:
        """Log the resolved config as dotted params and as the artifact ``config.yaml``."""
        if not self.active:
            return
        node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        self.log_params(flatten_config(node))
        self.log_text(OmegaConf.to_yaml(node, resolve=True), "config.yaml")

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        """Log numeric metrics at ``step`` (None and non-numeric values are skipped)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        items = [
            Metric(str(k), value, timestamp, int(step))
            for k, v in metrics.items()
            if (value := _as_float(v)) is not None
        ]
        for chunk in _chunks(items, _limits()[1]):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file`` (posix path inside the run)."""
        if self.active:
            self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as an artifact (png by extension), then close it."""
        if not self.enabled:
            return
        try:
            if self.active:
                self.client.log_figure(self.run_id, fig, artifact_file)
        finally:
            _close_figure(fig)

    def log_dir(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Upload a directory's contents under ``artifact_path`` (run root if None)."""
        if self.active:
            self.client.log_artifacts(self.run_id, os.fspath(local_dir), artifact_path)

    def log_files(self, files: dict[str, bytes | str], artifact_path: str) -> None:
        """Upload in-memory files (relative posix names -> content) under ``artifact_path``."""
        if not self.active or not files:
            return
        with tempfile.TemporaryDirectory(prefix="fedray-artifacts-") as tmp:
            for name, content in files.items():
                rel = PurePosixPath(name)
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    raise ValueError(f"artifact file name must be relative: {name!r}")
                target = Path(tmp, *rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                data = content.encode() if isinstance(content, str) else bytes(content)
                target.write_bytes(data)
            self.log_dir(tmp, artifact_path)

    # -- helpers -----------------------------------------------------------------------------

    def ui_command(self) -> str:
        """How to browse this run's experiment in the MLflow UI, in its model-training view.

        A server's URL, or ``mlflow ui --backend-store-uri <uri>`` and the page to open. MLflow
        3.17's UI picks the GenAI or model-training view from its sidebar switch, carried as
        ``?workflowType=`` (see :data:`UI_VIEW`), not from the experiment's tags.
        """
        import shlex

        page = f"#/experiments/{self.experiment_id}{UI_VIEW}" if self.experiment_id else ""
        if urlparse(self.uri).scheme in ("http", "https"):
            return f"{self.uri.rstrip('/')}/{page}" if page else self.uri
        command = f"mlflow ui --backend-store-uri {shlex.quote(self.uri)}"
        return f"{command}, then open http://127.0.0.1:5000/{page}" if page else command

    def run_url(self) -> str | None:
        """The run's page relative to the UI root (``#/experiments/<id>/runs/<run id>``)."""
        if self.run_id is None or self.experiment_id is None:
            return None
        return f"#/experiments/{self.experiment_id}/runs/{self.run_id}"


def _register(tracker: Tracker) -> None:
    global _atexit_registered
    _open_trackers.add(tracker)
    if not _atexit_registered:
        atexit.register(end_open_trackers)
        _atexit_registered = True


def _close_figure(fig: Any) -> None:
    """Release a figure; only pyplot-managed figures need pyplot.close."""
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)


__all__ = [
    "Tracker",
    "default_tracking_uri",
    "end_open_trackers",
    "flatten_config",
    "is_local_uri",
    "one_line",
]
