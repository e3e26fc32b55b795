"""`sign`: one bit per value plus the mean magnitude per block (scaled sign, EF-signSGD).

Karimireddy et al. 2019 (EF-SignSGD; scaled sign compressor, with error feedback): per block `B`
(`block=null`: one block per tensor),

    s_B = ||x_B||_1 / n_B (rounded down to float32),   x_hat_i = s_B sign(x_i)   (sign(0) = +1)

Bound (exact identity, up to the rounding of `s_B`): `||x_B - x_hat_B||^2 = ||x_B||^2 -
||x_B||_1^2 / n_B <= (1 - 1/n_B) ||x_B||^2`, a contraction, which is what error feedback needs.
The norm cannot grow: `||x_hat_B|| = s_B sqrt(n_B) <= ||x_B||_1 / sqrt(n_B) <= ||x_B||_2`.
Biased on its own: use it with error feedback (the default in `conf/compression/sign.yaml`).

Wire: `nb` scales (float32 LE), then `ceil(n/8)` bytes of sign bits (1 = negative, LSB-first).
Size: `4 nb + ceil(n / 8)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.compression.lib.bits import Reader, packed_nbytes
from fedray.compression.lib.blocks import block_layout, block_reduce, num_blocks
from fedray.compression.lib.chain import codec
from fedray.compression.lib.stages import CodecOptions, Quantizer


@dataclass
class SignOptions(CodecOptions):
    """Options of `sign`."""

    name: str = "sign"
    block: int | None = None

    def check(self) -> None:
        if self.block is not None and self.block < 1:
            raise ValueError(f"block={self.block} must be >= 1 (or null: one scale per tensor)")


@codec("sign", SignOptions)
class Sign(Quantizer):
    """Scaled sign quantizer; see the module docstring."""

    options: SignOptions
    can_grow_norm = False

    def down_problem(self) -> str | None:
        return (
            "sign keeps one magnitude per block, so every weight of the global state would "
            "become +-mean|w|; it compresses updates (with error feedback), not states"
        )

    def nbytes(self, seg: np.ndarray) -> int:
        return 4 * num_blocks(seg, self.options.block) + packed_nbytes(int(np.sum(seg)), 1)

    def encode(self, x: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> bytes:
        starts, lengths = block_layout(seg, self.options.block)
        mean = block_reduce(np.add, np.abs(x), starts, dtype=np.float64) / np.maximum(lengths, 1)
        scales = mean.astype(np.float32)
        over = scales > mean
        scales[over] = np.nextafter(scales[over], np.float32(0))  # round down: norm cannot grow
        bits = np.packbits(x < 0, bitorder="little")
        return scales.astype("<f4").tobytes() + bits.tobytes()

    def decode(self, reader: Reader, seg: np.ndarray) -> np.ndarray:
        starts, lengths = block_layout(seg, self.options.block)
        scales = reader.array("<f4", starts.size)
        n = int(np.sum(seg))
        raw = np.frombuffer(reader.take(packed_nbytes(n, 1)), np.uint8)
        neg = np.unpackbits(raw, count=n, bitorder="little").astype(bool)
        out = np.repeat(scales, lengths)
        np.negative(out, out=out, where=neg)
        return out
