"""Failures and resumed runs in MLflow: what the CLI records beside the per-round metrics."""

from __future__ import annotations

import json
from typing import Any

from fedray.core.events import RoundEnd
from fedray.tracking.tracker import Tracker

ROUND_METRIC = "round_s"  # logged once per completed round


def record_failures(tracker: Tracker, event: RoundEnd, progress: Any) -> None:
    """Print each failure of a round and keep them as `failures/round_NNNN.json`."""
    for f in event.failures:
        progress.line(f"  client {f.client_id} failed: {f.error}")
    if event.failures:
        rows = [{"client_id": int(f.client_id), "error": f.error} for f in event.failures]
        tracker.log_text(json.dumps(rows, indent=1), f"failures/round_{event.round:04d}.json")


def last_logged_round(tracker: Tracker) -> int:
    """The last round a (resumed) MLflow run holds metrics for; 0 when none or untracked.

    A run killed after logging round r but before checkpointing it re-plays round r on
    resume (bit-identically); skipping steps <= this keeps every metric step unique.
    """
    if not tracker.active:
        return 0
    history = tracker.client.get_metric_history(tracker.run_id, ROUND_METRIC)
    return max((int(m.step) for m in history), default=0)
