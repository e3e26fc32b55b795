"""`qsgd`: unbiased stochastic quantization to `s` levels of a per-bucket norm.

Alistarh et al. 2017 (QSGD, Sec. 3.1, with bucketing): per bucket `B` of `block` values (never
straddling tensors), `N_B = ||x_B||_2` (`norm=l2`, the paper's) or `max_i |x_i|` (`norm=max`, lower
variance), step `h_B = N_B / s` (float32),

    r_i = |x_i| / h_B in [0, s],   l_i = floor(r_i) + Bernoulli(r_i - floor(r_i)),
    x_hat_i = sign(x_i) l_i h_B

with the uniforms from the seed. Unbiased: `E[x_hat_i] = x_i`; per value
`Var = h_B^2 p(1 - p) <= h_B^2 / 4` and always `|x_i - x_hat_i| < h_B`; for `norm=l2`
`E||x_hat_B - x_B||^2 <= min(n_B / s^2, sqrt(n_B) / s) ||x_B||^2` (Lemma 3.1). The norm can grow.
That factor is >= 1 for `norm=l2` unless `block < levels^2`: error feedback (which needs a
contraction) is then refused. `norm=max` has no such worst-case guarantee either, but on LoRA-like
deltas its error is ~0.2 of the input and error feedback stays bounded.

Wire: `nb` norms (float32 LE), then per value a `w = 1 + bit_length(s)`-bit field
`l | sign << (w-1)` (sign bit 1 = negative), packed LSB-first (two per byte when `w = 4`,
i.e. `s <= 7`).
Size: `4 nb + ceil(n w / 8)`, `nb = sum_t ceil(n_t / block)`. Fixed width instead of the paper's
Elias coding: vectorised and a size known in advance; at `s = 7, block = 512` the norms cost 1.5%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.compression.intq import scaled
from fedray.compression.lib.bits import Reader, pack_uint, packed_nbytes, unpack_uint
from fedray.compression.lib.blocks import block_layout, block_reduce, num_blocks
from fedray.compression.lib.chain import codec
from fedray.compression.lib.stages import CodecOptions, Quantizer

NORMS = ("l2", "max")


@dataclass
class QsgdOptions(CodecOptions):
    """Options of `qsgd`."""

    name: str = "qsgd"
    levels: int = 7
    block: int = 512
    norm: str = "l2"

    def check(self) -> None:
        if not 1 <= self.levels <= 2**15 - 1:
            raise ValueError(f"levels={self.levels} must be in [1, 32767]")
        if self.block < 1:
            raise ValueError(f"block={self.block} must be >= 1")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r} must be one of {', '.join(NORMS)}")
        if self.error_feedback and (problem := ef_problem(self)):
            raise ValueError(problem)


def ef_problem(options: QsgdOptions) -> str | None:
    """With `norm=l2`, Lemma 3.1's variance factor `min(n/s^2, sqrt(n)/s)` is >= 1 unless
    `block < levels^2`: not contractive, and error feedback measurably diverges."""
    if options.norm == "l2" and options.block >= options.levels**2:
        factor = min(options.block / options.levels**2, options.block**0.5 / options.levels)
        return (
            f"error feedback behind qsgd norm=l2 diverges at block={options.block}, "
            f"levels={options.levels} (variance factor {factor:.1f} >= 1); use norm=max, "
            "block < levels^2, or error_feedback=false"
        )
    return None


@codec("qsgd", QsgdOptions)
class Qsgd(Quantizer):
    """QSGD stochastic quantizer; see the module docstring."""

    options: QsgdOptions

    def __init__(self, options: QsgdOptions) -> None:
        super().__init__(options)
        self.width = 1 + int(options.levels).bit_length()

    def nbytes(self, seg: np.ndarray) -> int:
        nb = num_blocks(seg, self.options.block)
        return 4 * nb + packed_nbytes(int(np.sum(seg)), self.width)

    def ef_problem(self) -> str | None:
        return ef_problem(self.options)

    def down_problem(self) -> str | None:
        """The same variance factor bounds the error on a global state: >= 1, the noise is as
        large as the weights it encodes."""
        o = self.options
        if ef_problem(o) is None:
            return None
        return (
            f"qsgd norm={o.norm} at block={o.block}, levels={o.levels} adds noise as large as the "
            "global state it encodes; use norm=max, or int8 | int4 | nf4"
        )

    def steps(self, norms: np.ndarray) -> np.ndarray:
        """Per-bucket step `h = N / s` (float32), computed identically on both ends."""
        return norms / np.float32(self.options.levels)

    def encode(self, x: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> bytes:
        o = self.options
        starts, lengths = block_layout(seg, o.block)
        ax = np.abs(x)
        if o.norm == "l2":
            sq = block_reduce(np.add, np.square(x, dtype=np.float64), starts)
            norms = np.sqrt(sq).astype(np.float32)
        else:
            norms = block_reduce(np.maximum, ax, starts)
        r = scaled(ax, np.repeat(self.steps(norms), lengths))
        with np.errstate(invalid="ignore"):
            level = np.floor(r)
            r -= level  # fractional part: P(round up)
            level += rng.random(r.size, dtype=np.float32) < r
            np.minimum(level, o.levels, out=level)
            code = level.astype(np.uint32)
        code |= (x < 0).astype(np.uint32) << np.uint32(self.width - 1)
        return norms.astype("<f4").tobytes() + pack_uint(code, self.width)

    def decode(self, reader: Reader, seg: np.ndarray) -> np.ndarray:
        starts, lengths = block_layout(seg, self.options.block)
        norms = reader.array("<f4", starts.size)
        n = int(np.sum(seg))
        code = unpack_uint(reader.take(packed_nbytes(n, self.width)), n, self.width)
        top = 1 << (self.width - 1)
        level = (code & (top - 1)).astype(np.float32)
        level[code >= top] *= -1
        return level * np.repeat(self.steps(norms), lengths)
