"""The codec interface: how an update (or the broadcast state) is shrunk for the trip, and
restored. A registered compression option builds an object with this shape."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from fedray.core.types import State, StateSpec

Wire = np.ndarray
"""What travels: a flat uint8 array (zero-copy through Ray's object store); its length is the
number of bytes counted up or down."""


class Codec(Protocol):
    """encode/decode are inverse up to the codec's loss.

    `summable`: decoding a sum of payloads made with the same seed equals the sum of their
    decodings (a codec secure aggregation may sit behind). `can_grow_norm`: a decoded update
    may have a larger L2 norm than the encoded one (differential privacy must then clip after
    decoding).
    """

    summable: bool
    can_grow_norm: bool

    def encode(
        self, state: State, *, spec: StateSpec, seed: int, residual: State | None = None
    ) -> tuple[Wire, State | None]:
        """(payload, the next error-feedback residual or None)."""
        ...

    def decode(self, payload: Wire, spec: StateSpec) -> State:
        """The state a payload stands for."""
        ...


def as_wire(data: bytes | bytearray | memoryview | np.ndarray) -> Wire:
    """Bytes as a flat uint8 array (zero-copy)."""
    return np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data


def pack_dense(state: State, spec: StateSpec) -> Wire:
    """Dense float32 values of `state` in `spec` order, as one buffer (one copy)."""
    sizes = [int(np.prod(shape)) for _, shape in spec]
    out = np.empty(4 * sum(sizes), dtype=np.uint8)
    values = out.view(np.float32)
    start = 0
    for (key, _), size in zip(spec, sizes, strict=True):
        values[start : start + size] = np.asarray(state[key], dtype=np.float32).reshape(-1)
        start += size
    return out


def unpack_dense(payload: Any, spec: StateSpec) -> State:
    """The state of :func:`pack_dense` (read-only views into the payload)."""
    values = as_wire(payload).view(np.float32)
    sizes = [int(np.prod(shape)) for _, shape in spec]
    if values.size != sum(sizes):
        raise ValueError(f"payload holds {values.size} float32 values, the state has {sum(sizes)}")
    out: State = {}
    start = 0
    for (key, shape), size in zip(spec, sizes, strict=True):
        out[key] = values[start : start + size].reshape(shape)
        start += size
    return out
