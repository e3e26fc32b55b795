"""`compression=none`: the delta travels as float32 arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedray.registry import register
from fedray.strategies.aggregate import nbytes
from fedray.strategies.base import check_state_keys
from fedray.types import State


@dataclass
class NoCompressionOptions:
    """Options of `compression=none`."""

    name: str = "none"


@register("compression", "none", NoCompressionOptions)
class Identity:
    """The identity codec."""

    reveals_only_sums = False

    def __init__(self, options: NoCompressionOptions) -> None:
        self.options = options

    def encode(self, delta: State, *, client_id: int, round: int) -> State:
        return delta

    def decode(self, payload: State) -> State:
        return payload

    def nbytes(self, payload: State) -> int:
        return nbytes(payload)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(set(), state, "Identity")
