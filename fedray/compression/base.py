<<<<<<< HEAD
"""The codec interface: how an update (or the broadcast state) is shrunk for the trip, and
restored. A registered compression option builds an object with this shape."""
=======
"""The stage interface behind :class:`fedray.compression.lib.chain.Chain`.

A chain is at most one :class:`Sparsifier` (which positions travel) followed by at most one
:class:`Quantizer` (how the travelling float32 values are written). Stages are pure numpy: no Ray,
no torch, no state between calls; all randomness comes from the generator the chain derives from
its `seed`, so the same input and seed give the same bytes.

Both stages see the update as one float32 vector in :class:`StateSpec` order, cut into
*segments*: the tensors for a dense quantizer, or the values a sparsifier kept from each tensor.
Blockwise quantizers never let a block straddle two segments.
"""
>>>>>>> refs/rewritten/Lazy-fedray-models-the-coordinator-never-imports-torch-compression-spec-in-core-dense-none-codec

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

<<<<<<< HEAD
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
=======
from fedray.compression.lib.bits import Reader
from fedray.compression.lib.spec import StateSpec


@dataclass
class CodecOptions:
    """Fields every codec node has. `error_feedback` is a chain setting: on a single-codec node
    it switches error feedback for that one-stage chain; inside `name: chain` it must stay off
    (the chain node has its own)."""

    name: str = ""
    error_feedback: bool = False

    def check(self) -> None:
        """Raise ValueError with a one-line reason if an option is out of range."""


class Quantizer(ABC):
    """Writes `n` float32 values in a size fixed by the segments alone (no data dependence)."""

    kind: ClassVar[str] = "quantizer"
    summable: ClassVar[bool] = False
    """True iff decode is linear in an additive payload (a sum of payloads decodes to the sum)."""
    can_grow_norm: ClassVar[bool] = True
    """True iff ||decode(encode(x))|| can exceed ||x||."""

    def __init__(self, options: CodecOptions) -> None:
        self.options = options

    @abstractmethod
    def nbytes(self, seg: np.ndarray) -> int:
        """Exact bytes :meth:`encode` writes for segments of lengths `seg`."""

    @abstractmethod
    def encode(self, x: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> bytes:
        """float32 values (segments `seg`, `sum(seg) == x.size`) -> bytes."""

    @abstractmethod
    def decode(self, reader: Reader, seg: np.ndarray) -> np.ndarray:
        """Read exactly :meth:`nbytes` bytes -> float32 values."""

    def ef_problem(self) -> str | None:
        """Why error feedback must not run behind this stage (it would diverge), or None."""
        return None


class Float32(Quantizer):
    """No quantizer: the values as little-endian float32, `4 n` bytes. Exact, linear."""

    summable = True
    can_grow_norm = False

    def nbytes(self, seg: np.ndarray) -> int:
        return 4 * int(np.sum(seg))

    def encode(self, x: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> bytes:
        return x.astype("<f4", copy=False).tobytes()

    def decode(self, reader: Reader, seg: np.ndarray) -> np.ndarray:
        return reader.array("<f4", int(np.sum(seg)))


@dataclass
class Selection:
    """What a sparsifier keeps: sorted flat positions, how many fall in each tensor, and an
    optional per-tensor factor the decoder multiplies the values by (unbiased rand-k)."""

    positions: np.ndarray
    seg: np.ndarray
    gain: np.ndarray | None = None


class Sparsifier(ABC):
    """Chooses positions; writes what the decoder needs beyond the spec to find them again."""

    kind: ClassVar[str] = "sparsifier"
    summable: ClassVar[bool] = False
    can_grow_norm: ClassVar[bool] = False

    def __init__(self, options: CodecOptions) -> None:
        self.options = options

    @abstractmethod
    def select(self, x: np.ndarray, spec: StateSpec, seed: int) -> tuple[bytes, Selection]:
        """(index section, selection) for the flat update `x`."""

    @abstractmethod
    def parse(self, reader: Reader, spec: StateSpec) -> Selection:
        """Read the index section written by :meth:`select`."""

    def ef_problem(self) -> str | None:
        """Why error feedback must not run behind this stage (it would diverge), or None.

        Error feedback needs a contractive compressor, `E||C(x) - x||^2 <= (1 - delta) ||x||^2`
        (Karimireddy et al. 2019); an unbiased one with variance factor >= 1 makes the residual
        grow each round."""
        return None
>>>>>>> refs/rewritten/Lazy-fedray-models-the-coordinator-never-imports-torch-compression-spec-in-core-dense-none-codec
