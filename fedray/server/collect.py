"""The collect stage: one cohort's client jobs with retries and a deadline, then the checks an
update must pass before plaintext aggregation, and the quorum.

A failure is anything the pool reports as an error: the client raised, its call timed out, or
its actor died (the pool has already replaced that actor). A failed client is retried at once,
on whichever actor is free (or, for a client pinned to an actor that holds its round session,
not at all: that client has dropped out). Each failed attempt is recorded, one line, whether or
not a retry later succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedray.core.types import Contribution, Failure, State
from fedray.core.validate import norm_outliers, split_valid, update_problem
from fedray.server.pool import ActorPool, Call, Outcome


@dataclass
class Collected:
    """What the client calls of one round produced."""

    values: list[Any] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)  # every failed attempt, in order
    retries: int = 0
    calls_lost: int = 0
    late: int = 0  # clients still running at the round deadline
    calls: int = 0  # attempts made (each received the broadcast)


@dataclass(frozen=True)
class Attempt:
    """One try of one client's job."""

    client_id: int
    attempt: int


def collect_cohort(
    pool: ActorPool,
    clients: list[int],
    call_for: Callable[[int, int], Call],
    *,
    timeout_s: float,
    max_retries: int,
    deadline_s: float = 0.0,
    pinned: dict[int, int] | None = None,
    sessions: bool = True,
) -> Collected:
    """Run `call_for(client, attempt)` for every client until it succeeds or runs out of tries.

    A client is tried at most `1 + max_retries` times. `deadline_s` (0: none) bounds the whole
    round, retries included: clients not done by then come back `late` and are not retried.
    `pinned` maps clients to the actor slot that must run them. With `sessions`, the slot's
    actor holds the client's round session, so a pinned client is not retried after its actor
    died (the session died with it); without, it is retried on the slot's replacement (a
    silo's client, say, whose data is on that slot's node).
    """
    out = Collected()
    end = time.monotonic() + deadline_s if deadline_s > 0 else None
    pinned = pinned or {}

    def submit(cid: int, attempt: int) -> None:
        out.calls += 1
        pool.submit(
            Attempt(cid, attempt),
            call_for(cid, attempt),
            actor=pinned.get(cid),
            timeout_s=timeout_s,
        )

    for cid in clients:
        submit(cid, 0)
    waiting = len(clients)
    note = (lambda a: f" (attempt {a + 1})") if max_retries > 0 else (lambda a: "")
    while waiting:
        left = None if end is None else end - time.monotonic()
        outcomes: list[Outcome] = pool.poll(left) if left is None or left > 0 else []
        if end is not None and time.monotonic() >= end and not outcomes:
            late = pool.drain(f"past the {deadline_s:g} s round deadline")
            out.late += len(late)
            out.failures += [Failure(o.job.client_id, o.error or "") for o in late]
            break
        for o in sorted(outcomes, key=lambda o: (o.job.attempt, o.job.client_id)):
            job: Attempt = o.job
            if o.error is None:
                out.values.append(o.value)
                waiting -= 1
                continue
            out.calls_lost += o.actor_lost
            out.failures.append(Failure(job.client_id, f"{o.error}{note(job.attempt)}"))
            lost_session = sessions and o.actor_lost and job.client_id in pinned
            if job.attempt < max_retries and not lost_session:
                out.retries += 1
                submit(job.client_id, job.attempt + 1)
            else:
                waiting -= 1
    return out


def screen(
    contributions: list[Contribution],
    reference: State,
    max_norm_ratio: float,
    extra_reference: State | None = None,
) -> tuple[list[Contribution], list[Failure]]:
    """(usable contributions, rejections): NaN/Inf, keys, shapes, dtypes of the delta and of
    its extra state (against `extra_reference`, the broadcast extra), then the norm screen."""
    valid, rejected = split_valid(contributions, reference)
    checked: list[Contribution] = []
    for c in valid:
        problem = _extra_problem(c.extra, extra_reference)
        if problem is None:
            checked.append(c)
        else:
            rejected.append((c.client_id, problem))
    kept, outliers = norm_outliers(checked, max_norm_ratio)
    return kept, [Failure(cid, f"update rejected: {why}") for cid, why in rejected + outliers]


def _extra_problem(extra: State | None, reference: State | None) -> str | None:
    if reference is None:
        return None if extra is None else "unexpected extra state"
    if extra is None:
        return "missing extra state"
    problem = update_problem(extra, reference)
    return None if problem is None else f"extra state: {problem}"


def quorum_shortfall(
    rnd: int, valid: int, selected: int, min_clients: int, failures: list[Failure]
) -> str | None:
    """One line explaining a quorum shortfall, or None when `valid` >= `min_clients`."""
    if valid >= min_clients:
        return None
    first = failures[0].error if failures else "none"
    return (
        f"round {rnd}: {valid} of {selected} clients returned a valid update, fewer than "
        f"mode.min_clients={min_clients}; first failure: {first}"
    )
