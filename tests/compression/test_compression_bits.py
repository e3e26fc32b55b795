"""Wire-level helpers: bit packing, bfloat16 rounding, index coding, block layout, the spec."""

from __future__ import annotations

import numpy as np
import pytest
from codec_helpers import index_nbytes
from hypothesis import given, settings
from hypothesis import strategies as st

from fedray.compression import StateSpec
from fedray.compression.lib.bits import (
    Reader,
    bf16_ceil,
    bf16_round,
    bf16_to_f32,
    pack_nibbles,
    pack_uint,
    packed_nbytes,
    unpack_nibbles,
    unpack_uint,
)
from fedray.compression.lib.blocks import block_layout, num_blocks
from fedray.compression.lib.index import BITMAP, RICE, decode_positions, encode_positions


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 40), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_pack_uint_round_trips_in_exactly_ceil_n_width_over_8_bytes(width, n, seed) -> None:
    v = np.random.default_rng(seed).integers(0, 2**width, n, dtype=np.uint64)
    raw = pack_uint(v, width)
    assert len(raw) == packed_nbytes(n, width) == -(-n * width // 8)
    np.testing.assert_array_equal(unpack_uint(raw, n, width).astype(np.uint64), v)


def test_bit_order_is_lsb_first_little_endian() -> None:
    assert pack_uint(np.array([1, 0, 0, 1, 1]), 1) == bytes([0b11001])
    assert pack_nibbles(np.array([3, 12, 5])) == bytes([0xC3, 0x05])
    np.testing.assert_array_equal(unpack_nibbles(bytes([0xC3, 0x05]), 3), [3, 12, 5])
    assert pack_uint(np.array([5, 2]), 3) == bytes([0b010101])
    assert pack_uint(np.array([0x1FF]), 9) == bytes([0xFF, 0x01])


def test_bf16_round_handles_ties_nan_inf_and_saturation() -> None:
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, np.nan, -np.inf, 3.4e38, -3.4e38, 0.0], np.float32)
    h = bf16_round(x)
    back = bf16_to_f32(h)
    assert back[0] == 1.0 and back[1] == 1 + 2**-6  # ties to even
    assert np.isnan(back[2]) and back[3] == -np.inf
    assert np.isfinite(back[4:6]).all() and abs(back[4]) == abs(back[5]) > 3.3e38
    assert back[6] == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, float(np.float32(3e38)), width=32), min_size=1, max_size=50))
def test_bf16_ceil_is_the_smallest_bfloat16_not_below(values) -> None:
    x = np.array(values, np.float32)
    up = bf16_to_f32(bf16_ceil(x))
    assert np.all(up >= x)
    below = bf16_to_f32(np.maximum(bf16_ceil(x).astype(np.int32) - 1, 0).astype(np.uint16))
    assert np.all((below < x) | (x == 0))


def test_bf16_ceil_keeps_non_finite_visible() -> None:
    up = bf16_to_f32(bf16_ceil(np.array([np.nan, np.inf], np.float32)))
    assert np.isnan(up[0]) and up[1] == np.inf


@settings(max_examples=80, deadline=None)
@given(
    universe=st.integers(1, 5000),
    density=st.floats(0, 1),
    clustered=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_index_coding_round_trips_and_picks_the_smaller_format(
    universe, density, clustered, seed
) -> None:
    rng = np.random.default_rng(seed)
    k = int(density * universe)
    if clustered:
        start = rng.integers(0, universe - k + 1)
        pos = np.arange(start, start + k, dtype=np.int64)
    else:
        pos = np.sort(rng.choice(universe, k, replace=False)).astype(np.int64)
    raw = encode_positions(pos, universe)
    assert len(raw) == index_nbytes(pos, universe)
    reader = Reader(raw + b"tail")
    np.testing.assert_array_equal(decode_positions(reader, k, universe), pos)
    assert reader.rest() == 4
    assert raw[0] in (BITMAP, RICE)


def test_index_coding_rejects_a_wrong_count() -> None:
    pos = np.array([3, 70, 900], np.int64)
    raw = encode_positions(pos, 100_000)
    assert raw[0] == RICE
    with pytest.raises(ValueError, match=r"expects 4|truncated"):
        decode_positions(Reader(raw), 4, 100_000)


def test_rice_is_near_the_entropy_of_random_positions() -> None:
    """~log2(U/k) + 1.5 bits per position for a uniform k-subset."""
    rng = np.random.default_rng(0)
    for universe, k in [(10**6, 10**4), (10**5, 10**4), (76038, 760)]:
        pos = np.sort(rng.choice(universe, k, replace=False))
        bits = 8 * len(encode_positions(pos, universe)) / k
        assert bits <= np.log2(universe / k) + 1.6, (universe, k, bits)


def test_block_layout_never_straddles_segments() -> None:
    starts, lengths = block_layout(np.array([5, 0, 8, 3]), 4)
    np.testing.assert_array_equal(starts, [0, 4, 5, 9, 13])
    np.testing.assert_array_equal(lengths, [4, 1, 4, 4, 3])
    assert num_blocks(np.array([5, 0, 8, 3]), 4) == 5
    starts, lengths = block_layout(np.array([5, 0, 8]), None)
    np.testing.assert_array_equal(starts, [0, 5])
    np.testing.assert_array_equal(lengths, [5, 8])
    assert block_layout(np.zeros(0, np.int64), 4)[0].size == 0


def test_reader_rejects_truncation_and_trailing_bytes() -> None:
    reader = Reader(b"abc")
    with pytest.raises(ValueError, match="truncated"):
        reader.take(4)
    reader.take(2)
    with pytest.raises(ValueError, match="1 trailing bytes"):
        reader.done()


def test_spec_flattens_in_its_own_order() -> None:
    state = {"b": np.ones((2, 3), np.float32), "a": np.arange(4, dtype=np.float64)}
    spec = StateSpec.of(state)
    assert spec.keys == ("b", "a") and spec.size == 10 and list(spec.rows) == [2, 4]
    flat = spec.flatten({"a": state["a"], "b": state["b"]})
    assert flat.dtype == np.float32 and list(flat[6:]) == [0, 1, 2, 3]
    back = spec.unflatten(flat)
    assert list(back) == ["b", "a"] and back["b"].shape == (2, 3)
    assert spec == StateSpec(("b", "a"), ((2, 3), (4,))) and hash(spec)
    with pytest.raises(ValueError, match="duplicate"):
        StateSpec(("a", "a"), ((1,), (1,)))
