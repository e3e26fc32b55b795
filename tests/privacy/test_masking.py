"""Masking building blocks: X25519/HKDF seeds, ChaCha20 PRG, fixed point, weighted sums, packing."""

from __future__ import annotations

import math
import secrets
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedray.privacy.lib import masking as m
from fedray.privacy.lib.bitpack import pack_bits, packed_size, unpack_bits


def chi2_critical(df: int, z: float = 4.75) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at normal deviate z (4.75: p ~ 1e-6)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def byte_chi2(data: bytes) -> float:
    """Chi-square statistic of the byte histogram against uniform."""
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    expected = len(data) / 256
    return float(((counts - expected) ** 2 / expected).sum())


# --- keys and seeds ---------------------------------------------------------------------------


def test_key_agreement_is_symmetric_and_secret_is_hidden():
    a, b = m.KeyPair.generate(), m.KeyPair.generate()
    assert a.agree(b.public) == b.agree(a.public)
    assert a.secret.hex() not in repr(a) and "hidden" in repr(a)
    assert m.KeyPair.from_secret(a.secret).public == a.public


def test_low_order_and_malformed_peer_keys_are_rejected():
    a = m.KeyPair.generate()
    with pytest.raises(ValueError, match="low-order"):
        a.agree(bytes(32))  # the all-zero point gives an all-zero shared secret
    with pytest.raises(ValueError, match="32 raw bytes"):
        a.agree(b"short")
    with pytest.raises(ValueError, match="32 raw bytes"):
        m.KeyPair.from_secret(b"x" * 31)


def test_pairwise_seed_binds_round_pair_and_context():
    a, b, c = (m.KeyPair.generate() for _ in range(3))
    s_ab = m.pairwise_seed(a, b.public, round_id=5, pair=(1, 2), context=b"run")
    assert s_ab == m.pairwise_seed(b, a.public, round_id=5, pair=(2, 1), context=b"run")
    others = {
        m.pairwise_seed(a, b.public, round_id=6, pair=(1, 2), context=b"run"),
        m.pairwise_seed(a, b.public, round_id=5, pair=(1, 3), context=b"run"),
        m.pairwise_seed(a, b.public, round_id=5, pair=(1, 2), context=b"other"),
        m.pairwise_seed(a, c.public, round_id=5, pair=(1, 2), context=b"run"),
    }
    assert s_ab not in others and len(others) == 4
    assert len(s_ab) == 32


# --- PRG --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 22, 32, 33, 48, 62])
def test_prg_range_dtype_determinism(bits):
    seed = secrets.token_bytes(32)
    v = m.prg(seed, 5000, bits)
    assert v.dtype == (np.uint32 if bits <= 32 else np.uint64)
    assert int(v.max()) < 2**bits
    assert int(v.max()) >= 2 ** (bits - 1)  # uses the full range (fails with prob 2**-5000)
    np.testing.assert_array_equal(v, m.prg(seed, 5000, bits))
    np.testing.assert_array_equal(v[:10], m.prg(seed, 10, bits))  # prefix-consistent
    assert not np.array_equal(v, m.prg(secrets.token_bytes(32), 5000, bits))


def test_prg_is_chacha20_and_uniform():
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    seed = bytes(range(32))
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor().update(bytes(40))
    np.testing.assert_array_equal(m.prg(seed, 10, 32), np.frombuffer(stream, dtype="<u4"))
    v = m.prg(secrets.token_bytes(32), 200_000, 32)
    assert byte_chi2(v.tobytes()) < chi2_critical(255)
    assert abs(v.astype(np.float64).mean() / 2**32 - 0.5) < 0.005


def test_prg_speed_for_a_million_values():
    seed = secrets.token_bytes(32)
    m.prg(seed, 1000, 32)
    start = time.perf_counter()
    for bits in (24, 48):
        assert m.prg(seed, 1_000_000, bits).size == 1_000_000
    assert time.perf_counter() - start < 1.0  # measured ~5 ms for both


def test_prg_bad_input():
    with pytest.raises(ValueError, match="32 bytes"):
        m.prg(b"short", 4, 32)
    with pytest.raises(ValueError, match="bits=15"):
        m.prg(bytes(32), 4, 15)
    with pytest.raises(ValueError, match="bits=63"):
        m.prg(bytes(32), 4, 63)


# --- masks ------------------------------------------------------------------------------------


def _masks(ids: list[int], length: int, bits: int, round_id: int = 1):
    keys = {u: m.KeyPair.generate() for u in ids}
    selfs = {u: secrets.token_bytes(32) for u in ids}
    masks = {}
    for u in ids:
        seeds = {
            v: m.pairwise_seed(keys[u], keys[v].public, round_id=round_id, pair=(u, v))
            for v in ids
            if v != u
        }
        masks[u] = m.mask_vector(length, bits, self_id=u, self_seed=selfs[u], pairwise_seeds=seeds)
    return masks, selfs


@pytest.mark.parametrize("bits", [20, 40])
def test_pairwise_masks_cancel_in_the_sum(bits):
    ids = [3, 7, 11, 12]
    masks, selfs = _masks(ids, 1000, bits)
    total = sum(masks.values())
    self_total = sum(m.prg(selfs[u], 1000, bits) for u in ids)
    np.testing.assert_array_equal(m.reduce(total, bits), m.reduce(self_total, bits))
    assert int(m.reduce(masks[3] - m.prg(selfs[3], 1000, bits), bits).max()) > 0  # pairwise part


def test_mask_vector_refuses_self_pair():
    with pytest.raises(ValueError, match="itself"):
        m.mask_vector(4, 32, self_id=1, self_seed=bytes(32), pairwise_seeds={1: bytes(32)})


# --- fixed point ------------------------------------------------------------------------------


def test_required_bits_formula():
    # Q = ceil(R * scale); the signed sum in [-nQ, nQ] needs bit_length(nQ) + 1 bits.
    assert m.required_bits(1.0, 2**16, 1) == 18
    assert m.required_bits(1.0, 2**16, 2) == 19
    assert m.required_bits(1.0, 2**16, 3) == 19
    assert m.required_bits(1.0, 2**16, 10) == 21
    assert m.required_bits(0.5, 1000, 7) == (7 * 500).bit_length() + 1


def test_overflow_is_refused_at_construction():
    """fedbiomed #1210: a ring sized for few clients silently wrapped at 10+; here it is refused."""
    m.FixedPointCodec(1.0, 2**16, bits=20, max_summands=7)  # 7 * 65536 < 2**19
    with pytest.raises(ValueError, match=r"bits=20 overflows a sum of 10 .* need bits >= 21"):
        m.FixedPointCodec(1.0, 2**16, bits=20, max_summands=10)
    with pytest.raises(ValueError, match="lower scale or bound"):
        m.FixedPointCodec.tight(1.0, 2.0**60, 10)


@pytest.mark.parametrize("n", [1, 10, 11, 100, 1000])
def test_extreme_sums_decode_exactly_at_the_tight_size(n):
    codec = m.FixedPointCodec.tight(1.0, 2**12, n, stochastic=False)
    q = codec.max_level
    for sign in (1.0, -1.0):
        enc = codec.encode(np.full(5, 2.0 * sign))  # clipped to +-R
        total = m.reduce(enc.astype(np.uint64) * np.uint64(n), codec.bits)
        np.testing.assert_array_equal(codec.to_signed(total), np.full(5, sign * n * q))
        np.testing.assert_allclose(codec.decode_sum(total), sign * n * q / codec.scale)
    if codec.bits > m.MIN_BITS:  # tight: n * Q exceeds the largest positive of a bit less
        assert n * q > 2 ** (codec.bits - 2) - 1
        with pytest.raises(ValueError, match="overflows"):
            m.FixedPointCodec(1.0, 2**12, codec.bits - 1, n)


def test_deterministic_rounding_is_nearest_and_clips():
    codec = m.FixedPointCodec.tight(1.0, 4, 3, stochastic=False)
    levels = codec.quantize(np.array([0.1, 0.126, -0.374, 0.875, 5.0, -5.0]))
    np.testing.assert_array_equal(levels, [0, 1, -1, 4, 4, -4])  # 0.875 * 4 = 3.5 -> 4 (even)


def test_stochastic_rounding_is_unbiased():
    codec = m.FixedPointCodec.tight(1.0, 4, 1)
    x = np.full(200_000, 0.3)  # 1.2 levels: 1 with prob 0.8, 2 with prob 0.2
    levels = codec.quantize(x, np.random.default_rng(0))
    assert set(np.unique(levels)) == {1, 2}
    assert abs(levels.mean() / 4 - 0.3) < 0.002
    det = m.FixedPointCodec.tight(1.0, 4, 1, stochastic=False).quantize(x)
    assert abs(det.mean() / 4 - 0.3) > 0.04  # deterministic rounding is biased here


def test_encode_decode_roundtrip_and_bad_input():
    codec = m.FixedPointCodec.tight(2.0, 2**20, 5)
    x = np.random.default_rng(1).uniform(-2, 2, 1000).astype(np.float32)
    enc = codec.encode(x)
    assert enc.dtype == codec.dtype and int(enc.max()) < 2**codec.bits
    assert np.abs(codec.decode_sum(enc) - x).max() <= 1 / codec.scale
    with pytest.raises(ValueError, match="NaN or infinite"):
        codec.encode(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="bits=70"):
        m.FixedPointCodec(1.0, 2.0, bits=70, max_summands=2)


def test_masked_weighted_average_is_the_weighted_mean():
    """OpenFL #1407: the masked weighted average must be sum(w x) / sum(w), computed securely."""
    rng = np.random.default_rng(7)
    n, length, max_weight = 6, 300, 5000.0
    xs = [rng.uniform(-0.5, 0.5, length) for _ in range(n)]
    weights = [120.0, 3000.0, 5.0, 800.0, 5000.0, 0.0]
    codec = m.FixedPointCodec.tight(0.5, 2**24, n)
    masks, _ = _masks(list(range(n)), length + 1, codec.bits)
    masked = [
        m.reduce(m.encode_weighted(codec, xs[i], weights[i], max_weight) + masks[i], codec.bits)
        for i in range(n)
    ]
    # The server only sums masked vectors; removing the (summed) self-masks is done by SecAgg.
    total = m.reduce(sum(masked) - sum(masks.values()), codec.bits)
    out = m.decode_weighted(codec, total, max_weight)
    expected = np.average(np.stack(xs), axis=0, weights=weights)
    tolerance = 1 / codec.scale * max_weight * n / sum(weights) * 2  # rounding of each w x
    assert abs(out.total_weight - sum(weights)) < max_weight * n / (codec.bound * codec.scale)
    np.testing.assert_allclose(out.mean, expected, atol=tolerance, rtol=0)
    assert np.abs(out.mean - np.mean(np.stack(xs), axis=0)).max() > 100 * tolerance
    with pytest.raises(ValueError, match="weight=-1"):
        m.encode_weighted(codec, xs[0], -1.0, max_weight)
    with pytest.raises(ValueError, match="total weight is 0"):
        _ = m.WeightedSum(np.zeros(2), 0.0).mean


# --- bit-packing ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 64), length=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_bitpack_roundtrip(bits, length, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**63, length, dtype=np.uint64, endpoint=True)
    if bits < 64:
        values &= np.uint64((1 << bits) - 1)
    data = pack_bits(values, bits)
    assert len(data) == packed_size(length, bits) == math.ceil(length * bits / 8)
    np.testing.assert_array_equal(unpack_bits(data, bits, length), values)


def test_bitpack_bad_input():
    with pytest.raises(ValueError, match="does not fit in 4 bits"):
        pack_bits(np.array([16], dtype=np.uint64), 4)
    with pytest.raises(ValueError, match="unsigned"):
        pack_bits(np.array([1], dtype=np.int64), 4)
    with pytest.raises(ValueError, match="truncated"):
        unpack_bits(b"\x00", 4, 3)
    with pytest.raises(ValueError, match="bits=0"):
        pack_bits(np.array([0], dtype=np.uint64), 0)
