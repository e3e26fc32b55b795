"""`compression=none`: dense float32, the state's values in key order, nothing else.

The payload is one uint8 array (the same bytes as the empty codec chain, ``4 * n``), written
with one copy and read back as zero-copy views: through Ray's object store a numpy buffer is
not copied again, which matters when the whole model travels (full fine-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedray.compression.lib.stages import DOWNLINK_HELP
from fedray.core.registry import register
from fedray.core.types import State, StateSpec


@dataclass
class NoCompressionOptions:
    """Options of `compression=none`."""

    name: str = "none"
    down: Any = field(default="none", metadata={"help": DOWNLINK_HELP})


def pack_dense(state: State, spec: StateSpec) -> np.ndarray:
    """Dense float32 values of `state` in `spec` order, as one uint8 buffer (one copy)."""
    out = np.empty(4 * spec.size, dtype=np.uint8)
    values, o = out.view(np.float32), spec.offsets
    for i, key in enumerate(spec.keys):
        values[o[i] : o[i + 1]] = np.asarray(state[key], dtype=np.float32).reshape(-1)
    return out


def unpack_dense(payload: Any, spec: StateSpec) -> State:
    """The state of :func:`pack_dense` (read-only views into the payload)."""
    buf = payload if isinstance(payload, np.ndarray) else np.frombuffer(payload, np.uint8)
    if buf.nbytes != 4 * spec.size:
        raise ValueError(f"payload has {buf.nbytes} bytes; dense float32 needs {4 * spec.size}")
    return spec.unflatten(buf.view(np.float32))


@register("compression", "none", NoCompressionOptions)
class Identity:
    """The identity codec: 4 bytes per value, no framing (both ends know the spec)."""

    summable = True
    can_grow_norm = False
    error_feedback = False

    def __init__(self, options: NoCompressionOptions | None = None) -> None:
        self.options = options or NoCompressionOptions()

    def encode(
        self, delta: State, *, spec: StateSpec, seed: int, residual: State | None = None
    ) -> tuple[np.ndarray, None]:
        if residual is not None:
            raise ValueError("a residual was given but compression=none has no error feedback")
        return pack_dense(delta, spec), None

    def decode(self, payload: Any, spec: StateSpec) -> State:
        return unpack_dense(payload, spec)
