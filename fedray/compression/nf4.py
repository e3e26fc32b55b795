"""`nf4`: QLoRA's 4-bit NormalFloat code book with a bf16 absmax scale per block.

Dettmers et al. 2023 (QLoRA, Sec. 3 and Appendix E): the 16 values :data:`NF4` are quantiles of
N(0, 1) normalised to [-1, 1] with an exact zero (bitsandbytes' `get_4bit_type("nf4")`). Per block
`B` of `block` values (never straddling tensors):

    s_B = bf16_up(max_{i in B} |x_i|),  c_i = argmin_j |x_i / s_B - NF4[j]|,  x_hat_i = NF4[c_i] s_B

(`s_B` rounded up to a bfloat16 so `|x_i / s_B| <= 1`; ties go to the lower code). Bound:
`|x_i - x_hat_i| <= s_B * (gap around x_i / s_B) / 2 <= s_B (1 - 0.6961928) / 2 = 0.1519 s_B`; the
norm can grow (nearest code may be larger). QLoRA's double quantization of the scales is not used:
at `block=256` a bf16 scale already costs 1.54% of the payload (QLoRA's 64-value blocks with
8-bit scales would cost 3%).

Wire: `nb` scales (bf16 bits, uint16 LE), then `ceil(n/2)` bytes of code indices, two per byte
(value `2i` low nibble). Size: `2 nb + ceil(n / 2)`, `nb = sum_t ceil(n_t / block)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.compression.intq import block_scales, check_block, scaled
from fedray.compression.lib.bits import (
    Reader,
    bf16_to_f32,
    pack_nibbles,
    packed_nbytes,
    unpack_nibbles,
)
from fedray.compression.lib.blocks import block_layout, num_blocks
from fedray.compression.lib.chain import codec
from fedray.compression.lib.stages import CodecOptions, Quantizer

NF4 = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)
"""The NF4 code book (Dettmers et al. 2023), index order = code order."""

MIDPOINTS = ((NF4[1:].astype(np.float64) + NF4[:-1]) / 2).astype(np.float32)


@dataclass
class Nf4Options(CodecOptions):
    """Options of `nf4`."""

    name: str = "nf4"
    block: int = 256

    def check(self) -> None:
        check_block(self.block)


@codec("nf4", Nf4Options)
class Nf4(Quantizer):
    """NormalFloat-4 blockwise quantizer; see the module docstring."""

    options: Nf4Options

    def nbytes(self, seg: np.ndarray) -> int:
        return 2 * num_blocks(seg, self.options.block) + packed_nbytes(int(np.sum(seg)), 4)

    def encode(self, x: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> bytes:
        bits, per_value, _ = block_scales(x, seg, self.options.block, 1.0)
        codes = np.searchsorted(MIDPOINTS, scaled(x, per_value)).astype(np.uint8)
        return bits.astype("<u2").tobytes() + pack_nibbles(codes)

    def decode(self, reader: Reader, seg: np.ndarray) -> np.ndarray:
        starts, lengths = block_layout(seg, self.options.block)
        scales = bf16_to_f32(reader.array("<u2", starts.size))
        n = int(np.sum(seg))
        codes = unpack_nibbles(reader.take(packed_nbytes(n, 4)), n)
        return NF4[codes] * np.repeat(scales, lengths)
