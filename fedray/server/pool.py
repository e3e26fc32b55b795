"""A pool of client actors: an id-keyed table with health flags, an in-flight cap per actor,
jobs in and results-or-errors out.

One API serves every caller: :meth:`ActorPool.submit` queues a job (optionally pinned to one
actor), :meth:`ActorPool.poll` dispatches queued jobs to actors with room and returns the
outcomes that finished, :meth:`ActorPool.drain` abandons what is left (a round deadline). The
sync and async schedulers, evaluation and the round trips of multi-phase mechanisms all use it.

The pool never raises for a client's failure: it returns the error and lets the caller decide
what it means. An actor that dies (or hangs past a job's timeout) is replaced and marked
unhealthy until the replacement has loaded its model; the jobs it held come back as failures
(``actor_lost``) so the caller can retry them. The design follows RLlib's
FaultTolerantActorManager: health flags, a cap on in-flight calls per actor, results or errors.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from fedray.core.errors import FedrayError

Call = Callable[[Any], ray.ObjectRef]
"""How to start a job on an actor handle: ``lambda actor: actor.method.remote(...)``."""


@dataclass
class Outcome:
    """The result of one job: `value` on success, else `error` (one line)."""

    job: Any
    value: Any = None
    error: str | None = None
    actor_lost: bool = False
    late: bool = False  # abandoned by :meth:`ActorPool.drain` (its result is never read)
    actor: int = -1  # the actor it ran on (-1: it never started)


@dataclass
class _Job:
    job: Any
    call: Call
    actor: int | None  # pinned to this actor, or None: any healthy actor
    timeout_s: float


@dataclass
class _Running:
    job: _Job
    actor: int
    started: float
    handle: Any  # the handle it was started on (a replaced actor's jobs stay bound to it)


@dataclass(eq=False)
class _Token:
    """Marks a job of one :meth:`ActorPool.run_all` call (compared by identity)."""

    index: int
    job: Any


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
    """Runs jobs on `size` actors, at most `max_inflight` per actor; `make_actor(i)` makes the
    actor of slot i (again when it is replaced: a slot's actor may be bound to some nodes)."""

    def __init__(self, make_actor: Callable[[int], Any], size: int, max_inflight: int = 2) -> None:
        self.make_actor = make_actor
        self.max_inflight = max_inflight
        self.actors: dict[int, Any] = {i: make_actor(i) for i in range(size)}
        self.healthy: dict[int, bool] = dict.fromkeys(self.actors, True)  # calls queue behind
        # a constructor; a replacement is unhealthy until its `ready` call returns
        self.replaced = 0
        self._load: dict[int, int] = dict.fromkeys(self.actors, 0)
        self._queue: deque[_Job] = deque()
        self._running: dict[ray.ObjectRef, _Running] = {}
        self._starting: dict[ray.ObjectRef, int] = {}
        self._stash: list[Outcome] = []  # other jobs' outcomes that finished during run_all

    @property
    def size(self) -> int:
        """Number of actors."""
        return len(self.actors)

    @property
    def pending(self) -> int:
        """Jobs submitted whose outcome :meth:`poll` has not returned yet."""
        return len(self._queue) + len(self._running) + len(self._stash)

    # -- actors ----------------------------------------------------------------------------
    def wait_ready(self) -> list[dict[str, Any]]:
        """Block until every actor has loaded its model; returns where each runs.

        An actor whose constructor raised (bad model, bad LoRA targets, no CUDA) makes this
        raise FedrayError with the constructor's own one-line message.
        """
        try:
            info = ray.get([a.ready.remote() for a in self.actors.values()])
        except RayActorError as exc:
            raise FedrayError(f"client actor failed to start: {creation_error(exc)}") from None
        self.healthy = dict.fromkeys(self.actors, True)
        self._starting.clear()
        return info

    def _replace(self, idx: int) -> None:
        """A new actor in slot `idx`; unhealthy until its `ready` call returns."""
        with suppress(Exception):  # already dead
            ray.kill(self.actors[idx], no_restart=True)
        self.actors[idx] = self.make_actor(idx)
        self.healthy[idx] = False
        self._load[idx] = 0
        self._starting[self.actors[idx].ready.remote()] = idx
        self.replaced += 1

    def _lose(self, idx: int, handle: Any) -> None:
        """Slot `idx` lost `handle`: replace it unless that already happened."""
        if self.actors.get(idx) is handle:
            self._replace(idx)

    # -- jobs ------------------------------------------------------------------------------
    def submit(
        self, job: Any, call: Call, *, actor: int | None = None, timeout_s: float = 0.0
    ) -> None:
        """Queue `call` (started on an actor by :meth:`poll`), pinned to `actor` if given.

        `timeout_s` (0: none) limits the job once started: past it, the job fails with a
        timeout and its actor is replaced (a running call cannot be interrupted).
        """
        if actor is not None and actor not in self.actors:
            raise KeyError(f"no actor {actor} in a pool of {self.size}")
        self._queue.append(_Job(job, call, actor, timeout_s))
        self._dispatch()

    def _free(self, idx: int) -> bool:
        return self._load[idx] < self.max_inflight

    def _dispatch(self) -> None:
        """Start queued jobs, in order, on actors with room (least loaded first)."""
        waiting: deque[_Job] = deque()
        while self._queue:
            job = self._queue.popleft()
            if job.actor is not None:
                idx = job.actor if self._free(job.actor) else None
            else:
                # least loaded first (a replacement still loading its model counts as empty:
                # calls wait behind its constructor, and their timeout starts once it is ready)
                free = [i for i in self.actors if self._free(i)]
                idx = (
                    min(free, key=lambda i: (self._load[i], not self.healthy[i])) if free else None
                )
            if idx is None:
                waiting.append(job)
                continue
            handle = self.actors[idx]
            self._running[job.call(handle)] = _Running(job, idx, time.monotonic(), handle)
            self._load[idx] += 1
        self._queue = waiting

    def poll(self, timeout_s: float | None = None) -> list[Outcome]:
        """Wait until some job finished (at most `timeout_s`; None: until one did) and return
        every outcome available now, timeouts included; [] when nothing finished in time."""
        if self._stash:
            outcomes, self._stash = self._stash, []
            return outcomes
        end = None if timeout_s is None else time.monotonic() + timeout_s
        outcomes = []
        while True:
            self._dispatch()
            if not (self._running or self._starting):
                if self._queue:
                    raise FedrayError("jobs are queued but no client actor can take them")
                break
            refs = [*self._running, *self._starting]
            ready, _ = ray.wait(refs, num_returns=1, timeout=self._wait_s(end))
            if ready:  # and whatever else is done by now
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref in self._starting:
                    self._started(ref)
                else:
                    outcomes.append(self._collect(ref))
            outcomes += self._expire()
            if outcomes or (end is not None and time.monotonic() >= end):
                break
        self._dispatch()
        return outcomes

    def _wait_s(self, end: float | None) -> float | None:
        """How long one ray.wait may block: until the deadline or the nearest job timeout."""
        now = time.monotonic()
        limits = [
            r.started + r.job.timeout_s - now
            for r in self._running.values()
            if r.job.timeout_s > 0 and self.healthy[r.actor]
        ]
        if end is not None:
            limits.append(end - now)
        return max(0.0, min(limits)) if limits else None

    def _started(self, ref: ray.ObjectRef) -> None:
        idx = self._starting.pop(ref)
        try:
            ray.get(ref)
        except RayActorError as exc:
            raise FedrayError(f"client actor failed to restart: {creation_error(exc)}") from None
        self.healthy[idx] = True
        now = time.monotonic()
        for run in self._running.values():  # their timeout starts now, not at dispatch
            if run.actor == idx and run.handle is self.actors[idx]:
                run.started = now

    def _collect(self, ref: ray.ObjectRef) -> Outcome:
        run = self._running.pop(ref)
        if self.actors.get(run.actor) is run.handle:
            self._load[run.actor] -= 1
        try:
            return Outcome(run.job.job, value=ray.get(ref), actor=run.actor)
        except RayActorError as exc:
            self._lose(run.actor, run.handle)  # first news of this death: replace the actor
            error = f"actor lost: {error_line(exc)}"
            return Outcome(run.job.job, error=error, actor_lost=True, actor=run.actor)
        except RayTaskError as exc:
            return Outcome(run.job.job, error=error_line(exc), actor=run.actor)

    def _expire(self) -> list[Outcome]:
        """Fail the jobs running past their timeout; replace their actors."""
        now, out = time.monotonic(), []
        for ref, run in list(self._running.items()):
            limit = run.job.timeout_s
            starting = not self.healthy[run.actor] and run.handle is self.actors[run.actor]
            if limit > 0 and not starting and now - run.started > limit:
                del self._running[ref]
                out.append(
                    Outcome(run.job.job, error=f"timeout after {limit:g} s", actor=run.actor)
                )
                self._lose(run.actor, run.handle)
        return out

    def drain(self, why: str) -> list[Outcome]:
        """Abandon every queued and running job: `late` outcomes, never read.

        Queued calls are cancelled; a running one finishes on its actor (a running Ray call
        cannot be interrupted), which keeps that actor busy until then.
        """
        late = [Outcome(j.job, error=why, late=True) for j in self._queue]
        for ref, run in self._running.items():
            with suppress(Exception):  # already finished or not cancellable: result unread
                ray.cancel(ref)
            if self.actors.get(run.actor) is run.handle:
                self._load[run.actor] -= 1
            late.append(Outcome(run.job.job, error=why, late=True, actor=run.actor))
        self._queue.clear()
        self._running.clear()
        return late

    def run_all(self, jobs: list[tuple[Any, Call, int | None]]) -> list[Outcome]:
        """Submit (job, call, actor) triples and wait for all; outcomes in submission order.

        Jobs submitted earlier keep running; their outcomes are kept for the next :meth:`poll`.
        """
        tokens = [_Token(i, job) for i, (job, _, _) in enumerate(jobs)]
        for token, (_, call, actor) in zip(tokens, jobs, strict=True):
            self.submit(token, call, actor=actor)
        mine: dict[int, Outcome] = {}
        while len(mine) < len(jobs):
            stash, self._stash = self._stash, []
            for o in self.poll():
                token = o.job
                if isinstance(token, _Token) and token in tokens:
                    o.job = token.job
                    mine[token.index] = o
                else:
                    stash.append(o)
            self._stash = stash + self._stash
        return [mine[i] for i in range(len(jobs))]

    def each(
        self,
        method: str,
        *args: Any,
        shard_of: Callable[[int], tuple[int, int]] | None = None,
    ) -> list[Any]:
        """Call `method(*args, *shard_of(i))` on each actor i at once (default shard: `i, n`
        of the n actors); results in actor order.

        Used for sharded evaluation. Large arguments should be object refs (put once). An actor
        that dies, or whose call is lost, is replaced and its share called again, once.
        """
        n = self.size
        shard = shard_of or (lambda i: (i, n))

        def call(i: int) -> Call:
            return lambda actor: getattr(actor, method).remote(*args, *shard(i))

        results: list[Any] = []
        for i, o in enumerate(self.run_all([(i, call(i), i) for i in range(n)])):
            if o.error is not None and o.actor_lost:
                (o,) = self.run_all([(i, call(i), i)])
            if o.error is not None:
                raise FedrayError(f"{method} failed on client actor {i}: {o.error}")
            results.append(o.value)
        return results

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call `method` on one healthy actor and return its result (initial state, export)."""
        idx = next((i for i in self.actors if self.healthy[i]), 0)
        try:
            return ray.get(getattr(self.actors[idx], method).remote(*args), timeout=timeout_s)
        except (RayActorError, GetTimeoutError):
            self._replace(idx)
            self.wait_ready()
            return ray.get(getattr(self.actors[idx], method).remote(*args), timeout=timeout_s)

    def shutdown(self) -> None:
        """Kill every actor."""
        for actor in self.actors.values():
            with suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = {}
