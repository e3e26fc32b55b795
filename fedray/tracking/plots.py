"""Figures logged as run artifacts: the partition's label histogram and per-round curves.

Figures are built on matplotlib's Agg canvas directly (no pyplot, so no global figure state and
no display backend); matplotlib is imported inside the functions to keep ``import fedray`` fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_CLIENTS_SHOWN = 100
MAX_LEGEND_LABELS = 20


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _no_data(fig: Figure, title: str) -> Figure:
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def label_histogram_figure(hist: np.ndarray, label_names: list[str] | None) -> Figure:
    """Stacked bar of label counts per client from ``hist[n_clients, n_labels]``.

    Only the first 100 clients (by id, i.e. row order) are drawn; the title says so.
    """
    counts = np.asarray(hist)
    if counts.ndim != 2:
        raise ValueError(f"hist must be [n_clients, n_labels], got shape {counts.shape}")
    n_clients, n_labels = counts.shape
    if label_names is not None and len(label_names) != n_labels:
        raise ValueError(f"{len(label_names)} label names for {n_labels} labels")
    names = list(label_names) if label_names is not None else [str(i) for i in range(n_labels)]
    shown = min(n_clients, MAX_CLIENTS_SHOWN)
    title = f"Label distribution over {n_clients} clients"
    if shown < n_clients:
        title += f" (first {shown} by id)"
    fig = _new_figure(max(6.0, min(24.0, 2.0 + 0.18 * shown)), 4.5)
    if n_clients == 0 or n_labels == 0:
        return _no_data(fig, title)

    import matplotlib

    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab20" if n_labels <= 20 else "viridis"]
    colors = [cmap(i if n_labels <= 20 else i / max(1, n_labels - 1)) for i in range(n_labels)]
    x = np.arange(shown)
    bottom = np.zeros(shown)
    for j in range(n_labels):
        col = counts[:shown, j].astype(float)
        ax.bar(x, col, bottom=bottom, color=colors[j], width=0.85, label=names[j])
        bottom += col
    ax.set_title(title)
    ax.set_xlabel("client id")
    ax.set_ylabel("samples")
    ax.set_xlim(-0.6, shown - 0.4)
    step = max(1, math.ceil(shown / 25))
    ax.set_xticks(x[::step])
    if n_labels <= MAX_LEGEND_LABELS:
        ax.legend(title="label", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.text(1.01, 1.0, f"{n_labels} labels", transform=ax.transAxes, va="top")
    return fig


def _points(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        value, rnd = row.get(key), row.get("round")
        if value is None or rnd is None or isinstance(value, str):
            continue
        try:
            y = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(y):
            xs.append(float(rnd))
            ys.append(y)
    order = np.argsort(xs, kind="stable")
    return [xs[i] for i in order], [ys[i] for i in order]


def curve_figure(history: list[dict[str, float]], keys: list[str], title: str) -> Figure:
    """One panel per key against ``round``, stacked on a shared round axis.

    Each metric keeps its own y scale (an accuracy near 0.3 next to a loss near 1.6 on one axis
    would be flattened); rounds lacking a key are skipped for it, keys with no point get no panel.
    """
    series = {key: _points(history, key) for key in keys}
    series = {key: pts for key, pts in series.items() if pts[0]}
    if not series:
        return _no_data(_new_figure(6.5, 4.0), title)
    fig = _new_figure(6.5, 1.2 + 2.1 * len(series))
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, (xs, ys)) in zip(axes, series.items(), strict=True):
        ax.plot(xs, ys, marker="o" if len(xs) <= 50 else None, markersize=3, label=key)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    fig.suptitle(title)
    axes[-1].set_xlabel("round")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def traffic_figure(history: list[dict[str, float]], title: str) -> Figure:
    """Bytes per round: cumulative MB up and down (left), and the spread of one client's
    upload within each round, min / median / p90 / max (right)."""
    fig = _new_figure(10.0, 4.0)
    totals = {k: _points(history, f"bytes_{k}_total") for k in ("up", "down")}
    if not any(xs for xs, _ in totals.values()):
        return _no_data(fig, title)
    left, right = fig.subplots(1, 2)
    for way, (xs, ys) in totals.items():
        left.plot(xs, [y / 1e6 for y in ys], marker="o", markersize=3, label=f"{way}link")
    left.set_title(f"{title}: cumulative MB")
    left.set_xlabel("round")
    left.legend(fontsize="small")
    for q in ("min", "p50", "p90", "max"):
        xs, ys = _points(history, f"bytes_up_client_{q}")
        if xs:
            right.plot(xs, [y / 1e3 for y in ys], marker="o", markersize=3, label=q)
    right.set_title("uplink kB per client, per round")
    right.set_xlabel("round")
    right.legend(fontsize="small")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig
