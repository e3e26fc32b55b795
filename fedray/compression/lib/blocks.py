"""Block layout for blockwise codecs: blocks never straddle a segment (a tensor, or the values a
sparsifier kept from one tensor), so one tensor's scale never depends on another's values."""

from __future__ import annotations

import numpy as np


def block_layout(seg: np.ndarray, block: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the blocks covering consecutive segments of lengths `seg`.

    Each non-empty segment of length `n` is cut into `ceil(n / block)` blocks, the last one
    possibly short; `block=None` makes each non-empty segment one block. Empty segments have no
    block. Vectorised over segments (no loop).
    """
    seg = np.asarray(seg, np.int64)
    ends = np.cumsum(seg)
    begins = ends - seg
    if block is None:
        keep = seg > 0
        return begins[keep], seg[keep]
    per = -(-seg // block)
    total = int(per.sum())
    first = np.cumsum(per) - per
    owner = np.repeat(np.arange(seg.size), per)
    starts = begins[owner] + block * (np.arange(total, dtype=np.int64) - first[owner])
    return starts, np.minimum(block, ends[owner] - starts)


def num_blocks(seg: np.ndarray, block: int | None) -> int:
    """Number of blocks :func:`block_layout` makes: `sum(ceil(n / block))` over segments
    (`block=None`: the number of non-empty segments)."""
    seg = np.asarray(seg, np.int64)
    if block is None:
        return int((seg > 0).sum())
    return int((-(-seg // block)).sum())


def block_reduce(ufunc: np.ufunc, x: np.ndarray, starts: np.ndarray, **kw: object) -> np.ndarray:
    """`ufunc.reduceat` over the blocks starting at `starts` (which tile `x` exactly)."""
    if starts.size == 0:
        return np.zeros(0, kw.get("dtype", x.dtype))  # type: ignore[arg-type]
    return ufunc.reduceat(x, starts, **kw)
