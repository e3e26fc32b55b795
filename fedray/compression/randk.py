"""`randk`: keep `k` uniformly random entries, drawn from the seed; only the seed and the values
travel.

Selection (Stich et al. 2018; Konečný et al. 2016 "random mask"): a uniform `k`-subset of the
`d` positions (`scope=global`) or of each tensor (`scope=tensor`, `k_t = ceil(fraction n_t)`),
drawn with `numpy.random.default_rng([seed, 0]).choice(n, k, replace=False)`. The decoder redraws
it from the seed in the payload, so positions cost 8 bytes.

`unbiased=true` (default) multiplies the kept values by `n/k` at decode, so `E[x_hat] = x` with
`E||x_hat - x||^2 = (n/k - 1) ||x||^2` (per tensor under `scope=tensor`): the norm can grow, and
error feedback is refused (it would diverge). `unbiased=false` sends the plain subset:
`E||x_hat - x||^2 = (1 - k/n) ||x||^2`, contractive, the variant to use with error feedback.
Round-trip bound: `x_hat_i = g x_i` (`g = n/k` or 1) on the kept set, 0 elsewhere.

Linear: with the same seed, summing payloads' float32 value sections decodes to the sum of the
decodes, so `[randk]` alone is the one summable non-empty chain.

Wire: seed (uint64 LE, 8 bytes), then the quantizer's section for the `k` kept values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from fedray.compression.lib.bits import Reader
from fedray.compression.lib.chain import codec
from fedray.compression.lib.sparse import keep_counts, segments
from fedray.compression.lib.spec import StateSpec
from fedray.compression.lib.stages import CodecOptions, Selection, Sparsifier
from fedray.compression.topk import SCOPES, check_count


@dataclass
class RandKOptions(CodecOptions):
    """Options of `randk`. `k`, when set, overrides `fraction`."""

    name: str = "randk"
    fraction: float | None = 0.1
    k: int | None = None
    scope: str = "global"
    unbiased: bool = True

    def check(self) -> None:
        check_count(self.fraction, self.k, "fraction")
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r} must be one of {', '.join(SCOPES)}")
        if self.error_feedback and (problem := ef_problem(self)):
            raise ValueError(problem)


def ef_problem(options: RandKOptions) -> str | None:
    """Unbiased rand-k is not contractive: E||x_hat - x||^2 = (d/k - 1) ||x||^2."""
    if options.unbiased:
        return (
            "error feedback behind unbiased rand-k diverges (its error, (d/k - 1) ||x||^2, "
            "exceeds its input); set unbiased=false or error_feedback=false"
        )
    return None


@codec("randk", RandKOptions)
class RandK(Sparsifier):
    """Seeded random-k sparsifier; see the module docstring."""

    options: RandKOptions
    summable = True

    def __init__(self, options: RandKOptions) -> None:
        super().__init__(options)
        self.can_grow_norm = options.unbiased  # type: ignore[misc]

    def ef_problem(self) -> str | None:
        return ef_problem(self.options)

    def _draw(self, spec: StateSpec, seed: int) -> Selection:
        o = self.options
        rng = np.random.default_rng([seed, 0])
        if o.scope == "tensor":
            sizes = spec.sizes
            ks = keep_counts(sizes, o.fraction, o.k)
            parts = [
                off + np.sort(rng.choice(int(n), int(kt), replace=False))
                for off, n, kt in zip(spec.offsets[:-1], sizes, ks, strict=True)
            ]
            pos = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        else:
            sizes = np.array([spec.size], np.int64)
            ks = keep_counts(sizes, o.fraction, o.k)
            pos = np.sort(rng.choice(spec.size, int(ks[0]), replace=False)).astype(np.int64)
        seg = segments(pos, spec.offsets)
        gain = None
        if o.unbiased:
            per = np.where(ks > 0, sizes / np.maximum(ks, 1), 0.0)
            gain = per if o.scope == "tensor" else np.full(len(spec.keys), per[0])
        return Selection(pos, seg, gain)

    def select(self, x: np.ndarray, spec: StateSpec, seed: int) -> tuple[bytes, Selection]:
        return struct.pack("<Q", seed), self._draw(spec, seed)

    def parse(self, reader: Reader, spec: StateSpec) -> Selection:
        (seed,) = struct.unpack("<Q", reader.take(8))
        return self._draw(spec, seed)
