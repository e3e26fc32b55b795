"""The privacy-mechanism interface: a client half (clip, mask) and a server half (unmask, noise)."""

from __future__ import annotations

from typing import Any, Protocol

from fedray.strategies.base import Contribution
from fedray.types import State


class Mechanism(Protocol):
    """A privacy stage of the update pipeline."""

    reveals_only_sums: bool

    def client_apply(self, delta: State, *, client_id: int, round: int) -> State:
        """Client side, before encoding (e.g. clip to a norm bound)."""
        ...

    def server_apply(self, contributions: list[Contribution], *, round: int) -> list[Contribution]:
        """Server side, before the strategy (e.g. unmask a secure sum, add calibrated noise).

        A mechanism that reveals only sums returns a single summed contribution.
        """
        ...

    def metrics(self) -> dict[str, float]:
        """Per-round figures for tracking (e.g. epsilon spent so far)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Accountant state for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...
