"""`prune`: magnitude pruning of the update to a target density, per tensor; optionally
structured (whole rows).

Unstructured (default; Han et al. 2015 applied to the update, layer-wise as in Sattler et al.
2019): each tensor `t` keeps its `k_t = ceil(density n_t)` largest `|x_i|`. Structured
(`structured=true`; Li et al. 2017 style row pruning): each tensor is viewed as `shape[0]` rows
(a 1-D tensor's rows are its entries, a scalar is one row) and keeps its
`ceil(density rows_t)` rows of largest L2 norm, whole; the index section then codes row ids
(one per row, not per entry).

Round-trip bound: exact on the kept entries (rows), 0 elsewhere; per tensor every dropped
entry (row) has magnitude (L2 norm) <= every kept one, so `||x_t - x_hat_t||^2 <=
(1 - k_t/n_t) ||x_t||^2`.

Wire: index section (:mod:`fedray.compression.lib.index`) over the `d` flat positions, or over the
`sum_t rows_t` global row ids when structured, then the quantizer's section for the kept values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.compression.lib.bits import Reader
from fedray.compression.lib.chain import codec
from fedray.compression.lib.index import decode_positions, encode_positions
from fedray.compression.lib.sparse import (
    expand_rows,
    keep_counts,
    largest_per_tensor,
    row_layout,
    segments,
)
from fedray.compression.lib.spec import StateSpec
from fedray.compression.lib.stages import CodecOptions, Selection, Sparsifier


@dataclass
class PruneOptions(CodecOptions):
    """Options of `prune`."""

    name: str = "prune"
    density: float = 0.1
    structured: bool = False

    def check(self) -> None:
        if not 0 < self.density <= 1:
            raise ValueError(f"density={self.density} must be in (0, 1]")


@codec("prune", PruneOptions)
class Prune(Sparsifier):
    """Per-tensor magnitude pruning, unstructured or by rows; see the module docstring."""

    options: PruneOptions

    def counts(self, spec: StateSpec) -> np.ndarray:
        """Kept entries (or rows, when structured) per tensor."""
        units = spec.rows if self.options.structured else spec.sizes
        return keep_counts(units, self.options.density, None)

    def select(self, x: np.ndarray, spec: StateSpec, seed: int) -> tuple[bytes, Selection]:
        ks = self.counts(spec)
        if not self.options.structured:
            pos = largest_per_tensor(np.abs(x), spec.offsets, ks)
            return encode_positions(pos, spec.size), Selection(pos, segments(pos, spec.offsets))
        row_offsets, lengths = row_layout(spec)
        norms = np.zeros(int(row_offsets[-1]), np.float64)
        for t, (o, e) in enumerate(zip(spec.offsets[:-1], spec.offsets[1:], strict=True)):
            if lengths[t]:
                block = x[o:e].reshape(-1, int(lengths[t])).astype(np.float64)
                norms[row_offsets[t] : row_offsets[t + 1]] = np.einsum("ij,ij->i", block, block)
        rows = largest_per_tensor(norms, row_offsets, ks)
        pos, seg = expand_rows(rows, spec)
        return encode_positions(rows, int(row_offsets[-1])), Selection(pos, seg)

    def parse(self, reader: Reader, spec: StateSpec) -> Selection:
        ks = self.counts(spec)
        if not self.options.structured:
            pos = decode_positions(reader, int(ks.sum()), spec.size)
            seg = segments(pos, spec.offsets)
            found = seg
        else:
            row_offsets, _ = row_layout(spec)
            rows = decode_positions(reader, int(ks.sum()), int(row_offsets[-1]))
            pos, seg = expand_rows(rows, spec)
            found = segments(rows, row_offsets)
        if not np.array_equal(found, ks):
            raise ValueError("index section puts a different count in some tensor than prune keeps")
        return Selection(pos, seg)
