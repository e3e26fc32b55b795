"""Secure aggregation state machines: exact sums under dropouts, aborts, what the server sees."""

from __future__ import annotations

import dataclasses
import math
import pickle
import time

import numpy as np
import pytest

from fedray.privacy.lib.bitpack import pack_bits, packed_size, unpack_bits
from fedray.privacy.lib.masking import (
    FixedPointCodec,
    decode_weighted,
    encode_weighted,
    required_bits,
)
from fedray.privacy.lib.secagg_core import (
    AdvertiseKeys,
    ClientSession,
    MaskedInput,
    SecAggAbort,
    SecAggConfig,
    ServerSession,
    UnmaskRequest,
    UnmaskResponse,
    sparse_degree,
)
from fedray.privacy.lib.secagg_sim import simulate_round


def chi2_critical(df: int, z: float = 4.75) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at normal deviate z (p ~ 1e-6)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def _inputs(codec: FixedPointCodec, ids, length: int, seed: int = 0):
    """Per client: the signed fixed-point levels and their ring encoding."""
    rng = np.random.default_rng(seed)
    levels = {u: codec.quantize(rng.uniform(-1.2, 1.2, length), rng) for u in ids}
    return levels, {u: codec.to_ring(q) for u, q in levels.items()}


def _split_drops(ids, fraction: float, rng: np.random.Generator) -> dict[int, set[int]]:
    """Drop `fraction` of the clients: half before the masked input, half after it."""
    k = round(fraction * len(ids))
    out = [int(u) for u in rng.choice(list(ids), size=k, replace=False)]
    return {2: set(out[: (k + 1) // 2]), 3: set(out[(k + 1) // 2 :])}


def _check_exact(codec, result, levels) -> None:
    plain = sum(levels[u] for u in result.survivors)  # the plain fixed-point sum (int64)
    np.testing.assert_array_equal(codec.to_signed(result.total), plain)


# --- correctness ------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("degree", [None, "sparse"])
def test_sum_is_exact_under_dropouts(fraction, degree):
    n, length = 20, 64
    ids = tuple(range(100, 100 + n))
    codec = FixedPointCodec.tight(1.0, 2**16, n)
    k = sparse_degree(n) if degree == "sparse" else None
    assert degree is None or k == 14  # 2 * ceil(3 * log2(20) / 2) < 19: really sparse
    cfg = SecAggConfig(1, ids, length, codec.bits, degree=k, graph_seed=b"beacon", context=b"run")
    levels, encoded = _inputs(codec, ids, length)
    drop = _split_drops(ids, fraction, np.random.default_rng(3))
    result = simulate_round(cfg, encoded, drop=drop)
    assert result.survivors == frozenset(ids) - drop[2]  # dropped after input: still summed
    assert result.dropped == drop[2]
    assert len(result.survivors) == n - len(drop[2])
    _check_exact(codec, result, levels)


def test_sparse_graph_at_larger_n_with_explicit_threshold():
    n, length = 40, 32
    ids = tuple(range(n))
    codec = FixedPointCodec.tight(1.0, 2**10, n)
    cfg = SecAggConfig(9, ids, length, codec.bits, degree=10, threshold=6, graph_seed=b"s")
    levels, encoded = _inputs(codec, ids, length, seed=4)
    drop = {1: {5}, 2: {0, 17}, 3: {33}}  # at most 4 of any 10 neighbours: always recoverable
    result = simulate_round(cfg, encoded, drop=drop)
    assert result.survivors == frozenset(ids) - {5, 0, 17}
    _check_exact(codec, result, levels)


def test_weighted_mean_through_secure_aggregation():
    """OpenFL #1407: sum(w x) and sum(w) both come out of the one secure sum, survivors only."""
    n, length, max_weight = 10, 50, 1000.0
    ids = tuple(range(n))
    rng = np.random.default_rng(8)
    xs = {u: rng.uniform(-1, 1, length) for u in ids}
    weights = {u: float(rng.integers(1, 1001)) for u in ids}
    codec = FixedPointCodec.tight(1.0, 2**20, n)
    encoded = {u: encode_weighted(codec, xs[u], weights[u], max_weight) for u in ids}
    cfg = SecAggConfig(10, ids, length + 1, codec.bits)
    result = simulate_round(cfg, encoded, drop={2: {4}})
    out = decode_weighted(codec, result.total, max_weight)
    alive = sorted(result.survivors)
    expected = np.average([xs[u] for u in alive], axis=0, weights=[weights[u] for u in alive])
    assert out.total_weight == pytest.approx(sum(weights[u] for u in alive), abs=0.01)
    np.testing.assert_allclose(out.mean, expected, atol=1e-5)


def test_dropouts_before_keys_and_shares_are_simply_absent():
    n, length = 12, 16
    ids = tuple(range(n))
    codec = FixedPointCodec.tight(1.0, 2**8, n)
    cfg = SecAggConfig(2, ids, length, codec.bits)
    levels, encoded = _inputs(codec, ids, length, seed=5)
    result = simulate_round(cfg, encoded, drop={0: {1, 2}, 1: {3}})
    assert result.survivors == frozenset(ids) - {1, 2, 3}
    assert result.dropped == frozenset()  # they never shared keys: nothing to reconstruct
    _check_exact(codec, result, levels)


def test_200_rounds_in_a_row_with_fresh_keys():
    """fedbiomed #1002 failed after many rounds; every round here has fresh keys and checks."""
    n, length = 20, 8
    ids = tuple(range(n))
    codec = FixedPointCodec.tight(1.0, 2**12, n)
    rng = np.random.default_rng(11)
    public_keys: list[bytes] = []

    def observe(msg):
        if isinstance(msg, AdvertiseKeys):
            public_keys.extend((msg.c_pk, msg.s_pk))

    start = time.perf_counter()
    for r in range(200):
        levels, encoded = _inputs(codec, ids, length, seed=r)
        drop = {stage: {int(rng.integers(n))} for stage in (0, 2, 3) if rng.random() < 0.3}
        cfg = SecAggConfig(r, ids, length, codec.bits, degree=8, graph_seed=r.to_bytes(4, "big"))
        result = simulate_round(cfg, encoded, drop=drop, observe=observe)
        _check_exact(codec, result, levels)
    assert len(public_keys) == len(set(public_keys)) > 200 * 2 * (n - 1)
    assert time.perf_counter() - start < 60  # measured ~5 s


# --- aborts -----------------------------------------------------------------------------------


def test_too_many_dropouts_abort_without_a_sum():
    n, length = 10, 4
    ids = tuple(range(n))
    codec = FixedPointCodec.tight(1.0, 2**8, n)
    cfg = SecAggConfig(3, ids, length, codec.bits)  # complete graph: k = 9, t = 5
    _, encoded = _inputs(codec, ids, length)
    # Before masked input: only 4 survivors left, fewer than t: refused before any share leaks.
    with pytest.raises(SecAggAbort, match="4 clients left, the round needs 5"):
        simulate_round(cfg, encoded, drop={2: set(range(6))})
    # After masked input: 6 survivors, but only 4 answer the unmasking: too few shares.
    with pytest.raises(SecAggAbort, match="4 shares arrived, 5 needed"):
        simulate_round(cfg, encoded, drop={2: {0, 1, 2, 3}, 3: {4, 5}})
    with pytest.raises(SecAggAbort, match="advertise keys: 1 clients left"):
        simulate_round(cfg, encoded, drop={0: set(range(1, n))})


def test_sparse_neighbourhood_below_threshold_aborts_early():
    ids = tuple(range(20))
    codec = FixedPointCodec.tight(1.0, 2**8, 20)
    cfg = SecAggConfig(4, ids, 4, codec.bits, degree=4)  # t = 3
    _, encoded = _inputs(codec, ids, 4)
    victim = 7
    drop = {2: set(sorted(cfg.graph[victim])[:2])}  # 2 of its 4 neighbours: 2 < t share holders
    seen: list[object] = []
    with pytest.raises(SecAggAbort, match="self-mask seed: 2 share holders left, 3 needed"):
        simulate_round(cfg, encoded, drop=drop, observe=seen.append)
    assert not any(isinstance(msg, UnmaskResponse) for msg in seen)  # no share was revealed


# --- what the server sees ---------------------------------------------------------------------


def test_server_never_holds_an_individual_encoding():
    n, length = 8, 4096
    ids = tuple(range(n))
    codec = FixedPointCodec.tight(1.0, 2**16, n)
    cfg = SecAggConfig(5, ids, length, codec.bits, context=b"audit")
    encoded = {u: codec.encode(np.full(length, (u - 3) / 8.0)) for u in ids}  # very structured
    encoded[0] = codec.encode(np.zeros(length))
    seen: list[object] = []
    result = simulate_round(cfg, encoded, drop={2: {6}, 3: {7}}, observe=seen.append)
    blob = pickle.dumps(seen)
    masked = [msg for msg in seen if isinstance(msg, MaskedInput)]
    assert len(masked) == n - 1
    for x in encoded.values():
        plain = pack_bits(x, codec.bits)
        assert plain[:64] not in blob  # no message carries (a slice of) the plain encoding
        for msg in masked:
            y = unpack_bits(msg.payload, codec.bits, length)
            assert np.count_nonzero(y == x) < length * 0.01  # ~ 2**-bits agreement by chance
    # Never both masks of one client: b-shares only for survivors, s_sk-shares only for dropped.
    responses = [msg for msg in seen if isinstance(msg, UnmaskResponse)]
    b_owners = {v for r in responses for v in r.self_mask_shares}
    s_owners = {v for r in responses for v in r.key_shares}
    assert b_owners == set(result.survivors) and s_owners == {6} and not b_owners & s_owners
    # The masked vector of the all-zero input is uniform: chi-square over its bytes.
    zero_payload = next(msg.payload for msg in masked if msg.sender == 0)
    counts = np.bincount(np.frombuffer(zero_payload, dtype=np.uint8), minlength=256)
    expected = len(zero_payload) / 256
    assert ((counts - expected) ** 2 / expected).sum() < chi2_critical(255)
    assert ((counts - expected) ** 2 / expected).sum() > 150  # not suspiciously flat either


def test_server_state_keeps_no_plain_vector():
    n, length = 6, 256
    ids = tuple(range(n))
    codec = FixedPointCodec.tight(1.0, 2**16, n)
    cfg = SecAggConfig(6, ids, length, codec.bits)
    _, encoded = _inputs(codec, ids, length)
    server = ServerSession(cfg)
    clients = {u: ClientSession(cfg, u) for u in ids}
    for u in ids:
        server.receive_keys(clients[u].advertise_keys())
    keys = server.broadcast_keys()
    for u in ids:
        server.receive_shares(clients[u].share_keys(keys[u]))
    deliveries = server.deliver_shares()
    arrays_after_each_input = []
    for u in ids:
        server.receive_masked_input(clients[u].masked_input(deliveries[u], encoded[u]))
        arrays_after_each_input.append([a.copy() for a in _arrays(vars(server))])
    for arrays in arrays_after_each_input:
        assert len(arrays) == 1  # only the running masked total
        for x in encoded.values():
            assert not np.array_equal(arrays[0], x)
    assert not hasattr(clients[0], "_s") and clients[0]._b is None  # secrets dropped after input


def _arrays(obj, depth: int = 0):
    if isinstance(obj, np.ndarray):
        yield obj
    elif depth < 4 and isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays(v, depth + 1)
    elif depth < 4 and isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            yield from _arrays(v, depth + 1)
    elif depth < 4 and dataclasses.is_dataclass(obj):
        yield from _arrays(vars(obj), depth + 1)


# --- refusals and tampering -------------------------------------------------------------------


def _through_round2(n: int = 6, length: int = 8, degree=None):
    ids = tuple(range(n))
    codec = FixedPointCodec.tight(1.0, 2**8, n)
    cfg = SecAggConfig(7, ids, length, codec.bits, degree=degree)
    _, encoded = _inputs(codec, ids, length)
    server = ServerSession(cfg)
    clients = {u: ClientSession(cfg, u) for u in ids}
    for u in ids:
        server.receive_keys(clients[u].advertise_keys())
    keys = server.broadcast_keys()
    for u in ids:
        server.receive_shares(clients[u].share_keys(keys[u]))
    deliveries = server.deliver_shares()
    return server, clients, deliveries, encoded


def test_client_refuses_unsafe_unmask_requests():
    server, clients, deliveries, encoded = _through_round2()
    for u in range(5):
        server.receive_masked_input(clients[u].masked_input(deliveries[u], encoded[u]))
    alive, gone = frozenset(range(5)), frozenset({5})
    bad = {
        "both survived and dropped": UnmaskRequest(7, 0, alive | {5}, gone),
        "not list this client as a survivor": UnmaskRequest(7, 1, alive - {1}, gone | {1}),
        "status open": UnmaskRequest(7, 2, alive, frozenset()),
        "only 1 neighbours survived": UnmaskRequest(
            7, 3, frozenset({3, 4}), frozenset({0, 1, 2, 5})
        ),
    }
    for (match, request), u in zip(bad.items(), range(4), strict=True):
        with pytest.raises(SecAggAbort, match=match):
            clients[u].unmask(request)
        with pytest.raises(SecAggAbort, match="in phase DONE"):  # no second answer, ever
            clients[u].unmask(UnmaskRequest(7, u, alive, gone))
    ok = clients[4].unmask(UnmaskRequest(7, 4, alive, gone))
    assert set(ok.self_mask_shares) == {0, 1, 2, 3} and set(ok.key_shares) == {5}


def test_messages_out_of_order_or_misaddressed_are_refused():
    server, clients, deliveries, encoded = _through_round2()
    with pytest.raises(SecAggAbort, match="phase"):
        clients[0].advertise_keys()
    with pytest.raises(ValueError, match="for client 1"):
        clients[0].masked_input(deliveries[1], encoded[0])
    with pytest.raises(ValueError, match="uint32 vector of 8"):
        clients[0].masked_input(deliveries[0], encoded[0][:4])
    msg = clients[0].masked_input(deliveries[0], encoded[0])
    server.receive_masked_input(msg)
    with pytest.raises(ValueError, match="twice"):
        server.receive_masked_input(msg)
    with pytest.raises(ValueError, match="bytes"):
        server.receive_masked_input(MaskedInput(7, 1, msg.payload[:-1]))
    with pytest.raises(ValueError, match="round 8"):
        server.receive_masked_input(MaskedInput(8, 1, msg.payload))
    with pytest.raises(ValueError, match="not in this round"):
        server.receive_masked_input(MaskedInput(7, 99, msg.payload))
    for u in range(1, 6):
        server.receive_masked_input(clients[u].masked_input(deliveries[u], encoded[u]))
    server.unmask_requests()
    with pytest.raises(SecAggAbort, match="MASKED step came in phase UNMASK"):
        server.receive_masked_input(MaskedInput(7, 1, msg.payload))  # late input refused


def test_tampered_or_replayed_share_ciphertexts_fail_authentication():
    _, clients, deliveries, encoded = _through_round2()
    d = deliveries[0]
    flipped = dict(d.ciphertexts)
    blob = bytearray(flipped[1])
    blob[20] ^= 1
    flipped[1] = bytes(blob)
    with pytest.raises(SecAggAbort, match="from client 1 fail to authenticate"):
        clients[0].masked_input(dataclasses.replace(d, ciphertexts=flipped), encoded[0])
    # Client 1's shares for client 2, replayed to client 3 in place of its own.
    replayed = {**deliveries[3].ciphertexts, 1: deliveries[2].ciphertexts[1]}
    with pytest.raises(SecAggAbort, match="from client 1 fail to authenticate"):
        clients[3].masked_input(
            dataclasses.replace(deliveries[3], ciphertexts=replayed), encoded[3]
        )


def test_altered_unmask_share_is_detected_not_summed():
    server, clients, deliveries, encoded = _through_round2()
    for u in range(6):
        server.receive_masked_input(clients[u].masked_input(deliveries[u], encoded[u]))
    requests = server.unmask_requests()
    first = clients[0].unmask(requests[0])
    victim = 1
    share = bytearray(first.self_mask_shares[victim])
    share[-1] ^= 1  # a small chosen change: Shamir alone would not notice
    forged = dict(first.self_mask_shares)
    forged[victim] = bytes(share)
    server.receive_unmask(dataclasses.replace(first, self_mask_shares=forged))
    for u in range(1, 6):
        server.receive_unmask(clients[u].unmask(requests[u]))
    with pytest.raises(SecAggAbort, match="client 1's self-mask seed: a share was altered"):
        server.finalize()


def test_server_rejects_shares_for_the_wrong_neighbours():
    ids = tuple(range(5))
    cfg = SecAggConfig(8, ids, 4, 16)
    server = ServerSession(cfg)
    clients = {u: ClientSession(cfg, u) for u in ids}
    for u in ids:
        server.receive_keys(clients[u].advertise_keys())
    keys = server.broadcast_keys()
    msg = clients[0].share_keys(keys[0])
    short = dataclasses.replace(msg, ciphertexts={v: c for v, c in msg.ciphertexts.items() if v})
    short = dataclasses.replace(short, ciphertexts=dict(list(short.ciphertexts.items())[1:]))
    with pytest.raises(ValueError, match="exactly the advertised neighbours"):
        server.receive_shares(short)
    with pytest.raises(ValueError, match="distinct"):
        dup = dict(keys[1].keys)
        dup[2] = dup[3]
        clients[1].share_keys(dataclasses.replace(keys[1], keys=dup))


# --- graph and configuration ------------------------------------------------------------------


def test_harary_graph_is_regular_symmetric_and_seeded():
    ids = tuple(range(10, 60))
    cfg = SecAggConfig(1, ids, 4, 16, degree=12, graph_seed=b"a")
    g = cfg.graph
    assert all(len(g[u]) == 12 and u not in g[u] for u in ids)
    assert all(u in g[v] for u in ids for v in g[u])
    assert g == SecAggConfig(1, ids, 4, 16, degree=12, graph_seed=b"a").graph
    assert g != SecAggConfig(2, ids, 4, 16, degree=12, graph_seed=b"a").graph
    assert g != SecAggConfig(1, ids, 4, 16, degree=12, graph_seed=b"b").graph
    full = SecAggConfig(1, ids, 4, 16).graph
    assert all(full[u] == frozenset(ids) - {u} for u in ids)
    assert cfg.t == 7 and SecAggConfig(1, ids, 4, 16).t == 25


def test_sparse_degree_grows_logarithmically():
    assert sparse_degree(20) == 14 and sparse_degree(50) == 18 and sparse_degree(1000) == 30
    assert sparse_degree(10) is None  # 2 * ceil(3 * log2(10) / 2) = 10 >= 9: complete


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"round_id": -1}, "round_id=-1"),
        ({"clients": (1,)}, "at least 2 distinct"),
        ({"clients": (1, 1, 2)}, "at least 2 distinct"),
        ({"clients": (-1, 2)}, "client ids"),
        ({"vector_length": 0}, "vector_length=0"),
        ({"bits": 8}, "bits=8"),
        ({"degree": 3}, "degree=3 must be even"),
        ({"degree": 10}, "degree=10 must be even and in 2..8"),
        ({"threshold": 0}, "threshold=0"),
        ({"min_survivors": 1}, "min_survivors=1"),
    ],
)
def test_bad_config(kwargs, match):
    base = {"round_id": 1, "clients": tuple(range(10)), "vector_length": 4, "bits": 16}
    with pytest.raises(ValueError, match=match):
        SecAggConfig(**{**base, **kwargs})


# --- cost -------------------------------------------------------------------------------------


def _round2_seconds(n: int, length: int, degree, repeats: int = 2) -> tuple[float, int, int]:
    ids = tuple(range(n))
    codec = FixedPointCodec.tight(1.0, 2**16, n)
    cfg = SecAggConfig(1, ids, length, codec.bits, degree=degree)
    x = codec.encode(np.random.default_rng(0).uniform(-1, 1, length))
    best = math.inf
    for _ in range(repeats):
        server = ServerSession(cfg)
        clients = {u: ClientSession(cfg, u) for u in ids}
        for u in ids:
            server.receive_keys(clients[u].advertise_keys())
        keys = server.broadcast_keys()
        for u in ids:
            server.receive_shares(clients[u].share_keys(keys[u]))
        delivery = server.deliver_shares()[0]
        start = time.perf_counter()
        msg = clients[0].masked_input(delivery, x)
        best = min(best, time.perf_counter() - start)
    return best, msg.nbytes, codec.bits


def test_round2_cost_and_upload_expansion():
    """One client's Round 2 at 50 clients x 300k values, complete vs SecAgg+ graph."""
    n, length = 50, 300_000
    complete, nbytes, bits = _round2_seconds(n, length, None)
    sparse, nbytes_sparse, _ = _round2_seconds(n, length, sparse_degree(n))
    plain_fixed = packed_size(length, bits)  # the same fixed-point vector, unmasked
    expansion = nbytes / plain_fixed
    print(
        f"\nround 2, 1 client, {n} clients x {length}: complete {complete * 1e3:.1f} ms, "
        f"sparse (k={sparse_degree(n)}) {sparse * 1e3:.1f} ms; masked upload {nbytes} B = "
        f"{expansion:.5f}x plain {bits}-bit fixed point, {nbytes / (4 * length):.3f}x float32, "
        f"{bits / required_bits(1.0, 2**16, 1):.3f}x a 1-client-width encoding"
    )
    assert nbytes == nbytes_sparse
    assert expansion <= 1.1
    assert sparse < complete  # 18 vs 49 neighbours
    assert complete < 5.0  # measured ~0.05 s
