"""One round's client calls with retries: failed clients run again, on whichever actor is free.

A failure is anything the pool reports as an error: the client raised, its call timed out, or
its actor died (the pool has already replaced that actor). Each failed attempt is recorded as
(client id, one line) whether or not a retry later succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from fedray.server.pool import ActorPool, Outcome
from fedray.strategies.base import Contribution
from fedray.strategies.validate import norm_outliers, split_valid
from fedray.types import State


@dataclass
class RoundCalls:
    """What the client calls of one round produced."""

    values: list[Any] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    retries: int = 0
    calls_lost: int = 0


def run_with_retries(
    pool: ActorPool,
    clients: list[int],
    submit: Callable[[Any, int, int], ray.ObjectRef],
    *,
    timeout_s: float,
    max_retries: int,
    deadline_s: float = 0.0,
) -> RoundCalls:
    """Run `submit(actor, client_id, attempt)` for every client, retrying failures.

    A client is tried at most `1 + max_retries` times; its failures are listed in the order
    they happened per attempt wave, sorted by client id within a wave. `deadline_s` (0: none)
    bounds the whole round, retries included: a client still running at the deadline comes
    back `late` and is not retried.
    """
    calls = RoundCalls()
    todo = list(clients)
    end = time.monotonic() + deadline_s if deadline_s > 0 else None
    for attempt in range(max_retries + 1):
        if not todo:
            break
        left = 0.0 if end is None else end - time.monotonic()
        if attempt > 0:
            if end is not None and left <= 0:
                break
            calls.retries += len(todo)
            pool.wait_ready()  # replacements load their model before a retry's timeout starts
            left = 0.0 if end is None else max(end - time.monotonic(), 1e-3)
        outcomes = pool.run(
            todo,
            lambda actor, cid, a=attempt: submit(actor, cid, a),
            timeout_s=timeout_s,
            deadline_s=left,
        )
        calls.outcomes += outcomes
        calls.values += [o.value for o in outcomes if o.error is None]
        failed = sorted((o for o in outcomes if o.error is not None), key=lambda o: o.job)
        calls.calls_lost += sum(o.actor_lost for o in failed)
        note = f" (attempt {attempt + 1})" if max_retries > 0 else ""
        calls.failures += [(o.job, f"{o.error}{note}") for o in failed]
        todo = [o.job for o in failed if not o.late]
    return calls


def screen(
    contributions: list[Contribution], global_state: State, max_norm_ratio: float
) -> tuple[list[Contribution], list[tuple[int, str]]]:
    """(usable contributions, [(client id, why rejected)]): NaN/Inf, shape, dtype, then norm."""
    valid, rejected = split_valid(contributions, global_state)
    kept, outliers = norm_outliers(valid, max_norm_ratio)
    return kept, rejected + outliers


def quorum_shortfall(
    rnd: int, valid: int, selected: int, min_clients: int, failures: list[tuple[int, str]]
) -> str | None:
    """One line explaining a quorum shortfall, or None when `valid` >= `min_clients`."""
    if valid >= min_clients:
        return None
    first = failures[0][1] if failures else "none"
    return (
        f"round {rnd}: {valid} of {selected} clients returned a valid update, fewer than "
        f"mode.min_clients={min_clients}; first failure: {first}"
    )
