"""One experiment, end to end: data, tracking, Ray, the driver's event stream, clean-up."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig

from fedray.config import validate
from fedray.errors import DataError, FedrayError
from fedray.server.failures import last_logged_round, record_failures

RUN_INFO = "fedray_run.json"


@dataclass
class RunResult:
    """What a finished experiment reports back (the CLI returns `metric` to sweepers)."""

    run_id: str | None
    history: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""
    ui_command: str = ""
    wall_s: float = 0.0
    ready: dict[str, Any] = field(default_factory=dict)
    initial: dict[str, float] = field(default_factory=dict)

    @property
    def metric(self) -> float:
        """The last evaluated accuracy (NaN if nothing was evaluated)."""
        for row in reversed(self.history):
            if "eval_accuracy" in row:
                return float(row["eval_accuracy"])
        return math.nan


class Progress:
    """Prints a per-round table while the run goes."""

    COLS = ("round", "clients", "failed", "train_loss", "eval_acc", "eval_loss", "secs")

    def __init__(self, out: TextIO | None = sys.stdout) -> None:
        self.out = out

    def line(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def header(self, rounds: int) -> None:
        self.line(f"{rounds} rounds\n" + "".join(f"{c:>11}" for c in self.COLS))

    def row(self, m: dict[str, Any]) -> None:
        def fmt(v: Any) -> str:
            return f"{v:>11.4f}" if isinstance(v, float) else f"{'-' if v is None else v:>11}"

        vals = (
            m["round"],
            m["clients_ok"],
            m["clients_failed"],
            m["train_loss"],
            m.get("eval_accuracy"),
            m.get("eval_loss"),
            m["round_s"],
        )
        self.line("".join(fmt(v) for v in vals))


def prepare_data(cfg: DictConfig):
    """Validate and build the federated data: everything that can fail before anything starts."""
    from fedray.data import build_federated_data
    from fedray.model_paths import resolve_model_path

    validate(cfg)
    resolve_model_path(cfg.model.name_or_path)  # a bad local path: one line, nothing started
    data = build_federated_data(cfg.data, cfg.partition, cfg.seed)
    if cfg.mode.clients_per_round > data.num_clients():
        raise DataError(
            f"mode.clients_per_round={cfg.mode.clients_per_round} exceeds the "
            f"{data.num_clients()} clients the partition produced; lower it"
        )
    d = cfg.selection.get("d")
    if d is not None and d > data.num_clients():
        raise DataError(
            f"selection.d={d} exceeds the {data.num_clients()} clients the partition produced; "
            "lower it"
        )
    c = cfg.client
    if c.seed_scheme == "linear" and data.num_clients() > c.round_stride:
        raise DataError(
            f"client.seed_scheme=linear needs client.round_stride >= {data.num_clients()} (the "
            f"number of clients) so seeds do not collide; raise it or set client.seed_scheme=hash"
        )
    return data


def prepare(cfg: DictConfig):
    """:func:`prepare_data`, then tokenize it (in a child process): (data, encoded)."""
    from fedray.client.dataset import tokenize_isolated

    data = prepare_data(cfg)
    return data, tokenize_isolated(cfg.model, data, cfg.data.max_length)


def run_experiment(
    cfg: DictConfig,
    run_dir: str | Path,
    *,
    cwd: str | Path,
    resume_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    out: TextIO | None = sys.stdout,
) -> RunResult:
    """Run one experiment; always ends the MLflow run and shuts down the Ray it started."""
    import ray

    from fedray.client.dataset import TokenizeJob
    from fedray.cluster import ray_session
    from fedray.plots import curve_figure, label_histogram_figure
    from fedray.server.driver import start
    from fedray.tracking import Tracker

    t0 = time.perf_counter()
    for noisy in ("alembic", "mlflow.store.db.utils"):  # schema-migration chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_dir = Path(run_dir)
    progress = Progress(out)
    data = prepare_data(cfg)
    task, labels = data.corpus.task, data.corpus.label_names
    num_labels = len(labels) if labels else None
    result = RunResult(run_id=None)
    # The tokenizer child runs while Ray starts (about 3 s on a 2-core machine). Its errors (a
    # bad model path) surface at `result()`, before any MLflow run is opened; leaving the block
    # stops the child whatever happened.
    with (
        TokenizeJob(cfg.model, data, cfg.data.max_length) as tokenized,
        ray_session(cfg.cluster),
    ):
        encoded = tokenized.result()
        with Tracker(cfg.tracking, cwd) as tracker:
            result.run_id = tracker.start(
                run_name=run_name or cfg.tracking.run_name or cfg.name,
                tags=tags,
                run_id=resume_run_id,
            )
            _write_run_info(run_dir, result.run_id, tracker.uri)
            if resume_run_id is None:
                tracker.log_config(cfg)
                if task == "classification" and tracker.enabled:  # matplotlib only when logged
                    tracker.log_figure(
                        label_histogram_figure(data.label_histogram(), labels),
                        "label_histogram.png",
                    )
            data_ref = ray.put(encoded)
            del encoded  # the object store holds the one copy the actors read
            driver = start(
                cfg,
                data_ref,
                data.num_clients(),
                task,
                num_labels,
                checkpoint_dir=str(run_dir / "checkpoint"),
            )
            schedule: list[list[int]] = []
            logged = last_logged_round(tracker) if resume_run_id else 0
            for ref in driver.run.remote(resume=resume_run_id is not None):
                event = _unwrap(ref)
                if event["event"] == "ready":
                    result.ready = event
                    progress.line(
                        f"{len(event['actors'])} client actors ready in "
                        f"{event['startup_s']:.1f} s; {data.num_clients()} clients"
                    )
                    progress.header(cfg.mode.rounds)
                elif event["event"] == "initial":
                    result.initial = {k: v for k, v in event.items() if k.startswith("eval_")}
                    progress.line(f"initial model: {result.initial}")
                    tracker.log_metrics(result.initial, step=0)
                elif event["event"] == "round":
                    schedule.append(event["selected"])
                    progress.row(event)
                    row = {
                        k: v
                        for k, v in event.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)
                    }
                    result.history.append(row)
                    if (
                        event["round"] > logged
                    ):  # a resumed run re-plays rounds after its checkpoint
                        tracker.log_metrics(row, step=event["round"])
                    record_failures(tracker, event, progress)
                elif event["event"] == "done" and event["model_files"]:
                    tracker.log_files(event["model_files"], "model")
            if result.history and tracker.enabled:
                keys = [k for k in ("eval_accuracy", "train_loss") if k in result.history[-1]]
                tracker.log_figure(curve_figure(result.history, keys, cfg.name), "curves.png")
            result.fingerprint = data.fingerprint(schedule)
            tracker.log_text(json.dumps({"data_fingerprint": result.fingerprint}), "data.json")
            result.ui_command = tracker.ui_command()
    result.wall_s = time.perf_counter() - t0
    if result.run_id:
        progress.line(f"MLflow run {result.run_id}; open the UI with: {result.ui_command}")
    return result


def _unwrap(ref: Any) -> dict[str, Any]:
    """ray.get an event; a FedrayError raised inside the driver comes out as itself."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, FedrayError | ValueError):
            raise FedrayError(str(cause).strip().splitlines()[0]) from None
        raise


def _write_run_info(run_dir: Path, run_id: str | None, uri: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_INFO).write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
