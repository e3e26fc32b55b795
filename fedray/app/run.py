"""One experiment, end to end: spec, data, tracking, Ray, the driver's event stream, clean-up."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig

from fedray.app.silos import SiloRun
from fedray.app.spec import build_spec
from fedray.core import registry
from fedray.core.config import FedrayConfig
from fedray.core.errors import DataError, FedrayError
from fedray.core.events import Done, Evaluated, Ready, RoundEnd
from fedray.tasks.base import Objective, Task
from fedray.tracking.failures import last_logged_round, record_failures

RUN_INFO = "fedray_run.json"
OBJECTIVE_TAG = "fedray.objective"  # the logged metric a sweep optimises, e.g. eval_accuracy
DIRECTION_TAG = "fedray.direction"  # maximize | minimize

# Called after each round's metrics are logged, with (round, metrics); a returned string stops
# the run there (the MLflow run ends FINISHED with that reason in `fedray.stop_reason`).
RoundHook = Callable[[int, dict[str, float]], str | None]


@dataclass
class RunResult:
    """What a finished experiment reports back (the CLI returns `metric` to sweepers)."""

    run_id: str | None
    objective: Objective
    history: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""
    ui_command: str = ""
    wall_s: float = 0.0
    ready: Ready | None = None
    initial: dict[str, float] = field(default_factory=dict)
    stop_reason: str | None = None
    silos: dict[str, Any] | None = None  # cross-silo runs: where data stayed, who trained

    @property
    def metric(self) -> float:
        """The task's objective at its last evaluation (NaN if nothing was evaluated)."""
        for row in reversed(self.history):
            if self.objective.key in row:
                return float(row[self.objective.key])
        return math.nan


class Progress:
    """Prints a per-round table while the run goes: the task's own metrics, MB up and down."""

    def __init__(self, task: Task, out: TextIO | None = sys.stdout) -> None:
        self.out = out
        metrics = [f"eval_{m}" for m in task.display]
        self.cols = ("round", "clients", "failed", "train_loss", *metrics, "MB_up", "MB_down")
        self.cols += ("secs",)
        self.keys = ("round", "clients_ok", "clients_failed", "train_loss", *metrics)
        self.keys += ("bytes_up", "bytes_down", "round_s")

    def line(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def header(self, rounds: int) -> None:
        width = max(11, *(len(c) + 2 for c in self.cols))
        self.width = width
        self.line(f"{rounds} rounds\n" + "".join(f"{c:>{width}}" for c in self.cols))

    def row(self, end: RoundEnd) -> None:
        w = getattr(self, "width", 11)

        def fmt(key: str) -> str:
            if key == "round":
                return f"{end.round:>{w}}"
            v = end.metrics.get(key)
            if v is None:
                return f"{'-':>{w}}"
            if key.startswith("bytes_"):
                return f"{v / 1e6:>{w}.3f}"
            if key.startswith("clients"):
                return f"{int(v):>{w}}"
            return f"{v:>{w}.4f}"

        self.line("".join(fmt(k) for k in self.keys))


def prepare_data(cfg: DictConfig | FedrayConfig) -> tuple[FedrayConfig, Any]:
    """Validate and build the federated data: everything that can fail before anything starts."""
    from fedray.data import build_federated_data
    from fedray.models.paths import resolve_model_path

    spec = cfg if isinstance(cfg, FedrayConfig) else build_spec(cfg)
    resolve_model_path(spec.model.name_or_path)  # a bad local path: one line, nothing started
    data = build_federated_data(spec.data, spec.partition, spec.seed)
    check_clients(spec, data.client_sizes().tolist(), data.corpus.labels is not None)
    return spec, data


def check_clients(spec: FedrayConfig, client_sizes: list[int], labeled: bool) -> None:
    """The checks that need the clients: labels for the task, enough clients for a cohort, the
    selector's own (e.g. power_of_choice's d <= clients), and seed collisions."""
    from fedray.data.base import needs_labels

    num_clients = len(client_sizes)
    if needs_labels(spec.data.task) and not labeled:
        raise DataError(
            f"data.task={spec.data.task} needs class labels but data={spec.data.name} has none"
        )
    if spec.mode.clients_per_round > num_clients:
        raise DataError(
            f"mode.clients_per_round={spec.mode.clients_per_round} exceeds the "
            f"{num_clients} clients the partition produced; lower it"
        )
    try:
        registry.build(
            "selection",
            spec.selection,
            num_clients=num_clients,
            seed=spec.seed,
            client_sizes=client_sizes,
        )
    except ValueError as exc:
        raise DataError(str(exc)) from None
    c = spec.client
    if c.seed_scheme == "linear" and num_clients > c.round_stride:
        raise DataError(
            f"client.seed_scheme=linear needs client.round_stride >= {num_clients} (the "
            f"number of clients) so seeds do not collide; raise it or set client.seed_scheme=hash"
        )


def prepare(cfg: DictConfig | FedrayConfig):
    """:func:`prepare_data`, then encode it (in a child process): (spec, data, encoded)."""
    from fedray.client.dataset import encode_isolated

    spec, data = prepare_data(cfg)
    return spec, data, encode_isolated(spec.data.task, spec.model, data, spec.data.max_length)


def run_experiment(
    cfg: DictConfig,
    run_dir: str | Path,
    *,
    cwd: str | Path,
    resume_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    out: TextIO | None = sys.stdout,
    on_round: RoundHook | None = None,
) -> RunResult:
    """Run one experiment; always ends the MLflow run and shuts down the Ray it started.

    `on_round` (e.g. a tuner's pruner) sees each round's metrics and may stop the run there: the
    driver and its client actors are killed, so the run stops within the round under way.
    """
    import ray

    from fedray.app.cluster import ray_session
    from fedray.app.preflight import check_tracking_uri
    from fedray.client.dataset import EncodeJob
    from fedray.server.driver import start
    from fedray.tracking.plots import curve_figure, label_histogram_figure, traffic_figure
    from fedray.tracking.tracker import Tracker

    t0 = time.perf_counter()
    for noisy in ("alembic", "mlflow.store.db.utils"):  # schema-migration chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_dir = Path(run_dir)
    spec = build_spec(cfg)
    if spec.tracking.enabled:  # an unreachable server: one line in seconds, before Ray starts
        check_tracking_uri(spec.tracking.uri)
    silos: SiloRun | None = None
    data: Any = None  # the federated data, when this process loads it (no silos)
    task: Task = registry.build("task", {"name": spec.data.task})
    progress = Progress(task, out)
    result = RunResult(run_id=None, objective=task.objective)
    # The encoding child runs while Ray starts (about 3 s on a 2-core machine). Its errors (a
    # bad model path) surface at `result()`, before any MLflow run is opened; leaving the block
    # stops the child whatever happened. A cross-silo run loads nothing here: each silo's
    # samples are read, split and encoded on its own node (fedray.app.silos).
    with ExitStack() as stack:
        if spec.cluster.silos:
            stack.enter_context(ray_session(spec.cluster))
            silos = SiloRun(spec)
            check_clients(spec, silos.client_sizes(), silos.label_names is not None)
            labels, sizes = silos.label_names, silos.client_sizes()
        else:
            spec, data = prepare_data(spec)
            labels, sizes = data.corpus.label_names, data.client_sizes().tolist()
            encoding = stack.enter_context(
                EncodeJob(spec.data.task, spec.model, data, spec.data.max_length)
            )
            stack.enter_context(ray_session(spec.cluster))
            encoded = encoding.result()
        with Tracker(spec.tracking, cwd) as tracker:
            objective_tags = {
                OBJECTIVE_TAG: task.objective.key,
                DIRECTION_TAG: task.objective.direction,
            }
            result.run_id = tracker.start(
                run_name=run_name or spec.tracking.run_name or spec.name,
                tags={**objective_tags, **(tags or {})},
                run_id=resume_run_id,
            )
            _write_run_info(run_dir, result.run_id, tracker.uri)
            if resume_run_id is None:
                tracker.log_config(cfg)
                if labels and tracker.enabled:  # matplotlib only when logged
                    histogram = (silos or data).label_histogram()
                    tracker.log_figure(
                        label_histogram_figure(histogram, labels), "label_histogram.png"
                    )
            if silos is not None:
                actor_data: Any = silos.encode()  # one group per silo, arrays on its node
            else:
                actor_data = ray.put(encoded)
                del encoded  # the object store holds the one copy the actors read
            driver = start(
                spec,
                actor_data,
                sizes,
                len(labels) if labels else None,
                checkpoint_dir=str(run_dir / "checkpoint"),
            )
            schedule: list[list[int]] = []
            trained_on: dict[int, set[str]] = {}
            logged = last_logged_round(tracker) if resume_run_id else 0
            for ref in driver.run.remote(resume=resume_run_id is not None):
                event = _unwrap(ref)
                if isinstance(event, Ready):
                    result.ready = event
                    progress.line(
                        f"{len(event.actors)} client actors ready in "
                        f"{event.startup_s:.1f} s; {event.num_clients} clients"
                    )
                    progress.header(spec.mode.rounds)
                    model = event.actors[0] if event.actors else {}
                    tracker.log_params({f"model.{k}": model[k] for k in SIZE_KEYS if k in model})
                elif isinstance(event, Evaluated):
                    result.initial = {f"eval_{k}": v for k, v in event.metrics.items()}
                    progress.line(f"initial model: {result.initial}")
                    tracker.log_metrics(result.initial, step=0)
                elif isinstance(event, RoundEnd):
                    schedule.append(event.selected)
                    for cid, node in event.nodes.items():
                        trained_on.setdefault(cid, set()).add(node)
                    progress.row(event)
                    row = {"round": event.round, **event.metrics}
                    result.history.append(row)
                    if event.round > logged:  # a resumed run re-plays rounds after its checkpoint
                        tracker.log_metrics(event.metrics, step=event.round)
                    record_failures(tracker, event, progress)
                    stop = on_round(event.round, dict(event.metrics)) if on_round else None
                    if stop:
                        ray.kill(driver)  # its client actors die with it (Ray owns them by it)
                        result.stop_reason = stop
                        progress.line(f"stopped: {stop}")
                        tracker.set_tags({"fedray.stop_reason": stop})
                        break
                elif isinstance(event, Done):
                    if event.model_files:
                        tracker.log_files(event.model_files, "model")
                    if event.stop_reason:
                        result.stop_reason = event.stop_reason
                        progress.line(f"stopped early: {event.stop_reason}")
                        tracker.set_tags({"fedray.stop_reason": event.stop_reason})
            if result.history and tracker.enabled:
                keys = [f"eval_{m}" for m in task.display] + ["train_loss"]
                keys = [k for k in keys if any(k in row for row in result.history)]
                tracker.log_figure(curve_figure(result.history, keys, spec.name), "curves.png")
                tracker.log_figure(traffic_figure(result.history, spec.name), "traffic.png")
            if (summary := traffic_summary(result.history)) is not None:
                progress.line(summary)
            result.fingerprint = (silos or data).fingerprint(schedule)
            tracker.log_text(json.dumps({"data_fingerprint": result.fingerprint}), "data.json")
            if silos is not None:
                result.silos = silos.report(trained_on)
                tracker.log_text(json.dumps(result.silos, indent=1), "silos.json")
            result.ui_command = tracker.ui_command()
    result.wall_s = time.perf_counter() - t0
    if result.run_id:
        progress.line(f"MLflow run {result.run_id}; open the UI with: {result.ui_command}")
    return result


SIZE_KEYS = ("model_params", "model_fp32_bytes", "trainable_params")


def traffic_summary(history: list[dict[str, Any]]) -> str | None:
    """One line on the bytes of the rounds in `history`: totals, and how many times fewer the
    uplink sent than dense float32 of the same tensors and than the whole model per update."""
    rows = [r for r in history if "bytes_up" in r]
    if not rows:
        return None
    last = rows[-1]
    up = sum(r["bytes_up"] for r in rows)
    text = (
        f"bytes: {last['bytes_up_total'] / 1e6:.3f} MB up, "
        f"{last['bytes_down_total'] / 1e6:.3f} MB down in all"
    )
    pairs = (
        ("compression_up", "the same tensors as float32"),
        ("compression_up_vs_model", "the full model as float32"),
    )
    ratios = [
        f"{sum(r['bytes_up'] * r[key] for r in rows) / up:,.1f}x smaller than {what}"
        for key, what in pairs
        if up > 0 and all(key in r for r in rows)
    ]
    return text + (f"; updates {', '.join(ratios)}" if ratios else "")


def _unwrap(ref: Any) -> Any:
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
