"""`compression=none`: dense float32, the state's values in key order, nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from fedray.compression.base import Wire, pack_dense, unpack_dense
from fedray.core.registry import register
from fedray.core.types import State, StateSpec


@dataclass
class NoCompressionOptions:
    """Options of `compression=none`."""

    name: str = "none"


@register("compression", "none", NoCompressionOptions)
class Identity:
    """The identity codec: 4 bytes per value, no framing (both ends know the spec)."""

    summable = True
    can_grow_norm = False

    def __init__(self, options: NoCompressionOptions | None = None) -> None:
        self.options = options or NoCompressionOptions()

    def encode(
        self, state: State, *, spec: StateSpec, seed: int, residual: State | None = None
    ) -> tuple[Wire, None]:
        return pack_dense(state, spec), None

    def decode(self, payload: Wire, spec: StateSpec) -> State:
        return unpack_dense(payload, spec)
