"""In-process round trips for sum-only mechanisms: a CohortIO whose clients live in this
process (each with its own round session), and one round driven exactly as the sync scheduler
drives it (before_round, round and client messages, client transforms, reduce, after_round)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedray.core.context import RoundContext, RunContext
from fedray.core.types import Aggregate, State, Update, spec_of


@dataclass
class LocalIO:
    """Clients' phases run here; `drop` clients never answer; `log` keeps every reply."""

    client: Any  # the client-side mechanism instance
    round: int
    drop: set[int] = field(default_factory=set)
    sessions: dict[int, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, int, Any]] = field(default_factory=list)

    def exchange(self, phase: str, messages: dict[int, Any]) -> dict[int, Any]:
        replies = {}
        for cid, message in messages.items():
            if cid in self.drop:
                continue
            try:
                replies[cid] = self.client.client_phase(
                    phase,
                    client_id=cid,
                    round=self.round,
                    message=message,
                    session=self.sessions.setdefault(cid, {}),
                )
            except Exception:
                self.sessions.pop(cid, None)
                continue
            self.log.append((phase, cid, replies[cid]))
        return replies


def run_context(n_clients: int, cohort: int, sizes: list[int] | None = None, rounds: int = 5):
    sizes = sizes if sizes is not None else [10] * n_clients
    return RunContext(n_clients, cohort, "fixed", rounds, 0, "sync", tuple(sizes))


def one_round(
    server: Any,
    client: Any,
    run: RunContext,
    rnd: int,
    deltas: dict[int, State],
    *,
    weights: dict[int, float] | None = None,
    silent: set[int] | None = None,
) -> tuple[Aggregate, list[Update], LocalIO]:
    """One round over `deltas` (client id -> delta); `silent` clients skip their job (they
    dropped after the key exchange)."""
    cohort = tuple(sorted(deltas))
    spec = spec_of(next(iter(deltas.values())))
    ctx = RoundContext(run, rnd, cohort, spec)
    io = LocalIO(client, rnd)
    server.before_round(ctx, io)
    message = server.round_message(ctx)
    updates = []
    for cid in cohort:
        if silent and cid in silent:
            continue
        w = float(weights[cid]) if weights else float(run.client_sizes[cid])
        payload = client.client_transform(
            deltas[cid],
            weight=w,
            client_id=cid,
            round=rnd,
            seed=1000 * rnd + cid,
            round_message=message,
            client_message=server.client_message(ctx, cid),
            session=io.sessions.setdefault(cid, {}),
        )
        payload = np.asarray(payload, dtype=np.uint8)
        updates.append(Update(cid, int(w), payload, payload.nbytes))
    aggregate = server.reduce([], updates, ctx, io)
    server.after_round(ctx, aggregate)
    return aggregate, updates, io
