"""`trim`: lossless leading-block trimming; the bytes are the header plus the blocks."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.compression.trim import block_positions, extents
from fedray.core import registry
from fedray.core.types import StateSpec


def _state(rng: np.random.Generator) -> dict[str, np.ndarray]:
    a = rng.normal(size=(8, 5)).astype(np.float32)
    a[3:] = 0  # a rank-3 client of a rank-8 adapter: rows 3.. of A are zero
    b = rng.normal(size=(6, 8)).astype(np.float32)
    b[:, 3:] = 0  # ... and columns 3.. of B
    return {
        "a": a,
        "b": b,
        "frozen": np.zeros((4, 4), np.float32),  # an adapter the client did not tune
        "head": rng.normal(size=(7,)).astype(np.float32),
        "scalar": np.array(1.5, np.float32),
    }


def test_round_trip_is_exact_and_sends_only_the_blocks() -> None:
    codec = registry.build("compression", {"name": "trim"})
    state = _state(np.random.default_rng(0))
    spec = StateSpec.of(state)
    payload, residual = codec.encode(state, spec=spec, seed=0)
    decoded = codec.decode(payload, spec)
    assert residual is None
    assert all(np.array_equal(decoded[k], np.asarray(state[k])) for k in state)
    values = 3 * 5 + 6 * 3 + 0 + 7 + 1  # the blocks
    header = 4 * (2 + 2 + 2 + 1 + 1)  # one uint32 extent per axis (a scalar is shape (1,))
    assert len(payload) == 4 * values + header


def test_a_dense_update_costs_its_header_only() -> None:
    codec = registry.build("compression", {"name": "trim"})
    dense = {"w": np.ones((3, 4), np.float32), "v": np.ones(5, np.float32)}
    spec = StateSpec.of(dense)
    payload, _ = codec.encode(dense, spec=spec, seed=0)
    assert len(payload) == 4 * spec.size + 4 * 3


def test_chain_trim_then_fp16_quantizes_only_the_block() -> None:
    node = {"name": "chain", "codecs": [{"name": "trim"}, {"name": "fp16"}]}
    codec = registry.build("compression", node)
    state = _state(np.random.default_rng(1))
    spec = StateSpec.of(state)
    payload, _ = codec.encode(state, spec=spec, seed=0)
    decoded = codec.decode(payload, spec)
    assert len(payload) == 2 * (15 + 18 + 7 + 1) + 4 * 8
    assert np.array_equal(decoded["frozen"], state["frozen"])
    assert np.allclose(decoded["a"], state["a"], atol=2e-3) and not decoded["a"][3:].any()


def test_interior_zeros_stay_inside_the_block() -> None:
    t = np.zeros((4, 4), np.float32)
    t[0, 0] = t[2, 1] = 1.0  # the block is t[:3, :2]; t[1, :] zero inside it
    assert extents(t) == (3, 2)
    assert block_positions((4, 4), (3, 2)).tolist() == [0, 1, 4, 5, 8, 9]


def test_bad_header_is_rejected() -> None:
    codec = registry.build("compression", {"name": "trim"})
    state = {"w": np.ones((2, 2), np.float32)}
    spec = StateSpec.of(state)
    payload, _ = codec.encode(state, spec=spec, seed=0)
    forged = np.frombuffer(bytes(payload), np.uint8).copy()
    forged[:4] = np.frombuffer(np.uint32(3).tobytes(), np.uint8)  # extent 3 > shape 2
    with pytest.raises(ValueError, match="exceed the shape"):
        codec.decode(forged.tobytes(), spec)
