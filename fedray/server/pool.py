"""A pool of client actors: health flags, bounded in-flight calls, results-or-errors.

The pool never raises for a client's failure: it returns the error and lets the driver decide
what it means. An actor that dies is replaced (the replacement reloads the model once); the
jobs it held come back as failures, marked so the caller can retry them.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from fedray.errors import FedrayError


@dataclass
class Outcome:
    """The result of one job: `value` on success, else `error` (one line)."""

    job: Any
    value: Any = None
    error: str | None = None
    actor_lost: bool = False
    late: bool = False  # abandoned at the round deadline (its result is never read)


_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def creation_error(exc: BaseException) -> str:
    """The innermost `SomeError: message` line of an actor-creation failure."""
    for line in reversed(str(exc).splitlines()):
        match = _ERROR_LINE.match(line.strip())
        if match:
            name, message = match.groups()
            return (
                message
                if name in ("ModelError", "DataError", "ConfigError")
                else (f"{name}: {message}")
            )
    return error_line(exc)


def error_line(exc: BaseException) -> str:
    """One line describing a task error, naming the original exception."""
    cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
    text = str(cause).strip().splitlines()
    detail = text[-1] if text else ""
    return f"{type(cause).__name__}: {detail}"[:500]


class ActorPool:
    """Runs jobs on `size` actors made by `make_actor`, at most `max_inflight` per actor."""

    def __init__(self, make_actor: Callable[[], Any], size: int, max_inflight: int = 2) -> None:
        self.make_actor = make_actor
        self.max_inflight = max_inflight
        self.actors: list[Any] = [make_actor() for _ in range(size)]
        self.replaced = 0
        # non-barrier API (submit / next_completed): calls that outlive one method call
        self._inflight: dict[ray.ObjectRef, tuple[Any, int, float]] = {}
        self._load = [0] * size

    def wait_ready(self) -> list[dict[str, Any]]:
        """Block until every actor has loaded its model; returns where each runs.

        An actor whose constructor raised (bad model, bad LoRA targets, no CUDA) makes this
        raise FedrayError with the constructor's own one-line message.
        """
        try:
            return ray.get([a.ready.remote() for a in self.actors])
        except RayActorError as exc:
            raise FedrayError(f"client actor failed to start: {creation_error(exc)}") from None

    def _replace(self, idx: int) -> None:
        with suppress(Exception):  # already dead
            ray.kill(self.actors[idx], no_restart=True)
        self.actors[idx] = self.make_actor()
        self.replaced += 1

    def run(
        self,
        jobs: Iterable[Any],
        submit: Callable[[Any, Any], ray.ObjectRef],
        timeout_s: float = 0.0,
        deadline_s: float = 0.0,
    ) -> list[Outcome]:
        """Run every job as `submit(actor, job)`; outcomes in completion order.

        A job running longer than `timeout_s` (0: no limit) fails with a timeout, and its actor
        is replaced, since a hung call cannot be interrupted from outside. Jobs not done
        `deadline_s` (0: no deadline) after the call began come back `late`, unread: a queued
        call is cancelled, a running one finishes on its actor and its result is dropped.
        """
        end = time.monotonic() + deadline_s if deadline_s > 0 else None
        pending = deque(jobs)
        inflight: dict[ray.ObjectRef, tuple[Any, int, float]] = {}
        load = [0] * len(self.actors)
        outcomes: list[Outcome] = []
        while pending or inflight:
            for idx in range(len(self.actors)):
                while pending and load[idx] < self.max_inflight:
                    job = pending.popleft()
                    ref = submit(self.actors[idx], job)
                    inflight[ref] = (job, idx, time.monotonic())
                    load[idx] += 1
            wait_s = None if timeout_s <= 0 else max(0.05, timeout_s / 10)
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    outcomes += self._abandon(pending, inflight, deadline_s)
                    break
                wait_s = left if wait_s is None else min(wait_s, left)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=wait_s)
            for ref in ready:
                job, idx, _ = inflight.pop(ref)
                if idx >= 0:
                    load[idx] -= 1
                outcomes.append(self._collect(ref, job, idx, inflight, load))
            if timeout_s > 0:
                self._expire(inflight, load, outcomes, timeout_s)
        return outcomes

    @staticmethod
    def _abandon(
        pending: deque[Any], inflight: dict[ray.ObjectRef, tuple[Any, int, float]], after_s: float
    ) -> list[Outcome]:
        """Late outcomes for every unfinished job; queued calls are cancelled."""
        why = f"past the {after_s:g} s round deadline"
        for ref in inflight:
            with suppress(Exception):  # already finished or not cancellable: result unread
                ray.cancel(ref)
        late = [Outcome(job, error=why, late=True) for job, _, _ in inflight.values()]
        late += [Outcome(job, error=why, late=True) for job in pending]
        inflight.clear()
        pending.clear()
        return late

    def submit(self, job: Any, submit: Callable[[Any, Any], ray.ObjectRef]) -> None:
        """Non-barrier: start `submit(actor, job)` on the least-loaded actor now."""
        idx = min(range(len(self.actors)), key=self._load.__getitem__)
        self._inflight[submit(self.actors[idx], job)] = (job, idx, time.monotonic())
        self._load[idx] += 1

    @property
    def in_flight(self) -> int:
        """Jobs started with :meth:`submit` whose outcome :meth:`next_completed` has not given."""
        return len(self._inflight)

    def next_completed(self, timeout_s: float = 0.0) -> list[Outcome]:
        """Block until a submitted job finished; its outcome (and any finished beside it).

        `timeout_s` is the per-job limit, as in :meth:`run` (0: none).
        """
        outcomes: list[Outcome] = []
        while self._inflight and not outcomes:
            wait_s = None if timeout_s <= 0 else max(0.05, timeout_s / 10)
            ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=wait_s)
            for ref in ready:
                job, idx, _ = self._inflight.pop(ref)
                if idx >= 0:
                    self._load[idx] -= 1
                outcomes.append(self._collect(ref, job, idx, self._inflight, self._load))
            if timeout_s > 0:
                self._expire(self._inflight, self._load, outcomes, timeout_s)
        return outcomes

    def call_least_loaded(self, method: str, *args: Any) -> Any:
        """Call `method` on the actor with the fewest submitted jobs (e.g. evaluation)."""
        idx = min(range(len(self.actors)), key=self._load.__getitem__)
        return ray.get(getattr(self.actors[idx], method).remote(*args))

    def _collect(
        self,
        ref: ray.ObjectRef,
        job: Any,
        idx: int,
        inflight: dict[ray.ObjectRef, tuple[Any, int, float]],
        load: list[int],
    ) -> Outcome:
        try:
            return Outcome(job, value=ray.get(ref))
        except RayActorError as exc:
            if idx >= 0:  # first news of this death: replace the actor
                self._drop_actor(idx, inflight, load)
            return Outcome(job, error=f"actor lost: {error_line(exc)}", actor_lost=True)
        except RayTaskError as exc:
            return Outcome(job, error=error_line(exc))

    def _drop_actor(
        self, idx: int, inflight: dict[ray.ObjectRef, tuple[Any, int, float]], load: list[int]
    ) -> None:
        """Replace actor `idx`; its other in-flight calls stay tracked and fail on their own."""
        self._replace(idx)
        for ref, (job, i, started) in list(inflight.items()):
            if i == idx:  # bound to the dead handle; they will raise RayActorError
                inflight[ref] = (job, -1, started)
        load[idx] = 0

    def _expire(
        self,
        inflight: dict[ray.ObjectRef, tuple[Any, int, float]],
        load: list[int],
        outcomes: list[Outcome],
        timeout_s: float,
    ) -> None:
        now = time.monotonic()
        for ref, (job, idx, started) in list(inflight.items()):
            if now - started > timeout_s and idx >= 0:
                inflight.pop(ref)
                outcomes.append(Outcome(job, error=f"timeout after {timeout_s:g} s"))
                self._drop_actor(idx, inflight, load)

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call `method` on the first actor (used for evaluation and export)."""
        try:
            return ray.get(getattr(self.actors[0], method).remote(*args), timeout=timeout_s)
        except (RayActorError, GetTimeoutError):
            self._replace(0)
            return ray.get(getattr(self.actors[0], method).remote(*args), timeout=timeout_s)

    def call_each(self, method: str, *args: Any) -> list[Any]:
        """Call `method(*args, i, n)` on each of the n actors at once (i: the actor's index).

        Used for sharded evaluation. Large arguments should be object refs (put once). An actor
        that dies, or whose call is lost, is replaced and its share called again, once.
        """
        n = len(self.actors)
        refs = [getattr(a, method).remote(*args, i, n) for i, a in enumerate(self.actors)]
        results = []
        for i, ref in enumerate(refs):
            try:
                results.append(ray.get(ref))
            except RayActorError:
                self._replace(i)
                results.append(ray.get(getattr(self.actors[i], method).remote(*args, i, n)))
        return results

    def shutdown(self) -> None:
        """Kill every actor."""
        for actor in self.actors:
            with suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = []
