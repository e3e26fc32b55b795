"""`topk`: keep the `k` largest-magnitude entries of the update, send them with their positions.

Selection (Aji & Heafield 2017; Stich et al. 2018): with `scope=global` (default) the `k` largest
`|x_i|` over the whole flattened update, `k = ceil(fraction d)` or the given `k`; with
`scope=tensor` each tensor `t` keeps its own `k_t = ceil(fraction n_t)` (or `min(k, n_t)`), so
no tensor is starved by another's larger scale (e.g. LoRA A vs B). Ties are broken by
`numpy.argpartition` (deterministic for a given input).

Round-trip bound: `x_hat_i = x_i` on the kept set `K`, `0` elsewhere, and every dropped
`|x_j| <= min_{i in K} |x_i|` (per tensor with `scope=tensor`); hence `||x - x_hat||^2 <=
(1 - k/d) ||x||^2`, the contraction that makes it safe with error feedback (Stich et al. 2018).

Wire: the index section of :mod:`fedray.compression.lib.index` (tag + bitmap or Rice-coded gaps
over `d` positions, whichever is smaller), then the quantizer's section for the `k` kept values
(plain float32 without a quantizer). `k` is not sent: it follows from the options and the spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.compression.lib.bits import Reader
from fedray.compression.lib.chain import codec
from fedray.compression.lib.index import decode_positions, encode_positions
from fedray.compression.lib.sparse import keep_counts, largest, largest_per_tensor, segments
from fedray.compression.lib.spec import StateSpec
from fedray.compression.lib.stages import CodecOptions, Selection, Sparsifier

SCOPES = ("global", "tensor")


@dataclass
class TopKOptions(CodecOptions):
    """Options of `topk`. `k`, when set, overrides `fraction`."""

    name: str = "topk"
    fraction: float | None = 0.01
    k: int | None = None
    scope: str = "global"

    def check(self) -> None:
        check_count(self.fraction, self.k, "fraction")
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r} must be one of {', '.join(SCOPES)}")


def check_count(fraction: float | None, k: int | None, what: str) -> None:
    """One-line errors for a (fraction, k) pair."""
    if k is not None:
        if k < 1:
            raise ValueError(f"k={k} must be >= 1 (or null to use {what})")
    elif fraction is None:
        raise ValueError(f"set {what} (in (0, 1]) or k")
    elif not 0 < fraction <= 1:
        raise ValueError(f"{what}={fraction} must be in (0, 1]")


@codec("topk", TopKOptions)
class TopK(Sparsifier):
    """Magnitude top-k sparsifier; see the module docstring."""

    options: TopKOptions

    def counts(self, spec: StateSpec) -> np.ndarray:
        """Kept entries: one total (`scope=global`) or one per tensor (`scope=tensor`)."""
        o = self.options
        sizes = spec.sizes if o.scope == "tensor" else np.array([spec.size], np.int64)
        return keep_counts(sizes, o.fraction, o.k)

    def select(self, x: np.ndarray, spec: StateSpec, seed: int) -> tuple[bytes, Selection]:
        ks = self.counts(spec)
        score = np.abs(x)
        if self.options.scope == "tensor":
            pos = largest_per_tensor(score, spec.offsets, ks)
        else:
            pos = largest(score, int(ks[0]))
        return encode_positions(pos, spec.size), Selection(pos, segments(pos, spec.offsets))

    def parse(self, reader: Reader, spec: StateSpec) -> Selection:
        ks = self.counts(spec)
        pos = decode_positions(reader, int(ks.sum()), spec.size)
        seg = segments(pos, spec.offsets)
        if self.options.scope == "tensor" and not np.array_equal(seg, ks):
            raise ValueError("index section puts a different count in some tensor than topk keeps")
        return Selection(pos, seg)
