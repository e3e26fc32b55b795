"""`int8` and `int4`: blockwise symmetric (absmax) uniform quantization with bf16 scales.

Per block `B` of `block` values (blocks never straddle tensors; Dettmers et al. 2022, "8-bit
optimizers via block-wise quantization"), with `Q = 2^(bits-1) - 1` (127 or 7):

    s_B = bf16_up(max_{i in B} |x_i| / Q),   q_i = round(x_i / s_B) in [-Q, Q],   x_hat_i = q_i s_B

`bf16_up` rounds the scale *up* to the next bfloat16 (relative cost <= 2^-7), so `|x_i / s_B| <= Q`
and nothing is clipped; bfloat16 keeps float32's exponent range (fp16 scales would underflow for
LoRA deltas ~1e-6). `rounding=nearest` (default, round half to even): `|x_i - x_hat_i| <= s_B / 2`.
`rounding=stochastic` (Gupta et al. 2015): `q_i = floor(x_i / s_B + u_i)`, `u_i ~ U[0, 1)` from the
seed, so `E[x_hat_i] = x_i` and `|x_i - x_hat_i| < s_B` (variance <= s_B^2 / 4). Either way the
norm can grow (rounding up).

Wire: `nb` scales (bf16 bits, uint16 LE), then the codes: `int8` one int8 per value; `int4` two
per byte (value `2i` in the low nibble, `2i+1` in the high one), nibble `q + 8`.
Size: `2 nb + n` (int8), `2 nb + ceil(n / 2)` (int4), `nb = sum_t ceil(n_t / block)` over the
segments. Metadata share at 4 bits, full blocks: `2 / (block/2 + 2)` = 1.54% at `block=256`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.compression.lib.bits import (
    Reader,
    bf16_ceil,
    bf16_to_f32,
    pack_nibbles,
    packed_nbytes,
    unpack_nibbles,
)
from fedray.compression.lib.blocks import block_layout, block_reduce, num_blocks
from fedray.compression.lib.chain import codec
from fedray.compression.lib.stages import CodecOptions, Quantizer

ROUNDINGS = ("nearest", "stochastic")


@dataclass
class Int8Options(CodecOptions):
    """Options of `int8`."""

    name: str = "int8"
    block: int = 256
    rounding: str = "nearest"

    def check(self) -> None:
        check_block(self.block)
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding={self.rounding!r} must be one of {', '.join(ROUNDINGS)}")


@dataclass
class Int4Options(Int8Options):
    """Options of `int4`."""

    name: str = "int4"


def check_block(block: int) -> None:
    """Block sizes are >= 2 and even (so 4-bit codes of one block fill whole bytes)."""
    if block < 2 or block % 2:
        raise ValueError(f"block={block} must be an even number >= 2")


def block_scales(
    x: np.ndarray, seg: np.ndarray, block: int, top: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale bits, per-value scale, block lengths) for absmax scaling to `[-top, top]`."""
    starts, lengths = block_layout(seg, block)
    amax = block_reduce(np.maximum, np.abs(x), starts)
    bits = bf16_ceil(amax / np.float32(top))
    return bits, np.repeat(bf16_to_f32(bits), lengths), lengths


def scaled(x: np.ndarray, per_value: np.ndarray) -> np.ndarray:
    """`x / scale`, 0 where the scale is 0 (an all-zero block)."""
    with np.errstate(invalid="ignore"):
        return np.divide(x, per_value, out=np.zeros_like(x), where=per_value != 0)


class BlockInt(Quantizer):
    """Blockwise absmax integer quantizer with `bits` bits per value."""

    bits: int

    def __init__(self, options: Int8Options) -> None:
        super().__init__(options)
        self.top = 2 ** (self.bits - 1) - 1
        self.block = options.block

    def nbytes(self, seg: np.ndarray) -> int:
        return 2 * num_blocks(seg, self.block) + packed_nbytes(int(np.sum(seg)), self.bits)

    def encode(self, x: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> bytes:
        bits, per_value, _ = block_scales(x, seg, self.block, self.top)
        y = scaled(x, per_value)
        if self.options.rounding == "stochastic":
            y += rng.random(y.size, dtype=np.float32)
            np.floor(y, out=y)
        else:
            np.rint(y, out=y)
        np.clip(y, -self.top, self.top, out=y)
        with np.errstate(invalid="ignore"):  # NaN codes: the block's scale is NaN anyway
            q = y.astype(np.int8)
        codes = q.tobytes() if self.bits == 8 else pack_nibbles(q + np.int8(8))
        return bits.astype("<u2").tobytes() + codes

    def decode(self, reader: Reader, seg: np.ndarray) -> np.ndarray:
        starts, lengths = block_layout(seg, self.block)
        scales = bf16_to_f32(reader.array("<u2", starts.size))
        n = int(np.sum(seg))
        if self.bits == 8:
            q = reader.array("i1", n)
        else:
            q = unpack_nibbles(reader.take(packed_nbytes(n, 4)), n).view(np.int8) - np.int8(8)
        return q * np.repeat(scales, lengths)


@codec("int8", Int8Options)
class Int8(BlockInt):
    """8-bit blockwise absmax quantizer; see the module docstring."""

    bits = 8


@codec("int4", Int4Options)
class Int4(BlockInt):
    """4-bit blockwise absmax quantizer, two codes per byte; see the module docstring."""

    bits = 4
