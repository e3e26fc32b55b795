"""The update pipeline: one object, a client half and a server half (see DESIGN.md).

client: delta = trained - global -> privacy.client_apply (clip/mask) -> codec.encode
server: codec.decode -> privacy.server_apply (unmask/noise) -> strategy.aggregate

The driver calls :meth:`Pipeline.server`; the client actor calls :meth:`Pipeline.client`.
Neither knows which codec or mechanism is on.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from fedray import registry
from fedray.strategies.aggregate import nbytes, subtract
from fedray.strategies.base import Contribution
from fedray.types import ClientUpdate, State


class Pipeline:
    """Composes the compression codec and the privacy mechanism chosen in the config."""

    def __init__(self, compression: Any, privacy: Any) -> None:
        self.codec = compression
        self.privacy = privacy

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Pipeline:
        """Build both stages from the `compression` and `privacy` groups."""
        return cls(
            registry.build("compression", cfg.compression), registry.build("privacy", cfg.privacy)
        )

    def client(
        self, trained: State, global_state: State, *, client_id: int, round: int
    ) -> tuple[Any, int]:
        """Client half: (payload, bytes sent up)."""
        delta = subtract(trained, global_state)
        delta = self.privacy.client_apply(delta, client_id=client_id, round=round)
        payload = self.codec.encode(delta, client_id=client_id, round=round)
        return payload, self.codec.nbytes(payload)

    def server(self, updates: list[ClientUpdate], *, round: int) -> list[Contribution]:
        """Server half: decoded (and, where configured, unmasked/noised) contributions."""
        contributions = [
            Contribution(u.client_id, self.codec.decode(u.payload), u.num_samples) for u in updates
        ]
        return self.privacy.server_apply(contributions, round=round)

    @staticmethod
    def down_nbytes(global_state: State) -> int:
        """Bytes one client receives per round (the global trainable state)."""
        return nbytes(global_state)

    def metrics(self) -> dict[str, float]:
        """Per-round figures of the stages (epsilon, ...)."""
        return dict(self.privacy.metrics())

    def state_dict(self) -> dict[str, Any]:
        """Both stages' state for checkpoints."""
        return {"codec": self.codec.state_dict(), "privacy": self.privacy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if set(state) != {"codec", "privacy"}:
            raise KeyError(f"Pipeline.load_state_dict: unexpected keys {sorted(state)}")
        self.codec.load_state_dict(state["codec"])
        self.privacy.load_state_dict(state["privacy"])
