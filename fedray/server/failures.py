"""Failures and resumed runs in MLflow: what the CLI records beside the per-round metrics."""

from __future__ import annotations

import json
from typing import Any

from fedray.tracking import Tracker

ROUND_METRIC = "round_s"  # logged once per completed round


def record_failures(tracker: Tracker, event: dict[str, Any], progress: Any) -> None:
    """Print each failure of a round event and keep them as `failures/round_NNNN.json`."""
    failures = event.get("failures") or []
    for cid, err in failures:
        progress.line(f"  client {cid} failed: {err}")
    if failures:
        rows = [{"client_id": int(cid), "error": str(err)} for cid, err in failures]
        tracker.log_text(json.dumps(rows, indent=1), f"failures/round_{event['round']:04d}.json")


def last_logged_round(tracker: Tracker) -> int:
    """The last round a (resumed) MLflow run holds metrics for; 0 when none or untracked.

    A run killed after logging round r but before checkpointing it re-plays round r on
    resume (bit-identically); skipping steps <= this keeps every metric step unique.
    """
    if not tracker.active:
        return 0
    history = tracker.client.get_metric_history(tracker.run_id, ROUND_METRIC)
    return max((int(m.step) for m in history), default=0)
