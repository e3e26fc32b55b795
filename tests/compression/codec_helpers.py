"""Shared fixtures-as-functions for the codec tests: states, specs, and independent size formulas.

The formulas here are written from the wire-format docstrings, not from the implementation, so
`len(payload) == formula(...)` checks the documented format.
"""

from __future__ import annotations

from fractions import Fraction
from itertools import pairwise
from math import ceil

import numpy as np

from fedray.compression import StateSpec, build_chain

SHAPES: list[list[tuple[int, ...]]] = [
    [(7,)],
    [(3, 5), (10,), (1,)],
    [(8, 384), (384, 8)],
    [(1000,)],
    [(), (0, 3), (513,), (2, 2, 2)],
]


def make_state(shapes: list[tuple[int, ...]], seed: int = 0, scale: float = 1e-3) -> dict:
    """A float32 state with tensors of different magnitudes and a zero block in the largest."""
    rng = np.random.default_rng(seed)
    state = {}
    for i, shape in enumerate(shapes):
        v = np.asarray(rng.standard_normal(shape) * scale * 10.0 ** (i % 3 - 1), np.float32)
        if v.size > 600:
            v.reshape(-1)[256:512] = 0.0  # an all-zero block
        state[f"t{i}"] = v
    return state


def no_zeros(state: dict) -> dict:
    """The state with exact zeros replaced by tiny values (so kept entries are the nonzeros)."""
    return {k: np.where(v == 0, np.float32(1e-9), v).astype(np.float32) for k, v in state.items()}


def lora_state(seed: int = 0) -> dict:
    """A realistic LoRA delta: 12 (A: 8x384, B: 384x8) pairs, a 6x384 head and its bias (76k)."""
    rng = np.random.default_rng(seed)
    state = {}
    for layer in range(12):
        state[f"l{layer}.A"] = (rng.standard_normal((8, 384)) * 1e-3).astype(np.float32)
        state[f"l{layer}.B"] = (rng.standard_normal((384, 8)) * 2e-4).astype(np.float32)
    state["head.w"] = (rng.standard_normal((6, 384)) * 5e-3).astype(np.float32)
    state["head.b"] = (rng.standard_normal(6) * 5e-3).astype(np.float32)
    return state


def nblocks(seg: np.ndarray, block: int | None) -> int:
    """Blocks over segments, none straddling two: sum of ceil(n / block) (one per non-empty
    segment when block is None)."""
    if block is None:
        return sum(1 for n in seg if n > 0)
    return sum(ceil(int(n) / block) for n in seg)


def quantizer_nbytes(node: dict | None, seg: np.ndarray) -> int:
    """Size of a quantizer's value section for segments `seg` (None: plain float32)."""
    n = int(np.sum(seg))
    name = None if node is None else node["name"]
    if name is None:
        return 4 * n
    if name in ("fp16", "bf16"):
        return 2 * n
    if name == "int8":
        return 2 * nblocks(seg, node.get("block", 256)) + n
    if name in ("int4", "nf4"):
        return 2 * nblocks(seg, node.get("block", 256)) + ceil(n / 2)
    if name == "qsgd":
        width = 1 + int(node.get("levels", 7)).bit_length()
        return 4 * nblocks(seg, node.get("block", 512)) + ceil(n * width / 8)
    if name == "sign":
        return 4 * nblocks(seg, node.get("block")) + ceil(n / 8)
    raise AssertionError(name)


def rice_nbytes(pos: np.ndarray, b: int) -> int:
    """Tag, b, uint32 length, k b-bit remainders, unary quotients (one stop bit each)."""
    gaps = np.diff(np.asarray(pos, np.int64), prepend=-1) - 1
    return 1 + 1 + 4 + ceil(len(pos) * b / 8) + ceil((int((gaps >> b).sum()) + len(pos)) / 8)


def index_nbytes(pos: np.ndarray, universe: int) -> int:
    """The smaller of the tagged bitmap and the best tagged Rice code."""
    return min(1 + ceil(universe / 8), *(rice_nbytes(pos, b) for b in range(40)))


def kept(fraction: float, n: int) -> int:
    """ceil(fraction n), at least 1 for n > 0, exact decimal arithmetic."""
    return min(n, max(ceil(Fraction(str(fraction)) * n), 1 if n else 0))


def top_positions(x: np.ndarray, offsets: np.ndarray, ks: list[int]) -> np.ndarray:
    """Sorted flat positions of the ks[t] largest |x| in each [offsets[t], offsets[t+1])."""
    out = []
    for (o, e), k in zip(pairwise(offsets), ks, strict=True):
        order = np.argsort(-np.abs(x[o:e]), kind="stable")[:k]
        out.append(o + np.sort(order))
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def roundtrip(nodes: list[dict], state: dict, seed: int = 0, **kw: object) -> tuple:
    """(payload, decoded flat, input flat, spec, chain) for one encode/decode."""
    chain = build_chain(nodes, **kw)  # type: ignore[arg-type]
    spec = StateSpec.of(state)
    payload, _ = chain.encode(state, spec=spec, seed=seed)
    return payload, chain.decode_flat(payload, spec), spec.flatten(state), spec, chain
