"""The stage interface behind :class:`fedray.compression.lib.chain.Chain`.

A chain is at most one :class:`Sparsifier` (which positions travel) followed by at most one
:class:`Quantizer` (how the travelling float32 values are written). Stages are pure numpy: no Ray,
no torch, no state between calls; all randomness comes from the generator the chain derives from
its `seed`, so the same input and seed give the same bytes.

Both stages see the update as one float32 vector in :class:`StateSpec` order, cut into
*segments*: the tensors for a dense quantizer, or the values a sparsifier kept from each tensor.
Blockwise quantizers never let a block straddle two segments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedray.compression.lib.bits import Reader
from fedray.compression.lib.spec import StateSpec

DOWNLINK_HELP = (
    "The downlink codec of the broadcast global state: `none` (dense float32), a quantizer's "
    "name (`fp16`) or node (`{name: int8, block: 64}`). Uplink-only settings stay on the uplink."
)


@dataclass
class CodecOptions:
    """Fields every codec node has. `error_feedback` is a chain setting: on a single-codec node
    it switches error feedback for that one-stage chain; inside `name: chain` it must stay off
    (the chain node has its own). `down` (the downlink codec, see
    :func:`fedray.compression.lib.chain.downlink_chain`) likewise belongs to the top node."""

    name: str = ""
    error_feedback: bool = False
    down: Any = field(default="none", metadata={"help": DOWNLINK_HELP})

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

    def down_problem(self) -> str | None:
        """Why this stage cannot encode a global *state* on the downlink, or None."""
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

    def down_problem(self) -> str | None:
        """A sparsifier cannot encode the broadcast: the downlink sends the global *state*, whole,
        to sampled clients that hold no earlier copy to add a sparse delta to."""
        return (
            f"{self.options.name} is a sparsifier: it would zero most of the global state, which "
            "the downlink sends whole (sampled clients hold no earlier copy to patch); use a "
            "quantizer (fp16, bf16, int8, int4, nf4)"
        )
