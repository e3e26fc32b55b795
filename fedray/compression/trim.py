"""`trim`: lossless; per tensor, only the leading block that holds every nonzero value travels.

Updates of heterogeneous and exact LoRA aggregation are zero by construction in a known
corner of each tensor: a rank-4 client of a rank-8 model leaves rows 4.. of every LoRA A and
columns 4.. of every LoRA B unchanged, a client that tunes only the top layers leaves the
other adapters unchanged, FLoRA's merged dense delta and a second architecture's tensors come
back unchanged. `trim` sends, per tensor, the extent along every axis of the smallest leading
block ``t[:e_0, :e_1, ...]`` that contains all nonzero values (an all-zero tensor has extent 0),
then that block's values through the chain's quantizer (float32 by default). Nothing is lost:
everything outside the block is zero, so decoding is exact (`compression=trim`), and a dense
update costs only its header. Chains put it first: `codecs=[{name: trim}, {name: int8}]`.

Wire: per tensor, `ndim` little-endian uint32 extents (a scalar counts as shape (1,)), then the
quantizer's section for the blocks' values in spec order (each block row-major).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.compression.lib.bits import Reader
from fedray.compression.lib.chain import codec
from fedray.compression.lib.spec import StateSpec
from fedray.compression.lib.stages import CodecOptions, Selection, Sparsifier


@dataclass
class TrimOptions(CodecOptions):
    """Options of `trim`: none (lossless)."""

    name: str = "trim"


def _shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape if shape else (1,)


def extents(t: np.ndarray) -> tuple[int, ...]:
    """Per axis, one past the last index that holds a nonzero value (all 0 for a zero tensor)."""
    nz = t != 0
    if not nz.any():
        return (0,) * t.ndim
    out = []
    for axis in range(t.ndim):
        others = tuple(a for a in range(t.ndim) if a != axis)
        along = nz.any(axis=others) if others else nz
        out.append(int(np.flatnonzero(along)[-1]) + 1)
    return tuple(out)


def block_positions(shape: tuple[int, ...], ext: tuple[int, ...]) -> np.ndarray:
    """Flat (row-major) positions of the block ``[:ext[0], :ext[1], ...]``, ascending."""
    if 0 in ext:
        return np.zeros(0, np.int64)
    grids = np.indices(ext).reshape(len(ext), -1)
    return np.ravel_multi_index(tuple(grids), shape).astype(np.int64)


@codec("trim", TrimOptions)
class Trim(Sparsifier):
    """Lossless leading-block trimming per tensor; see the module docstring."""

    summable = False  # blocks depend on the data
    can_grow_norm = False

    def select(self, x: np.ndarray, spec: StateSpec, seed: int) -> tuple[bytes, Selection]:
        heads, positions, seg = [], [], []
        for i, shape in enumerate(spec.shapes):
            shape = _shape(shape)
            lo, hi = int(spec.offsets[i]), int(spec.offsets[i + 1])
            ext = extents(x[lo:hi].reshape(shape))
            heads.append(np.asarray(ext, "<u4"))
            pos = block_positions(shape, ext) + lo
            positions.append(pos)
            seg.append(pos.size)
        head = np.concatenate(heads).tobytes() if heads else b""
        return head, Selection(_cat(positions), np.asarray(seg, np.int64))

    def parse(self, reader: Reader, spec: StateSpec) -> Selection:
        positions, seg = [], []
        for i, shape in enumerate(spec.shapes):
            shape = _shape(shape)
            ext = tuple(int(e) for e in reader.array("<u4", len(shape)))
            if any(e > s for e, s in zip(ext, shape, strict=True)):
                raise ValueError(f"trim: extents {ext} exceed the shape {shape} of tensor {i}")
            if 0 in ext and any(ext):
                raise ValueError(f"trim: extents {ext} of tensor {i} mix zero and nonzero")
            pos = block_positions(shape, ext) + int(spec.offsets[i])
            positions.append(pos)
            seg.append(pos.size)
        return Selection(_cat(positions), np.asarray(seg, np.int64))


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
