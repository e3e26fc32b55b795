"""The server side of an algorithm: how client updates become the next global state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fedray.types import State


@dataclass
class Contribution:
    """One decoded client update as a strategy sees it."""

    client_id: int
    delta: State
    num_samples: int
    extra: State | None = None  # the update's extra state (see fedray.strategies.extra)


class Strategy(Protocol):
    """Pure server logic: no Ray, no I/O. Stateful strategies save and load their state.

    Optional hooks, called through :mod:`fedray.server.hooks` (absent: the default in brackets):
    ``setup(*, num_clients)`` [nothing]; ``shared_state(global_state)``, what is sent down and
    what updates must match [all of it]; ``broadcast(global_state)``, extra state sent with it
    [none]; ``client_rule(trainer, *, seed)``, the client's update rule [the local recipe].
    """

    requires_individual_updates: bool

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        """Return the next global state."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Server-side state (optimizer moments, ...) for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


def check_state_keys(expected: set[str], state: dict[str, Any], owner: str) -> None:
    """Raise KeyError naming missing/unexpected keys of a loaded state dict."""
    if set(state) != expected:
        raise KeyError(
            f"{owner}.load_state_dict: expected keys {sorted(expected)}, got {sorted(state)}"
        )
