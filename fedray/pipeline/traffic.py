"""Bytes that travel: per round, per client, in total, and against dense float32.

A byte is counted when it is sent, whether or not its update is accepted: `up` is every update
that came back (its payload plus the algorithm's extra state), `down` every broadcast a client
call received (the downlink codec's payload plus the strategy's extra state; a retried call
receives it again). "Dense" is the same tensors as float32; "model" is the whole model (every
parameter, adapters excluded) as float32, the size one full fine-tuning update would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.checkpoint import check_state_keys

Sent = tuple[int, int]
"""(bytes that travelled, bytes of the same tensors as dense float32)."""

QUANTILES = {"min": 0, "p50": 50, "p90": 90, "max": 100}


@dataclass
class Traffic:
    """Counts bytes; the totals are checkpointed with the pipeline, so a resumed run's continue.

    `model_bytes` (the whole model as float32, reported by the client actors when they start)
    is not state: it is set again whenever the actors start.
    """

    up_total: int = 0
    down_total: int = 0
    model_bytes: int = 0  # 0: unknown, no ratio against the model

    def record(self, up: Sequence[Sent], down: Sequence[Sent]) -> dict[str, float]:
        """Add one round's (or async period's) sends; return its byte figures:

        `bytes_up`, `bytes_down` (this round), `bytes_up_total`, `bytes_down_total` (the run so
        far), `compression_up|down` (x fewer bytes than dense float32 of the same tensors),
        `compression_up|down_vs_model` (x fewer than a dense float32 copy of the whole model per
        send), and the per-client spread of the uplink, `bytes_up_client_min|p50|p90|max`.
        """
        up_bytes, up_dense = _sums(up)
        down_bytes, down_dense = _sums(down)
        self.up_total += up_bytes
        self.down_total += down_bytes
        out = {
            "bytes_up": float(up_bytes),
            "bytes_down": float(down_bytes),
            "bytes_up_total": float(self.up_total),
            "bytes_down_total": float(self.down_total),
        }
        for way, sent, dense, n in (
            ("up", up_bytes, up_dense, len(up)),
            ("down", down_bytes, down_dense, len(down)),
        ):
            if sent > 0:
                out[f"compression_{way}"] = dense / sent
                if self.model_bytes > 0:
                    out[f"compression_{way}_vs_model"] = n * self.model_bytes / sent
        if up:
            sizes = np.array([b for b, _ in up], dtype=np.float64)
            for name, q in QUANTILES.items():
                out[f"bytes_up_client_{name}"] = float(np.percentile(sizes, q, method="lower"))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"up_total": self.up_total, "down_total": self.down_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"up_total", "down_total"}, state, "Traffic")
        self.up_total, self.down_total = int(state["up_total"]), int(state["down_total"])


def _sums(sent: Sequence[Sent]) -> tuple[int, int]:
    return sum(int(b) for b, _ in sent), sum(int(d) for _, d in sent)
