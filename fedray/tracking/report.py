"""A self-contained HTML report of runs read back from MLflow.

:func:`collect` reads the runs (children of a sweep's parent run, or every run of experiments,
narrowed by tags) with their per-round metric histories; :func:`write_report` draws the PNG
plots (objective vs round, vs cumulative bytes, vs epsilon when runs log `epsilon`) and writes
`report.html` with the images embedded, a table of the final objective by the swept axes (mean
and spread over seeds) and one row per run. Nothing in the page is fetched from elsewhere.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedray.tracking.tracker import PARENT_RUN_TAG

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient

AXIS_PREFIX = "sweep."
SEED_AXIS = "seed"
DEFAULT_OBJECTIVE = "eval_accuracy"
BYTES_KEYS = ("bytes_up", "bytes_down")
MAX_LEGEND = 16


@dataclass
class RunData:
    """One run: identity, swept-axis values, and the histories the report draws."""

    run_id: str
    name: str
    status: str
    axes: dict[str, str]
    objective: str
    direction: str
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    error: str = ""

    def final(self, key: str) -> float | None:
        points = self.history.get(key) or []
        return points[-1][1] if points else None

    def cumulative_mb(self) -> dict[int, float]:
        """Bytes up + down summed over rounds up to each round, in MB."""
        per_round: dict[int, float] = {}
        for key in BYTES_KEYS:
            for step, value in self.history.get(key, []):
                per_round[step] = per_round.get(step, 0.0) + value
        total, out = 0.0, {}
        for step in sorted(per_round):
            total += per_round[step]
            out[step] = total / 1e6
        return out


@dataclass
class Selection:
    """Which runs a report covers (what `fedray report` was asked for)."""

    tracking_uri: str
    experiments: list[str] = field(default_factory=list)
    parent: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metric: str | None = None

    def describe(self) -> str:
        parts = [f"tracking {self.tracking_uri}"]
        if self.parent:
            parts.append(f"children of run {self.parent}")
        if self.experiments:
            parts.append("experiments " + ", ".join(self.experiments))
        parts += [f"{k}={v}" for k, v in self.tags.items()]
        return "; ".join(parts)


def _filter(selection: Selection) -> str:
    clauses = [f"tags.`{PARENT_RUN_TAG}` = '{selection.parent}'"] if selection.parent else []
    for key, value in selection.tags.items():
        clauses.append(f"tags.`{key}` = '{value}'")
    return " and ".join(clauses)


def collect(client: MlflowClient, selection: Selection) -> tuple[list[RunData], list[str]]:
    """The selected runs (oldest first) and the swept axes; ValueError naming what is missing."""
    from mlflow.entities import ViewType

    axes: list[str] = []
    if selection.parent:
        parent = client.get_run(selection.parent)
        experiment_ids = [parent.info.experiment_id]
        axes = [a for a in parent.data.tags.get("fedray.sweep_axes", "").split(",") if a]
    else:
        experiment_ids = []
        for name in selection.experiments:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                known = ", ".join(e.name for e in client.search_experiments())
                raise ValueError(f"--experiment {name}: no such MLflow experiment; known: {known}")
            experiment_ids.append(exp.experiment_id)
    runs = client.search_runs(
        experiment_ids, _filter(selection), run_view_type=ViewType.ACTIVE_ONLY, max_results=5000
    )
    runs = [r for r in runs if "fedray.sweep_axes" not in r.data.tags]  # parents hold no rounds
    if not runs:
        raise ValueError(f"no runs match ({selection.describe()})")
    if not axes:
        axes = sorted(
            {k[len(AXIS_PREFIX) :] for r in runs for k in r.data.tags if k.startswith(AXIS_PREFIX)}
        )
    out = []
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        tags = run.data.tags
        objective = selection.metric or tags.get("fedray.objective", DEFAULT_OBJECTIVE)
        data = RunData(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id[:8],
            status=run.info.status,
            axes={a: tags.get(AXIS_PREFIX + a, "") for a in axes},
            objective=objective,
            direction=tags.get("fedray.direction", "maximize"),
            error=tags.get("fedray.error", ""),
        )
        for key in (objective, *BYTES_KEYS, "epsilon"):
            if key in run.data.metrics:
                history = client.get_metric_history(run.info.run_id, key)
                data.history[key] = sorted((int(m.step), float(m.value)) for m in history)
        out.append(data)
    return out, axes


def group_key(run: RunData) -> tuple[tuple[str, str], ...]:
    """The run's axis values other than the seed (runs differing only in seed form a group)."""
    return tuple((a, v) for a, v in run.axes.items() if a != SEED_AXIS)


def _label(key: tuple[tuple[str, str], ...], run: RunData) -> str:
    return " ".join(f"{a}={v}" for a, v in key) if key else run.name


@dataclass
class GroupRow:
    """The final objective of one group of runs (same axes, any seed)."""

    key: tuple[tuple[str, str], ...]
    values: list[float]
    runs: int

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def final_table(runs: list[RunData]) -> list[GroupRow]:
    """One row per group: the final objective of its finished runs, mean and spread."""
    groups: dict[tuple[tuple[str, str], ...], GroupRow] = {}
    for run in runs:
        row = groups.setdefault(group_key(run), GroupRow(group_key(run), [], 0))
        row.runs += 1
        value = run.final(run.objective)
        if value is not None and math.isfinite(value):
            row.values.append(value)
    return list(groups.values())


def _new_figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _lines(ax: Any, runs: list[RunData], xs_of: Any, key: str) -> int:
    """One line per run, one colour per group (seeds of a group share it); lines drawn."""
    import matplotlib

    groups = list(dict.fromkeys(group_key(r) for r in runs))
    cmap = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"]
    drawn, labelled = 0, set()
    for run in runs:
        xs, ys = [], []
        for step, value in run.history.get(key, []):
            x = xs_of(run, step)
            if x is not None and math.isfinite(value):
                xs.append(x)
                ys.append(value)
        if not xs:
            continue
        g = groups.index(group_key(run))
        label = _label(group_key(run), run) if g not in labelled else None
        labelled.add(g)
        ax.plot(xs, ys, marker="o", markersize=3, color=cmap(g % cmap.N), label=label, alpha=0.85)
        drawn += 1
    if drawn and len(labelled) <= MAX_LEGEND:  # beside the axes, never over the lines
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return drawn


def figures(runs: list[RunData]) -> dict[str, Figure]:
    """name.png -> figure: objective vs round, vs cumulative MB, vs epsilon (if logged)."""
    key = runs[0].objective
    out: dict[str, Figure] = {}
    from matplotlib.ticker import MaxNLocator

    fig, ax = _new_figure(f"{key} by round", "round", key)
    _lines(ax, runs, lambda run, step: step, key)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    out["objective_vs_round.png"] = fig
    totals = [v for r in runs for v in r.cumulative_mb().values() if v > 0]
    if totals:
        fig, ax = _new_figure(f"{key} by bytes sent (up + down)", "cumulative MB", key)
        _lines(ax, runs, lambda run, step: run.cumulative_mb().get(step), key)
        if max(totals) > 20 * min(totals):  # codecs that differ by orders of magnitude
            ax.set_xscale("log")
        out["objective_vs_bytes.png"] = fig
    if any(r.history.get("epsilon") for r in runs):
        fig, ax = _new_figure(f"{key} by privacy spent", "epsilon", key)

        def epsilon_at(run: RunData, step: int) -> float | None:
            eps = [v for s, v in run.history.get("epsilon", []) if s <= step]
            return eps[-1] if eps else None

        _lines(ax, runs, epsilon_at, key)
        out["objective_vs_epsilon.png"] = fig
    return out


def _png(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4f}"


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}
td.num{text-align:right}.meta{color:#666}.best{font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
"""


def render_html(
    runs: list[RunData], axes: list[str], selection: Selection, images: dict[str, bytes]
) -> str:
    """The report page; `images` (name -> PNG bytes) are embedded as data URIs."""
    key, direction = runs[0].objective, runs[0].direction
    rows = final_table(runs)
    best = None
    finite = [r for r in rows if r.values]
    if finite:
        pick = max if direction == "maximize" else min
        best = pick(finite, key=lambda r: r.mean)
    shown_axes = [a for a in axes if a != SEED_AXIS]
    seeds = sorted({r.axes.get(SEED_AXIS, "") for r in runs} - {""})
    group_rows = []
    for row in sorted(rows, key=lambda r: r.key):
        values = dict(row.key)
        mark = " (best)" if row is best else ""
        group_rows.append(
            [
                *(values.get(a, "") for a in shown_axes),
                f"{_fmt(row.mean)}{mark}",
                _fmt(row.std) if len(row.values) > 1 else "-",
                f"{len(row.values)}/{row.runs}",
            ]
        )
    head = [*shown_axes, f"final {key} (mean)", "spread (std over seeds)", "finished/runs"]
    run_rows = []
    for run in runs:
        mb = run.cumulative_mb()
        eps = run.final("epsilon")
        rounds = run.history.get(key, [])
        run_rows.append(
            [
                run.name,
                run.status,
                *(run.axes.get(a, "") for a in axes),
                _fmt(run.final(key)),
                str(rounds[-1][0]) if rounds else "-",
                f"{max(mb.values()):.3f}" if mb else "-",
                _fmt(eps),
                run.error,
            ]
        )
    run_head = ["run", "status", *axes, f"final {key}", "last round", "MB sent", "epsilon"]
    run_head.append("error")
    imgs = "".join(
        f"<h2>{html.escape(name.removesuffix('.png').replace('_', ' '))}</h2>"
        f'<img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}">'
        for name, data in images.items()
    )
    seed_note = f"seeds {', '.join(seeds)}" if seeds else "one run per configuration"
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>fedray report: {html.escape(key)}</title><style>{CSS}</style></head><body>"
        f"<h1>fedray report</h1><p class='meta'>{html.escape(selection.describe())}<br>"
        f"{len(runs)} runs; objective {html.escape(key)} ({html.escape(direction)}); "
        f"{html.escape(seed_note)}; generated {generated}</p>"
        f"<h2>final {html.escape(key)} by {html.escape(', '.join(shown_axes) or 'run')}</h2>"
        f"{_table(head, group_rows, 'groups')}{imgs}<h2>runs</h2>{_table(run_head, run_rows)}"
        "</body></html>"
    )


def write_report(runs: list[RunData], axes: list[str], selection: Selection, out_dir: Path) -> Path:
    """Write the PNGs and `report.html` under `out_dir`; return the HTML's path."""
    from fedray.tracking.tracker import _close_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}
    for name, fig in figures(runs).items():
        images[name] = _png(fig)
        _close_figure(fig)
        (out_dir / name).write_bytes(images[name])
    page = out_dir / "report.html"
    page.write_text(render_html(runs, axes, selection, images), encoding="utf-8")
    return page
