"""`privacy=secagg` through the protocol seams, in process: exact sums, weighted means under
dropouts, uniform masked payloads, what the server receives, many rounds, refused configs."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from secure_helpers import LocalIO, one_round, run_context

from fedray.app.cli import compose
from fedray.app.spec import build_spec
from fedray.core import registry
from fedray.core.context import RoundContext
from fedray.core.errors import ConfigError, QuorumError
from fedray.core.types import spec_of
from fedray.privacy._transcript import load_transcripts
from fedray.privacy.lib.bitpack import unpack_bits
from fedray.privacy.lib.masking import decode_weighted
from fedray.privacy.lib.secagg_core import (
    AdvertiseKeys,
    EncryptedShares,
    SecAggConfig,
    UnmaskResponse,
)


def chi2_critical(df: int, z: float = 4.75) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at normal deviate z (p ~ 1e-6)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def mechanisms(**options):
    node = {"name": "secagg", **options}
    return registry.build("privacy", node), registry.build("privacy", node)


def deltas_for(cohort, rng, shape=(40, 6)):
    return {
        c: {
            "lora_A": rng.normal(0, 1e-3, shape).astype(np.float32),
            "head": rng.normal(0, 2e-3, 7).astype(np.float32),
        }
        for c in cohort
    }


def plain_ring(server, deltas, sizes, rnd):
    """Each client's plain fixed-point encoding, as its transform computes it before masking."""
    msg = server.round_message(None)
    return {
        c: server.encode(d, weight=float(sizes[c]), seed=1000 * rnd + c, msg=msg).astype(np.int64)
        for c, d in deltas.items()
    }


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.3])
def test_unmasked_sum_is_the_plain_fixed_point_sum_of_the_survivors(tmp_path, dropout) -> None:
    server, client = mechanisms(dropout=dropout, transcript=str(tmp_path))
    sizes = list(range(3, 23))
    run = run_context(20, 10, sizes)
    server.setup(run)
    rng = np.random.default_rng(1)
    deltas = deltas_for(range(0, 20, 2), rng)
    agg, _, _ = one_round(server, client, run, 1, deltas)
    (log,) = load_transcripts(tmp_path)
    (result,) = [obj for kind, _, obj in log["received"] if kind == "sum"]
    assert len(result.survivors) == 10 - round(dropout * 10) == agg.count
    codec = server.codec
    plain = plain_ring(server, deltas, sizes, 1)
    expected = sum(plain[c] for c in result.survivors)
    np.testing.assert_array_equal(codec.to_signed(result.total), codec.to_signed(expected))


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_mean_divides_by_the_weights_of_the_clients_in_the_sum(dropout) -> None:
    """OpenFL #1407: a masked weighted average must divide by the survivors' weights."""
    server, client = mechanisms(dropout=dropout)
    sizes = [1, 50, 3, 40, 2, 30, 7, 9, 12, 64]
    run = run_context(10, 10, sizes)
    server.setup(run)
    deltas = deltas_for(range(10), np.random.default_rng(2))
    silent = {1}  # dropped after the key exchange, before masking (weight 50 of 218)
    agg, _, _ = one_round(server, client, run, 1, deltas, silent=silent)
    arrived = [c for c in range(10) if c not in silent]
    survivors = sorted(server.secure.last_survivors)
    assert agg.count == len(survivors) == len(arrived) - round(dropout * len(arrived))
    assert set(survivors) <= set(arrived)
    w = np.array([sizes[c] for c in survivors], float)
    for key in ("lora_A", "head"):
        good = sum(sizes[c] * deltas[c][key].astype(np.float64) for c in survivors)
        good /= w.sum()
        wrong = good * w.sum() / sum(sizes[c] for c in range(10))  # divided by every weight
        tol = 3 * sum(sizes) / w.sum() / 2**24  # a few fixed-point levels of the weighted sum
        np.testing.assert_allclose(agg.mean[key], good, atol=tol, rtol=0)
        assert np.abs(agg.mean[key] - wrong).max() > 100 * tol
    assert agg.weight == pytest.approx(w.sum(), abs=1e-4)


def test_a_masked_payload_is_uniform_and_the_plain_encoding_is_not() -> None:
    server, client = mechanisms()
    run = run_context(4, 4)
    server.setup(run)
    deltas = deltas_for(range(4), np.random.default_rng(3), shape=(20_000,))
    _, updates, _ = one_round(server, client, run, 1, deltas)
    masked = np.asarray(updates[0].payload)
    counts = np.bincount(masked, minlength=256)
    chi2 = float(((counts - masked.size / 256) ** 2).sum() / (masked.size / 256))
    assert chi2 < chi2_critical(255)
    plain = server.encode(deltas[0], weight=10.0, seed=1000, msg=server.round_message(None))
    raw = np.frombuffer(plain.astype("<u4").tobytes(), np.uint8)
    counts = np.bincount(raw, minlength=256)
    assert float(((counts - raw.size / 256) ** 2).sum() / (raw.size / 256)) > chi2_critical(255)


def test_the_server_receives_public_messages_only_and_no_client_secret(tmp_path) -> None:
    server, client = mechanisms(dropout=0.25, transcript=str(tmp_path))
    run = run_context(8, 8)
    server.setup(run)
    deltas = deltas_for(range(8), np.random.default_rng(4), shape=(4000,))
    cohort = tuple(range(8))
    ctx = RoundContext(run, 1, cohort, spec_of(deltas[0]))
    io = LocalIO(client, 1)
    server.before_round(ctx, io)
    secrets_ = {  # what each client must never reveal (captured before masking erases them)
        c: [s["secagg"]._c.secret, s["secagg"]._s.secret, s["secagg"]._b]
        for c, s in io.sessions.items()
    }
    from fedray.core.types import Update

    updates = []
    for c in cohort:
        p = client.client_transform(
            deltas[c],
            weight=10.0,
            client_id=c,
            round=1,
            seed=1000 + c,
            round_message=server.round_message(ctx),
            client_message=server.client_message(ctx, c),
            session=io.sessions[c],
        )
        updates.append(Update(c, 10, p, p.nbytes))
    server.reduce([], updates, ctx, io)
    (log,) = load_transcripts(tmp_path)
    blob = pickle.dumps(log)
    for c, values in secrets_.items():
        for secret in values:
            assert len(secret) == 32 and secret not in blob, f"client {c}'s secret leaked"
    kinds = {
        "secagg/advertise": AdvertiseKeys,
        "secagg/share": EncryptedShares,
        "secagg/unmask": UnmaskResponse,
        "masked": bytes,
    }
    result = next(obj for kind, _, obj in log["received"] if kind == "sum")
    for kind, _, obj in log["received"]:
        if kind in kinds:
            assert isinstance(obj, kinds[kind]), kind
        if kind == "secagg/unmask":  # never a survivor's mask key nor a dropped one's seed
            assert set(obj.key_shares) <= result.dropped
            assert set(obj.self_mask_shares) <= result.survivors
    assert isinstance(log["config"], SecAggConfig)
    # a masked vector is uncorrelated with its client's plain encoding
    plain = plain_ring(server, deltas, [10] * 8, 1)
    for kind, cid, obj in log["received"]:
        if kind == "masked":
            cfg = log["config"]
            y = unpack_bits(obj, cfg.bits, cfg.vector_length).astype(np.float64)
            x = (plain[cid] % 2**cfg.bits).astype(np.float64)  # the ring values it hides
            assert abs(np.corrcoef(x, y)[0, 1]) < 5 / math.sqrt(x.size)  # 5 sigma of none
            assert np.mean(x == y) < 1e-3


def test_200_rounds_of_20_clients_each_exact_and_leaving_no_state_behind() -> None:
    """fedbiomed #1002 (secure aggregation failing after many rounds): fresh keys and sessions
    every round, nothing accumulating on either side."""
    server, client = mechanisms(dropout=0.1, degree=8)
    sizes = [int(s) for s in np.random.default_rng(5).integers(1, 30, 60)]
    run = run_context(60, 20, sizes, rounds=200)
    server.setup(run)
    rng = np.random.default_rng(6)
    keys_seen = set()
    for rnd in range(1, 201):
        cohort = sorted(int(c) for c in rng.choice(60, 20, replace=False))
        deltas = deltas_for(cohort, rng, shape=(12,))
        agg, _, io = one_round(server, client, run, rnd, deltas)
        assert agg.count == 18
        survivors = sorted(server.secure.last_survivors)
        plain = plain_ring(server, deltas, sizes, rnd)
        total = sum(plain[c] for c in survivors)
        expect = decode_weighted(server.codec, total, server.round_message(None).max_weight)
        np.testing.assert_array_equal(
            np.concatenate([agg.mean[k].reshape(-1) for k in ("lora_A", "head")]),
            expect.mean.astype(np.float32),
        )
        keys = {msg.c_pk for phase, _, msg in io.log if phase == "secagg/advertise"}
        assert len(keys) == 20 and not keys & keys_seen  # fresh keys every round
        keys_seen |= keys
        assert server.secure._server is None and server.secure._deliveries == {}
        for cid, session in io.sessions.items():  # masking erased every client's own secrets
            mine = session["secagg"]
            assert mine._b is None and not hasattr(mine, "_c") and not hasattr(mine, "_s")
            assert (mine._phase.name == "DONE") == (cid in survivors)


def test_a_client_that_missed_the_key_exchange_cannot_join_and_says_why() -> None:
    server, client = mechanisms()
    run = run_context(4, 4)
    server.setup(run)
    deltas = deltas_for(range(4), np.random.default_rng(7))
    ctx = RoundContext(run, 1, (0, 1, 2, 3), spec_of(deltas[0]))
    io = LocalIO(client, 1, drop={2})
    server.before_round(ctx, io)
    assert server.client_message(ctx, 2) is None
    with pytest.raises(Exception, match="missed this round's key exchange"):
        client.client_transform(
            deltas[2],
            weight=10.0,
            client_id=2,
            round=1,
            seed=0,
            round_message=server.round_message(ctx),
            client_message=None,
            session={},
        )


def test_too_few_survivors_abort_the_round_as_a_value_error() -> None:
    server, client = mechanisms(threshold=3, dropout=0.5)  # 2 of 4 survive, 3 needed
    run = run_context(4, 4)
    server.setup(run)
    deltas = deltas_for(range(4), np.random.default_rng(8))
    with pytest.raises(ValueError, match="secure aggregation aborted the round"):
        one_round(server, client, run, 1, deltas)


def test_key_exchange_with_too_few_clients_is_a_quorum_error() -> None:
    server, client = mechanisms()
    run = run_context(4, 4)
    server.setup(run)
    deltas = deltas_for(range(4), np.random.default_rng(9))
    ctx = RoundContext(run, 1, (0, 1, 2, 3), spec_of(deltas[0]))
    with pytest.raises(QuorumError, match="secure aggregation cannot start"):
        server.before_round(ctx, LocalIO(client, 1, drop={0, 1, 2}))


def test_a_weight_above_the_public_cap_is_refused_in_one_line() -> None:
    server, client = mechanisms(max_weight=8)
    run = run_context(4, 4)
    server.setup(run)
    deltas = deltas_for(range(4), np.random.default_rng(10))
    with pytest.raises(ValueError, match=r"weight 9 is outside \[0, W=8\]"):
        one_round(server, client, run, 1, deltas, weights=dict.fromkeys(range(4), 9))


# -- bit length (fedbiomed #1210) ------------------------------------------------------------


def _spec(*overrides):
    return build_spec(compose(["tracking=none", "privacy=secagg", *overrides]))


def test_too_few_bits_for_10_clients_are_refused_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match=r"^privacy\.bits=28 overflows a sum of 10 values.*>= 29"):
        _spec("mode.clients_per_round=10", "privacy.bits=28")
    assert _spec("mode.clients_per_round=10", "privacy.bits=29").privacy.bits == 29


def test_auto_bits_hold_the_largest_possible_sum_of_50_clients() -> None:
    server, client = mechanisms()
    run = run_context(50, 50, [8] * 50)
    server.setup(run)
    assert server.codec.bits == 31
    big = {c: {"x": np.full(16, 5.0, np.float32)} for c in range(50)}  # clipped to +bound
    agg, _, _ = one_round(server, client, run, 1, big)
    np.testing.assert_allclose(agg.mean["x"], 1.0, atol=1e-6)  # no wrap-around: +1, not -1
    assert agg.weight == pytest.approx(400.0, abs=1e-3)


def test_a_cohort_larger_than_the_ring_was_sized_for_is_refused() -> None:
    server, client = mechanisms(max_clients=4)
    server.setup(run_context(10, 4))
    deltas = deltas_for(range(6), np.random.default_rng(11))
    with pytest.raises(ConfigError, match=r"sized for privacy\.max_clients=4"):
        one_round(server, client, run_context(10, 4), 1, deltas)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algorithm=krum"], "needs individual updates"),
        (["algorithm=scaffold"], "sends extra state"),
        (["compression=int8"], "cannot run behind privacy=secagg"),
        (["mode.max_norm_ratio=3"], "hides every single update"),
        (["mode.clients_per_round=1"], "at least 2 clients"),
        (["privacy.degree=5"], "even number"),
        (["privacy.degree=10", "mode.clients_per_round=10"], "must be below 9"),
        (["privacy.threshold=12", "mode.clients_per_round=10"], "exceeds the 9 neighbours"),
        (["privacy.dropout=1.0"], r"dropout=1.0 must be in \[0, 1\)"),
    ],
)
def test_combinations_that_cannot_work_are_refused_in_one_line(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _spec(*overrides)
    assert "\n" not in str(err.value)


def test_state_dict_round_trip_and_key_check() -> None:
    server, _ = mechanisms()
    server.setup(run_context(4, 4))
    server.load_state_dict(server.state_dict())
    with pytest.raises(KeyError):
        server.load_state_dict({"stray": 1})
