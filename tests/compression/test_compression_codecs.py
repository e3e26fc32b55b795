"""Each codec alone: its documented round-trip bound, its exact payload size, determinism."""

from __future__ import annotations

import warnings
from itertools import pairwise
from math import ceil

import numpy as np
import pytest
from codec_helpers import (
    SHAPES,
    index_nbytes,
    kept,
    make_state,
    nblocks,
    no_zeros,
    quantizer_nbytes,
    roundtrip,
    top_positions,
)

from fedray.compression import StateSpec, build_chain
from fedray.compression.lib.bits import Reader, bf16_to_f32
from fedray.compression.nf4 import NF4

QUANTIZERS = [
    {"name": "fp16"},
    {"name": "bf16"},
    {"name": "int8"},
    {"name": "int8", "block": 64, "rounding": "stochastic"},
    {"name": "int4"},
    {"name": "int4", "block": 32},
    {"name": "nf4"},
    {"name": "nf4", "block": 100},
    {"name": "qsgd"},
    {"name": "qsgd", "levels": 100, "block": 64, "norm": "max"},
    {"name": "qsgd", "levels": 1, "block": 7},
    {"name": "sign"},
    {"name": "sign", "block": 128},
]
SPARSIFIERS = [
    {"name": "topk", "fraction": 0.1},
    {"name": "topk", "k": 5, "scope": "tensor"},
    {"name": "topk", "fraction": 0.5},
    {"name": "randk", "fraction": 0.3},
    {"name": "randk", "k": 3, "scope": "tensor", "unbiased": False},
    {"name": "prune", "density": 0.2},
    {"name": "prune", "density": 0.3, "structured": True},
]


def blocks(spec: StateSpec, block: int | None):
    """(start, end) of every block of the dense layout (never straddling tensors)."""
    for o, e in zip(spec.offsets[:-1], spec.offsets[1:], strict=True):
        step = (e - o) if block is None else block
        for s in range(o, e, max(step, 1)):
            yield s, min(s + step, e)


def scales(payload: bytes, count: int) -> np.ndarray:
    """The bf16 scales at the front of an int/nf4 value section."""
    return bf16_to_f32(np.frombuffer(payload, "<u2", count))


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("node", [None, *QUANTIZERS], ids=str)
def test_dense_payload_size_matches_formula(shapes: list, node: dict | None) -> None:
    state = make_state(shapes)
    payload, *_, spec, _ = roundtrip([node] if node else [], state)
    assert len(payload) == quantizer_nbytes(node, spec.sizes)


@pytest.mark.parametrize("shapes", SHAPES[1:], ids=str)
@pytest.mark.parametrize("sparse", SPARSIFIERS, ids=str)
@pytest.mark.parametrize("quant", [None, {"name": "int4"}, {"name": "qsgd"}, {"name": "sign"}])
def test_sparse_payload_size_matches_formula(shapes: list, sparse: dict, quant: dict | None):
    state = make_state(shapes)
    payload, xhat, x, spec, _ = roundtrip([sparse, *([quant] if quant else [])], state, seed=4)
    if sparse["name"] == "randk":
        n = spec.sizes if sparse.get("scope") == "tensor" else [spec.size]
        ks = [min(sparse["k"], m) if "k" in sparse else kept(sparse["fraction"], m) for m in n]
        head = 8
    elif sparse["name"] == "prune" and sparse.get("structured"):
        ks = [kept(sparse["density"], int(r)) for r in spec.rows]
        row_off = np.concatenate([[0], np.cumsum(spec.rows)])
        lengths = [int(n // r) if r else 0 for n, r in zip(spec.sizes, spec.rows, strict=True)]
        norms = np.concatenate(
            [
                (x[o:e].reshape(-1, L) ** 2).sum(1) if L else np.zeros(r)
                for (o, e), L, r in zip(pairwise(spec.offsets), lengths, spec.rows, strict=True)
            ]
        )
        rows = top_positions(norms, row_off, ks)
        head = index_nbytes(rows, int(row_off[-1]))
        ks = [k * L for k, L in zip(ks, lengths, strict=True)]
    else:
        scope_tensor = sparse["name"] == "prune" or sparse.get("scope") == "tensor"
        n = spec.sizes if scope_tensor else [spec.size]
        frac = sparse.get("fraction", sparse.get("density"))
        ks = [min(sparse["k"], m) if "k" in sparse else kept(frac, int(m)) for m in n]
        offsets = spec.offsets if scope_tensor else np.array([0, spec.size])
        pos = top_positions(x, offsets, ks)
        head = index_nbytes(pos, spec.size)
    seg = np.diff(np.searchsorted(np.flatnonzero(xhat), spec.offsets)) if quant is None else None
    total = int(np.sum(ks))
    if quant is None:
        assert len(payload) == head + 4 * total
        assert seg.sum() <= total  # kept values may decode to zero, never more than k
    else:
        # the quantizer's segments are the per-tensor kept counts, recovered from the index
        sel = build_chain([sparse]).sparsifier.parse(Reader(payload), spec)
        assert int(sel.seg.sum()) == total
        assert len(payload) == head + quantizer_nbytes(quant, sel.seg)


# --- bounds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_none_is_exact_float32(shapes: list) -> None:
    state = make_state(shapes)
    payload, xhat, x, *_ = roundtrip([], state)
    assert payload == x.astype("<f4").tobytes()
    np.testing.assert_array_equal(xhat, x)


def test_fp16_relative_error_and_saturation() -> None:
    """|x - x_hat| <= max(2^-11 |x|, 2^-25) for |x| <= 65504; larger values clip to 65504."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(5000) * 10.0 ** rng.uniform(-9, 4, 5000)).astype(np.float32)
    x[:3] = [1e5, -7e4, 65504.0]
    _, xhat, *_ = roundtrip([{"name": "fp16"}], {"x": x})
    ok = np.abs(x) <= 65504
    err = np.abs(xhat - x)[ok].astype(np.float64)
    assert np.all(err <= np.maximum(2.0**-11 * np.abs(x[ok]), 2.0**-25))
    np.testing.assert_array_equal(xhat[:3], [65504.0, -65504.0, 65504.0])


def test_bf16_is_round_to_nearest_even_like_torch() -> None:
    """|x - x_hat| <= 2^-8 |x| (normal range); bit-identical to torch's float32 -> bfloat16."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(20000) * 10.0 ** rng.uniform(-30, 30, 20000)).astype(np.float32)
    x[:4] = [0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8]  # exact ties: to even
    _, xhat, *_ = roundtrip([{"name": "bf16"}], {"x": x})
    ref = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(xhat, ref)
    assert np.all(np.abs(xhat - x) <= 2.0**-8 * np.abs(x))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("block", [256, 64, 30])
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_int_nearest_error_at_most_half_a_step(bits: int, block: int, shapes: list) -> None:
    """|x - x_hat| <= s_B / 2 with s_B the stored scale, s_B in [amax/Q, amax/Q (1 + 2^-7)]."""
    state = make_state(shapes, seed=bits + block)
    node = {"name": f"int{bits}", "block": block}
    payload, xhat, x, spec, _ = roundtrip([node], state)
    top = 2 ** (bits - 1) - 1
    s = scales(payload, nblocks(spec.sizes, block))
    for j, (a, b) in enumerate(blocks(spec, block)):
        amax = float(np.abs(x[a:b]).max())
        assert amax / top <= s[j] <= amax / top * (1 + 2**-7)
        assert np.all(np.abs(xhat[a:b] - x[a:b]) <= s[j] / 2 * (1 + 1e-5))
        assert np.all(np.abs(np.round(xhat[a:b] / s[j]) if s[j] else 0) <= top)


@pytest.mark.parametrize("bits", [8, 4])
def test_int_stochastic_rounding_is_unbiased_and_within_a_step(bits: int) -> None:
    """|x - x_hat| < s_B; the mean over seeds converges (variance <= s_B^2 / 4 per value)."""
    x = make_state([(300,)], seed=5, scale=1.0)["t0"]
    node = {"name": f"int{bits}", "block": 100, "rounding": "stochastic"}
    chain, spec = build_chain([node]), StateSpec.of({"x": x})
    n_seeds, total = 400, np.zeros_like(x, dtype=np.float64)
    for seed in range(n_seeds):
        payload, _ = chain.encode({"x": x}, spec=spec, seed=seed)
        xhat = chain.decode_flat(payload, spec)
        s = np.repeat(scales(payload, 3), 100)
        assert np.all(np.abs(xhat - x) < s * (1 + 1e-5))
        total += xhat
    sd = s / 2 / np.sqrt(n_seeds)
    assert np.all(np.abs(total / n_seeds - x) <= 6 * sd + 1e-7)


@pytest.mark.parametrize("block", [256, 100])
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_nf4_is_the_nearest_code_of_the_block_scale(block: int, shapes: list) -> None:
    """x_hat = NF4[c] s_B with NF4[c] nearest to x / s_B; |x - x_hat| <= 0.1519 s_B."""
    state = make_state(shapes, seed=block)
    payload, xhat, x, spec, _ = roundtrip([{"name": "nf4", "block": block}], state)
    s = scales(payload, nblocks(spec.sizes, block))
    for j, (a, b) in enumerate(blocks(spec, block)):
        amax = float(np.abs(x[a:b]).max())
        assert amax <= s[j] <= amax * (1 + 2**-7)
        if s[j] == 0:
            assert not xhat[a:b].any()
            continue
        y = x[a:b].astype(np.float64) / s[j]
        dist = np.abs(y[:, None] - NF4[None, :].astype(np.float64))
        got = np.abs(y - xhat[a:b] / s[j])
        assert np.all(got <= dist.min(axis=1) + 1e-6)
        assert np.all(np.abs(x[a:b] - xhat[a:b]) <= (1 - 0.6961928009986877) / 2 * s[j] + 1e-12)


def test_nf4_codebook_is_qlora_s() -> None:
    assert NF4.size == 16 and NF4[0] == -1 and NF4[7] == 0 and NF4[15] == 1
    assert np.all(np.diff(NF4) > 0)
    np.testing.assert_allclose(NF4[8], 0.07958029955625534)
    np.testing.assert_allclose(NF4[1], -0.6961928009986877)


@pytest.mark.parametrize("norm", ["l2", "max"])
@pytest.mark.parametrize("levels", [1, 7, 15])
def test_qsgd_is_unbiased(norm: str, levels: int) -> None:
    """E[x_hat] = x: the mean of N decodes is within 6 sd (sd = step / (2 sqrt N)) of x, and each
    decode is within one step; the mean squared error respects Alistarh et al.'s Lemma 3.1."""
    x = make_state([(500,)], seed=levels, scale=1.0)["t0"]
    node = {"name": "qsgd", "levels": levels, "block": 128, "norm": norm}
    chain, spec = build_chain([node]), StateSpec.of({"x": x})
    n_seeds, total, sq = 500, np.zeros(500), 0.0
    step = np.zeros(500)
    for a, b in blocks(spec, 128):
        nrm = np.linalg.norm(x[a:b]) if norm == "l2" else np.abs(x[a:b]).max()
        step[a:b] = nrm / levels
    for seed in range(n_seeds):
        xhat = chain.decode_flat(chain.encode({"x": x}, spec=spec, seed=seed)[0], spec)
        assert np.all(np.abs(xhat - x) <= step * (1 + 1e-5))
        total += xhat
        sq += float(((xhat - x) ** 2).sum())
    assert np.all(np.abs(total / n_seeds - x) <= 6 * step / (2 * np.sqrt(n_seeds)) + 1e-6)
    if norm == "l2":
        bound = sum(
            min((b - a) / levels**2, np.sqrt(b - a) / levels) * float((x[a:b] ** 2).sum())
            for a, b in blocks(spec, 128)
        )
        assert sq / n_seeds <= bound * 1.1


@pytest.mark.parametrize("block", [None, 128, 7])
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_sign_error_identity(block: int | None, shapes: list) -> None:
    """||x_B - x_hat_B||^2 = ||x_B||^2 - ||x_B||_1^2 / n_B <= (1 - 1/n_B) ||x_B||^2."""
    state = make_state(shapes, seed=3)
    _, xhat, x, spec, _ = roundtrip([{"name": "sign", "block": block}], state)
    for a, b in blocks(spec, block):
        xb, hb = x[a:b].astype(np.float64), xhat[a:b].astype(np.float64)
        n, l2, l1 = b - a, float((xb**2).sum()), float(np.abs(xb).sum())
        err = float(((xb - hb) ** 2).sum())
        assert err == pytest.approx(l2 - l1**2 / n, rel=1e-5, abs=1e-30)
        assert err <= (1 - 1 / n) * l2 * (1 + 1e-6) + 1e-30
        assert np.all(np.sign(hb[xb != 0]) == np.sign(xb[xb != 0]))
        assert float((hb**2).sum()) <= l2


@pytest.mark.parametrize("scope", ["global", "tensor"])
@pytest.mark.parametrize("shapes", SHAPES[1:], ids=str)
def test_topk_keeps_exactly_k_largest(scope: str, shapes: list) -> None:
    """Exactly k values survive, bit-exact; every dropped |x| <= every kept |x| (per scope)."""
    state = no_zeros(make_state(shapes, seed=11))  # kept values = the nonzeros
    node = {"name": "topk", "fraction": 0.05, "scope": scope}
    _, xhat, x, spec, _ = roundtrip([node], state)
    units = list(zip(spec.offsets[:-1], spec.offsets[1:], strict=True))
    units = units if scope == "tensor" else [(0, spec.size)]
    for a, b in units:
        k = kept(0.05, b - a)
        keep = xhat[a:b] != 0
        assert keep.sum() == k
        np.testing.assert_array_equal(xhat[a:b][keep], x[a:b][keep])
        if k < b - a:
            assert np.abs(x[a:b][~keep]).max() <= np.abs(x[a:b][keep]).min()


def test_topk_k_option_is_exact_count() -> None:
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32) + 5
    _, xhat, *_ = roundtrip([{"name": "topk", "k": 37}], {"x": x})
    assert np.count_nonzero(xhat) == 37


@pytest.mark.parametrize("unbiased", [True, False])
def test_randk_positions_come_from_the_seed(unbiased: bool) -> None:
    """k positions, the same for the same seed whatever the data; values scaled by d/k when
    unbiased (so the mean over seeds converges to x), exact otherwise."""
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal(400).astype(np.float32) + 3 for _ in range(2))
    node = {"name": "randk", "k": 40, "unbiased": unbiased}
    chain, spec = build_chain([node]), StateSpec.of({"x": x})
    px, _ = chain.encode({"x": x}, spec=spec, seed=9)
    py, _ = chain.encode({"x": y}, spec=spec, seed=9)
    assert px[:8] == py[:8] and len(px) == 8 + 4 * 40
    hx = chain.decode_flat(px, spec)
    keep = hx != 0
    assert keep.sum() == 40
    np.testing.assert_allclose(hx[keep], x[keep] * (10 if unbiased else 1), rtol=1e-6)
    np.testing.assert_array_equal(chain.decode_flat(py, spec) != 0, keep)
    if unbiased:
        n = 2000
        mean = (
            sum(
                chain.decode_flat(chain.encode({"x": x}, spec=spec, seed=s)[0], spec)
                for s in range(n)
            )
            / n
        )
        sd = np.abs(x) * np.sqrt(10 - 1) / np.sqrt(n)  # Var = x^2 (d/k - 1) per draw
        assert np.all(np.abs(mean - x) <= 6 * sd)


@pytest.mark.parametrize("structured", [False, True])
def test_prune_keeps_density_per_tensor(structured: bool) -> None:
    """Exact on kept entries (whole rows when structured), largest magnitudes (row norms)."""
    state = no_zeros(make_state([(40, 12), (12, 40), (30,)], seed=7))
    node = {"name": "prune", "density": 0.25, "structured": structured}
    _, xhat, x, spec, _ = roundtrip([node], state)
    for (a, b), shape in zip(pairwise(spec.offsets), spec.shapes, strict=True):
        xt, ht = x[a:b].reshape(shape[0], -1), xhat[a:b].reshape(shape[0], -1)
        keep = ht != 0
        np.testing.assert_array_equal(ht[keep], xt[keep])
        if structured:
            rows = keep.all(axis=1)
            assert np.array_equal(rows, keep.any(axis=1))  # whole rows
            assert rows.sum() == kept(0.25, shape[0])
            norms = (xt.astype(np.float64) ** 2).sum(1)
            assert norms[~rows].max() <= norms[rows].min()
        else:
            assert keep.sum() == kept(0.25, xt.size)
            assert np.abs(xt[~keep]).max() <= np.abs(xt[keep]).min()


# --- determinism and robustness ------------------------------------------------------------


@pytest.mark.parametrize("node", QUANTIZERS + SPARSIFIERS, ids=str)
def test_same_seed_same_bytes(node: dict) -> None:
    state = make_state(SHAPES[1], seed=1)
    a, *_ = roundtrip([node], state, seed=123)
    b, *_ = roundtrip([node], state, seed=123)
    assert a == b
    stochastic = node["name"] in ("qsgd", "randk") or node.get("rounding") == "stochastic"
    c, *_ = roundtrip([node], state, seed=124)
    assert (a != c) == stochastic


@pytest.mark.parametrize("node", QUANTIZERS, ids=str)
def test_non_finite_input_does_not_crash_and_stays_visible(node: dict) -> None:
    """A NaN/inf update (e.g. the `nans` attack) decodes non-finite, never silently finite."""
    x = np.linspace(-1, 1, 600).astype(np.float32)
    x[10], x[400] = np.nan, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning leaks either
        _, xhat, *_ = roundtrip([node], {"x": x})
    assert not np.isfinite(xhat[10])


def test_topk_bitmap_and_rice_both_decode() -> None:
    """Dense selections use the bitmap (tag 0), sparse ones Rice gaps (tag 1)."""
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    for fraction, tag in [(0.5, 0), (0.01, 1)]:
        payload, xhat, *_ = roundtrip([{"name": "topk", "fraction": fraction}], {"x": x})
        assert payload[0] == tag
        assert np.count_nonzero(xhat) == ceil(fraction * 5000)
