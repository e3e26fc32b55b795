"""Seeded fault injection on the client: raise, hang, die, or run slow in chosen rounds.

A fault is decided by (round, client id, attempt) alone, from an explicit schedule or from a
rate drawn with a generator seeded by (faults.seed, round, client id), so a test knows in
advance exactly which calls fail and can assert exact counts. A fault fires on the first
`attempts` attempts of its (round, client): 1 means a retry succeeds.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np

from fedray.core.config import FaultsConfig
from fedray.core.registry import typed

KINDS = ("raise", "hang", "die", "delay")


class InjectedFault(RuntimeError):
    """The error a client raises for a `raise` fault."""


def faults_config(node: Any) -> FaultsConfig:
    """A FaultsConfig from a config node, a plain dict, or None (defaults)."""
    return typed(FaultsConfig, node, "faults")


def parse_schedule(entries: list[str], attempts: int = 1) -> dict[tuple[int, int], tuple[str, int]]:
    """{(round, client): (kind, attempts)}; ValueError naming the first malformed entry."""
    out: dict[tuple[int, int], tuple[str, int]] = {}
    for entry in entries:
        parts = str(entry).split(":")
        if len(parts) == 3:
            parts.append(str(attempts))
        if len(parts) != 4 or not all(p.isdigit() for p in (parts[0], parts[1], parts[3])):
            raise ValueError(f"entry {entry!r} is not ROUND:CLIENT:KIND[:ATTEMPTS], e.g. 2:3:raise")
        if parts[2] not in KINDS:
            raise ValueError(f"entry {entry!r}: kind must be one of {', '.join(KINDS)}")
        out[(int(parts[0]), int(parts[1]))] = (parts[2], int(parts[3]))
    return out


def check(node: Any, client_timeout_s: float) -> str | None:
    """One line naming the first problem of a faults config, or None."""
    cfg = faults_config(node)
    try:
        schedule = parse_schedule(list(cfg.schedule), cfg.attempts)
    except ValueError as exc:
        return f"faults.schedule: {exc}"
    if not 0.0 <= cfg.rate <= 1.0:
        return f"faults.rate={cfg.rate} must be in [0, 1]"
    if cfg.kind not in KINDS:
        return f"faults.kind={cfg.kind!r}: use one of {', '.join(KINDS)}"
    hangs = "hang" in {kind for kind, _ in schedule.values()} or (
        cfg.rate > 0 and cfg.kind == "hang"
    )
    if hangs and client_timeout_s <= 0:
        return "faults inject `hang` but mode.client_timeout_s=0 would wait forever; set it > 0"
    if cfg.hang_s <= 0 or cfg.delay_s < 0:
        return "faults.hang_s must be > 0 and faults.delay_s >= 0"
    if cfg.attempts < 1:
        return f"faults.attempts={cfg.attempts} must be >= 1"
    return None


class FaultInjector:
    """Decides and performs the fault of one client call."""

    def __init__(self, node: Any) -> None:
        self.cfg = cfg = faults_config(node)
        self.schedule = parse_schedule(list(cfg.schedule), cfg.attempts)

    def fault(self, round: int, client_id: int, attempt: int = 0) -> str | None:
        """The fault kind of this call (attempt 0 is the first try), or None."""
        kind, attempts = self.schedule.get((round, client_id), (None, 0))
        if kind is None and self.cfg.rate > 0:
            draw = np.random.default_rng([self.cfg.seed, round, client_id]).random()
            kind, attempts = (
                (self.cfg.kind, self.cfg.attempts) if draw < self.cfg.rate else (None, 0)
            )
        return kind if attempt < attempts else None

    def inject(self, round: int, client_id: int, attempt: int = 0) -> None:
        """Perform this call's fault (if any) before local training."""
        kind = self.fault(round, client_id, attempt)
        if kind == "raise":
            raise InjectedFault(f"injected fault: client {client_id} in round {round}")
        if kind == "hang":
            time.sleep(self.cfg.hang_s)
        elif kind == "delay":
            time.sleep(self.cfg.delay_s)
        elif kind == "die":
            os.kill(os.getpid(), signal.SIGKILL)
