"""The server side of an algorithm: how client updates become the next global state.

A strategy subclasses :class:`Strategy`, a typed protocol whose optional hooks have defaults,
so the coordinator calls every hook unconditionally and a type checker sees them all. Pure
server logic: no Ray, no I/O; stateful strategies save and load their state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from fedray.core.checkpoint import check_state_keys
from fedray.core.statemath import mean_of
from fedray.core.types import Aggregate, Contribution, State

if TYPE_CHECKING:
    from fedray.core.config import FedrayConfig


class ServerCompute(Protocol):
    """Model computations a strategy hands to the coordinator (which runs them on a client
    actor: the server's accelerator in a deployment), e.g. FedDF's ensemble distillation."""

    def distill(
        self, student: State, teachers: list[tuple[str, State]], options: Any, seed: list[int]
    ) -> tuple[State, dict[str, float]]:
        """The student (the global state) after distillation towards the ensemble of
        `teachers` ((architecture, state) pairs), and figures of the work (FedDF)."""
        ...


class Strategy(Protocol):
    """An algorithm's server half, plus the name of its client half.

    Two ways to aggregate, chosen by `requires_individual_updates`:

    - False (FedAvg and its relatives): :meth:`step` reads the cohort's :class:`Aggregate` (the
      weighted mean delta), so the updates may be combined by a secure or encrypted sum first;
      :meth:`aggregate` is then the plaintext shortcut ``step(global, mean_of(updates))``.
    - True (robust rules, async merging): :meth:`aggregate` reads every update itself.
    """

    requires_individual_updates: ClassVar[bool] = False
    mode: ClassVar[str] = "sync"  # sync | async: the scheduler the algorithm runs under
    sends_extra: ClassVar[bool] = False  # clients send plaintext extra state (SCAFFOLD's delta c)
    # A straggler's partial update (speed.stragglers) is aggregated (True: FedProx, FedNova)
    # or dropped like a late client (False: FedAvg as Li et al. 2020 run it).
    keeps_partial_work: ClassVar[bool] = False
    reads_groups: ClassVar[bool] = False  # aggregates clients by `model.groups` (rank, arch)

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        """The next global state from the cohort's decoded updates."""
        return self.step(global_state, mean_of(contributions))

    def step(self, global_state: State, aggregate: Aggregate) -> State:
        """The next global state from the cohort's combined update (server optimizer step)."""
        raise NotImplementedError(f"{type(self).__name__} aggregates individual updates only")

    def setup(self, *, num_clients: int) -> None:
        """Learn the population size before the first round (SCAFFOLD's N)."""

    def bind(self, spec: FedrayConfig, compute: ServerCompute) -> None:
        """Learn the run (client groups, seed) and how to run model computations; called once
        after :meth:`setup`, before :meth:`client_rule`."""

    def metrics(self) -> dict[str, float]:
        """Figures of the last aggregation (logged with the round's metrics)."""
        return {}

    def shared_state(self, global_state: State) -> State:
        """What is sent down and what updates must match (FedPer keeps its head back)."""
        return global_state

    def merge_shared(self, global_state: State, shared: State) -> State:
        """The global state after its shared part became `shared`."""
        return {**global_state, **shared}

    def broadcast(self, global_state: State) -> State | None:
        """Extra state sent with the global state this round (SCAFFOLD's c), or None."""
        return None

    def client_rule(self) -> dict[str, Any]:
        """The client update rule, as a config node of the `rule` registry group."""
        return {"name": "local"}

    def state_dict(self) -> dict[str, Any]:
        """Server-side state (optimizer moments, ...) for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        check_state_keys(set(), state, type(self).__name__)


class AsyncStrategy(Strategy, Protocol):
    """An async algorithm: merges (or buffers) one update at a time as it arrives."""

    requires_individual_updates: ClassVar[bool] = True
    mode: ClassVar[str] = "async"

    def apply(
        self, global_state: State, base_state: State, contribution: Contribution, staleness: int
    ) -> State | None:
        """The next global state after one update, or None if it was only buffered."""
        ...


__all__ = ["AsyncStrategy", "ServerCompute", "Strategy", "check_state_keys"]
