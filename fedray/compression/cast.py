"""`fp16` and `bf16`: every value cast to a 16-bit float, `2 n` bytes, no metadata.

* `fp16` (IEEE 754 binary16, numpy's round to nearest even): values are first clipped to
  `±65504` (the largest finite half), so no finite value becomes inf. Bound: for `|x| <= 65504`,
  `|x - x_hat| <= max(2^-11 |x|, 2^-25)` (unit roundoff 2^-11 in the normal range `|x| >= 2^-14`,
  half the subnormal spacing 2^-24 below it). Small LoRA deltas (~1e-5) land in the subnormal
  range and keep only a few significant bits: prefer `bf16` there.
* `bf16` (bfloat16, the upper 16 bits of float32, Kalamkar et al. 2019): round to nearest, ties
  to even, on the 32-bit pattern. Same exponent range as float32, 8 significant bits. Bound:
  `|x - x_hat| <= 2^-8 |x|` for normal `x` (and `<= 2^-134` for float32 subnormals); finite
  values beyond the largest bfloat16 saturate.

Rounding to nearest can round up: the norm can grow (by at most the relative bound).
Wire: `n` little-endian float16 / bfloat16 values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.compression.lib.bits import Reader, bf16_round, bf16_to_f32
from fedray.compression.lib.chain import codec
from fedray.compression.lib.stages import CodecOptions, Quantizer

FP16_MAX = 65504.0


@dataclass
class Fp16Options(CodecOptions):
    """Options of `fp16` (none)."""

    name: str = "fp16"


@dataclass
class Bf16Options(CodecOptions):
    """Options of `bf16` (none)."""

    name: str = "bf16"


@codec("fp16", Fp16Options)
class Fp16(Quantizer):
    """IEEE half precision cast, saturating; see the module docstring."""

    def nbytes(self, seg: np.ndarray) -> int:
        return 2 * int(np.sum(seg))

    def encode(self, x: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> bytes:
        return np.clip(x, -FP16_MAX, FP16_MAX).astype("<f2").tobytes()

    def decode(self, reader: Reader, seg: np.ndarray) -> np.ndarray:
        return reader.array("<f2", int(np.sum(seg))).astype(np.float32)


@codec("bf16", Bf16Options)
class Bf16(Quantizer):
    """bfloat16 cast, round to nearest even; see the module docstring."""

    def nbytes(self, seg: np.ndarray) -> int:
        return 2 * int(np.sum(seg))

    def encode(self, x: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> bytes:
        return bf16_round(x).astype("<u2").tobytes()

    def decode(self, reader: Reader, seg: np.ndarray) -> np.ndarray:
        return bf16_to_f32(reader.array("<u2", int(np.sum(seg))))
