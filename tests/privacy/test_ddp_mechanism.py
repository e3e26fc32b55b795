"""`privacy=ddp` through the protocol seams, in process: the released sum is noised at the
accounted scale, the accounting is the accountant's, the budget stops a run, refused configs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from secure_helpers import LocalIO, one_round, run_context

from fedray.app.cli import compose
from fedray.app.spec import build_spec
from fedray.core import registry
from fedray.core.context import RoundContext
from fedray.core.errors import BudgetExhausted, ConfigError
from fedray.core.types import StateSpec, spec_of
from fedray.privacy.lib.clipping import clip_to_norm
from fedray.privacy.lib.ddp_accounting import DistributedDpAccountant


def mechanisms(**options):
    node = {"name": "ddp", **options}
    return registry.build("privacy", node), registry.build("privacy", node)


def deltas_for(cohort, rng, size=3000, scale=0.05):
    return {c: {"w": rng.normal(0, scale, size).astype(np.float32)} for c in cohort}


def clipped_mean(deltas, members, clip):
    return sum(clip_to_norm(deltas[c], clip)[0]["w"].astype(np.float64) for c in members) / len(
        members
    )


@pytest.mark.parametrize("noise", ["discrete_gaussian", "skellam"])
def test_the_released_sum_carries_noise_of_the_accounted_scale(noise) -> None:
    server, client = mechanisms(clip_norm=1.0, noise=noise, noise_multiplier=0.8)
    run = run_context(10, 10)
    server.setup(run)
    deltas = deltas_for(range(10), np.random.default_rng(0))  # norms ~2.7: all clipped to 1
    agg, _, _ = one_round(server, client, run, 1, deltas)
    enc = server.encoding
    error = agg.mean["w"] - clipped_mean(deltas, range(10), 1.0)
    # the sum holds 10 noise shares of std sigma (rounded units); times gamma, over 10 clients
    expected = math.sqrt(10) * enc.local_std * enc.gamma / 10
    assert np.std(error) == pytest.approx(expected, rel=0.1)
    assert abs(np.mean(error)) < 4 * expected / math.sqrt(error.size)
    # the accounted noise multiplier is what the mechanism reports
    z = math.sqrt(10) * enc.local_std / enc.l2_sensitivity
    assert server.metrics()["privacy_noise_multiplier"] == pytest.approx(z) == pytest.approx(0.8)


def test_without_noise_the_sum_is_the_clipped_sum_within_the_rounding_bound() -> None:
    """The same pipeline with a tiny multiplier: only rounding separates the two."""
    server, client = mechanisms(clip_norm=1.0, noise_multiplier=1e-4, bits=32)
    run = run_context(6, 6)
    server.setup(run)
    deltas = deltas_for(range(6), np.random.default_rng(1))
    agg, _, _ = one_round(server, client, run, 1, deltas)
    enc = server.encoding
    error = (agg.mean["w"] - clipped_mean(deltas, range(6), 1.0)) * 6
    noise = math.sqrt(6) * enc.local_std * enc.gamma * 6  # a generous 6 sigma
    assert np.linalg.norm(error) <= enc.rounding_error_bound(6) + noise * math.sqrt(error.size)


def test_epsilon_is_the_accountants_for_the_rounds_released() -> None:
    server, client = mechanisms(clip_norm=1.0, noise_multiplier=1.2, min_shares=6, dropout=0.2)
    run = run_context(20, 10)
    server.setup(run)
    rng = np.random.default_rng(2)
    shares = []
    for rnd in (1, 2, 3):
        cohort = sorted(int(c) for c in rng.choice(20, 10, replace=False))
        silent = {cohort[0]} if rnd == 2 else set()  # a real dropout on top of the simulated
        one_round(server, client, run, rnd, deltas_for(cohort, rng, 500), silent=silent)
        shares.append(len(server.secure.last_survivors))
    assert shares == [8, 7, 8]
    enc = server.encoding
    reference = DistributedDpAccountant(
        noise="discrete_gaussian", dim=enc.padded_dim, l2_sensitivity=enc.l2_sensitivity
    )
    for n in shares:
        reference.step(enc.local_std, n)
    assert server.metrics()["epsilon"] == reference.epsilon(1e-5) > 0
    restored, _ = mechanisms(clip_norm=1.0, noise_multiplier=1.2, min_shares=6, dropout=0.2)
    restored.setup(run)
    restored.load_state_dict(server.state_dict())
    one_round(restored, client, run, 4, deltas_for(range(10), rng, 500))
    reference.step(enc.local_std, 8)
    assert restored.metrics()["epsilon"] == pytest.approx(reference.epsilon(1e-5), rel=1e-12)


def test_the_server_refuses_a_sum_with_fewer_noise_shares_than_guaranteed() -> None:
    server, client = mechanisms(clip_norm=1.0, min_shares=5)
    run = run_context(6, 6)
    server.setup(run)
    deltas = deltas_for(range(6), np.random.default_rng(3), 200)
    with pytest.raises(ValueError, match="secure aggregation aborted the round"):
        one_round(server, client, run, 1, deltas, silent={0, 1})
    assert server.accountant.runs == []  # nothing released, nothing spent


def test_target_epsilon_is_met_over_the_planned_rounds() -> None:
    server, client = mechanisms(clip_norm=1.0, noise_multiplier=None, target_epsilon=4.0)
    run = run_context(8, 4, rounds=3)
    server.setup(run)
    rng = np.random.default_rng(4)
    for rnd in (1, 2, 3):
        one_round(server, client, run, rnd, deltas_for(range(4), rng, 300))
    assert server.metrics()["epsilon"] == pytest.approx(4.0, rel=0.01)
    assert server.metrics()["epsilon"] <= 4.0 * (1 + 1e-3)


def test_max_epsilon_ends_the_run_before_the_round_that_would_pass_it() -> None:
    server, client = mechanisms(clip_norm=1.0, noise_multiplier=1.0, max_epsilon=8.0)
    run = run_context(4, 4, rounds=50)
    server.setup(run)
    rng = np.random.default_rng(5)
    rnd = 0
    with pytest.raises(BudgetExhausted, match=r"privacy\.max_epsilon=8") as stop:
        for rnd in range(1, 51):
            deltas = deltas_for(range(4), rng, 100)
            ctx = RoundContext(run, rnd, (0, 1, 2, 3), spec_of(deltas[0]))
            io = LocalIO(client, rnd)
            server.before_round(ctx, io)  # raises before any round trip of that round
            server.after_round(ctx, one_round_after_keys(server, client, ctx, io, deltas))
    assert io.log == [] and 1 < rnd < 50
    assert f"round {rnd} would bring epsilon to" in str(stop.value)
    assert server.metrics()["epsilon"] <= 8.0


def one_round_after_keys(server, client, ctx, io, deltas):
    from fedray.core.types import Update

    updates = []
    for c in ctx.cohort:
        p = client.client_transform(
            deltas[c],
            weight=1.0,
            client_id=c,
            round=ctx.round,
            seed=c,
            round_message=server.round_message(ctx),
            client_message=server.client_message(ctx, c),
            session=io.sessions[c],
        )
        updates.append(Update(c, 1, p, p.nbytes))
    return server.reduce([], updates, ctx, io)


def test_noise_comes_from_the_os_not_the_run_seed() -> None:
    """The server knows the run seed: noise drawn from it could be subtracted."""
    means = []
    for _ in range(2):
        server, client = mechanisms(clip_norm=1.0)
        run = run_context(4, 4)
        server.setup(run)
        deltas = deltas_for(range(4), np.random.default_rng(6), 200)
        means.append(one_round(server, client, run, 1, deltas)[0].mean["w"])
    assert not np.array_equal(*means)


def test_too_few_bits_for_the_update_size_are_refused_in_one_line() -> None:
    """50 clients' rounding alone (sqrt(D)/2 each, D = 2^22) overflows 16 bits."""
    server, client = mechanisms(clip_norm=1.0, bits=16)
    run = run_context(50, 50)
    server.setup(run)
    ctx = RoundContext(run, 1, tuple(range(50)), StateSpec(("w",), ((4_000_000,),)))
    io = LocalIO(client, 1)
    with pytest.raises(ConfigError, match=r"bits=16 cannot hold 50 clients.*raise privacy\.bits"):
        server.before_round(ctx, io)
    assert io.log == []


def _spec(*overrides):
    return build_spec(compose(["tracking=none", "privacy=ddp", *overrides]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["privacy.dropout=0.3"], r"leaves 3 noise shares.*min_shares <= 3"),
        (["privacy.min_shares=6"], "exceeds the 5 clients"),
        (["privacy.target_epsilon=3"], "needs noise_multiplier=null"),
        (["privacy.noise_multiplier=null"], "needs a target_epsilon"),
        (["selection=power_of_choice"], "data-independent selection"),
        (["privacy.noise=laplace"], "must be one of discrete_gaussian, skellam"),
        (["algorithm=median"], "needs individual updates"),
        (["mode=async", "algorithm=fedbuff"], "needs individual updates"),
    ],
)
def test_combinations_that_cannot_work_are_refused_in_one_line(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _spec("mode.clients_per_round=5", *overrides)
    assert "\n" not in str(err.value)


def test_state_dict_checks_its_keys() -> None:
    server, _ = mechanisms()
    with pytest.raises(KeyError):
        server.load_state_dict({"accountant": None, "stray": 1})
