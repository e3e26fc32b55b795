"""The codec interface: how a client's delta is shrunk for the trip up, and restored."""

from __future__ import annotations

from typing import Any, Protocol

from fedray.types import State


class Codec(Protocol):
    """encode/decode are inverse up to the codec's loss; nbytes counts what travels."""

    reveals_only_sums: bool

    def encode(self, delta: State, *, client_id: int, round: int) -> Any:
        """Client side: delta -> payload."""
        ...

    def decode(self, payload: Any) -> State:
        """Server side: payload -> delta."""
        ...

    def nbytes(self, payload: Any) -> int:
        """Bytes the payload occupies on the wire."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Per-codec state for checkpoints (error-feedback residuals live in client state)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...
