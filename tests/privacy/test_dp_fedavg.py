"""`privacy=dp_fedavg` through its own code path: the client transform, the codec, the server's
reduce and the accountant, driven round by round without Ray."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp

from fedray.app.cli import compose
from fedray.app.spec import build_spec
from fedray.core import registry
from fedray.core.context import RoundContext, RunContext
from fedray.core.errors import BudgetExhausted, ConfigError
from fedray.core.types import Aggregate, State, StateSpec, Update
from fedray.pipeline import Pipeline
from fedray.privacy.dp_fedavg import BIT, DpFedAvg, DpFedAvgOptions
from fedray.privacy.lib.clipping import global_norm, split_noise_multiplier

SPEC = StateSpec(("a", "b"), ((40, 25), (1000,)))  # d = 2000
N, M, SEED = 200, 20, 7  # population, expected cohort, run seed


def make(
    sampling: str = "poisson", sizes: tuple[int, ...] = (), rounds: int = 10, **options
) -> DpFedAvg:
    opts = DpFedAvgOptions(**{"noise_multiplier": 1.0, "accounting_resolution": 1e-3, **options})
    opts.check()
    mech = DpFedAvg(opts)
    mech.setup(RunContext(N, M, sampling, rounds, SEED, "sync", sizes))
    return mech


def pipeline(mech: DpFedAvg, codec: dict | None = None) -> Pipeline:
    up = registry.build("compression", codec or {"name": "none"})
    return Pipeline(up, registry.build("compression", {"name": "none"}), mech)


def random_state(rng: np.random.Generator, norm: float) -> State:
    flat = rng.standard_normal(SPEC.size)
    return {k: v.copy() for k, v in SPEC.unflatten(flat * norm / np.linalg.norm(flat)).items()}


def play_round(
    pipe: Pipeline, rnd: int, deltas: dict[int, State], sizes: dict[int, int] | None = None
) -> tuple[Aggregate, dict[int, State]]:
    """One round as the protocol runs it: round message, each client's transform and encoding,
    the server's decode and reduce, the accountant step. Returns (aggregate, what was sent)."""
    mech = pipe.mechanism
    ctx = RoundContext(mech.run, rnd, tuple(sorted(deltas)), SPEC)
    mech.before_round(ctx, None)
    clip = mech.round_message(ctx)
    updates, sent = [], {}
    for cid, delta in sorted(deltas.items()):
        n = (sizes or {}).get(cid, 10)
        session: dict = {}
        payload, _ = pipe.client(
            delta,
            spec=SPEC,
            weight=float(n),
            client_id=cid,
            round=rnd,
            seed=1000 * rnd + cid,
            round_message=clip,
            client_message=None,
            client_state={},
            session=session,
        )
        _, figures = mech.client_finish(client_id=cid, round=rnd, state=None, session=session)
        updates.append(Update(cid, n, payload, payload.nbytes, metrics=figures))
        sent[cid] = pipe.up.decode(payload, SPEC)
    contributions = [pipe.decode(u, SPEC) for u in updates]
    aggregate = mech.reduce(contributions, updates, ctx, None)
    mech.after_round(ctx, aggregate)
    return aggregate, sent


def flat(state: State) -> np.ndarray:
    return SPEC.flatten(state).astype(np.float64)


# -- accounting --------------------------------------------------------------------------------
@pytest.mark.parametrize("z", [0.8, 1.7])
def test_epsilon_equals_dp_accountings_for_poisson_rounds(z: float) -> None:
    mech, rounds, rng = make(noise_multiplier=z), 6, np.random.default_rng(0)
    pipe = pipeline(mech)
    for rnd in range(1, rounds + 1):
        play_round(pipe, rnd, {c: random_state(rng, 1.0) for c in range(rnd % 3)})
    got = mech.metrics()
    event = dp_accounting.PoissonSampledDpEvent(M / N, dp_accounting.GaussianDpEvent(z))
    delta = 1 / N**1.1
    want = (
        pld.PLDAccountant(value_discretization_interval=1e-3)
        .compose(event, rounds)
        .get_epsilon(delta)
    )
    want_rdp = rdp.RdpAccountant().compose(event, rounds).get_epsilon(delta)
    assert got["delta"] == delta and got["noise_multiplier"] == z
    assert math.isclose(got["epsilon"], want, rel_tol=1e-9)
    assert math.isclose(got["epsilon_rdp"], want_rdp, rel_tol=1e-9)
    assert got["epsilon"] < got["epsilon_rdp"]  # PLD is the tighter bound


def test_epsilon_equals_dp_accountings_for_fixed_size_rounds() -> None:
    mech, rng = make("fixed", noise_multiplier=1.1, delta=1e-5), np.random.default_rng(1)
    pipe = pipeline(mech)
    for rnd in range(1, 5):
        play_round(pipe, rnd, {c: random_state(rng, 1.0) for c in range(M)})
    # replace-one adjacency: two clipped updates differ by up to 2C, hence z / 2 (see
    # fedray.privacy.lib.accounting); only the RDP accountant supports this event
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        N, M, dp_accounting.GaussianDpEvent(1.1 / 2)
    )
    acc = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    want = acc.compose(event, 4).get_epsilon(1e-5)
    assert math.isclose(mech.metrics()["epsilon"], want, rel_tol=1e-9)


def test_target_epsilon_calibrates_z_for_the_run() -> None:
    mech = make(noise_multiplier=None, target_epsilon=2.0, rounds=5)
    assert 0.3 < mech.noise_multiplier < 10
    for _ in range(5):
        mech.accountant.step(mech.noise_multiplier)
    assert 1.98 <= mech.metrics()["epsilon"] <= 2.0


def test_max_epsilon_stops_before_the_round_that_would_exceed_it() -> None:
    probe = make()
    for _ in range(3):
        probe.accountant.step(1.0)
    cap = probe.accountant.epsilon(1 / N**1.1) * 1.001  # three rounds fit, four do not
    mech, rng = make(max_epsilon=cap), np.random.default_rng(2)
    pipe = pipeline(mech)
    for rnd in (1, 2, 3):
        play_round(pipe, rnd, {0: random_state(rng, 1.0)})
    assert mech.metrics()["epsilon"] <= cap
    with pytest.raises(BudgetExhausted, match=r"round 4 would bring epsilon"):
        mech.before_round(RoundContext(mech.run, 4, (0,), SPEC), None)
    assert mech.accountant.steps == 3  # nothing was charged for the refused round


# -- noise, weights, denominator ---------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["uniform", "capped"])
def test_noise_std_on_the_aggregate_is_z_c_wmax_over_the_fixed_denominator(
    weighting: str,
) -> None:
    sizes = tuple(int(s) for s in np.random.default_rng(3).integers(1, 40, N))
    cap = 16.0 if weighting == "capped" else 0.0
    mech = make(sizes=sizes, noise_multiplier=1.3, clip=0.5, weighting=weighting, weight_cap=cap)
    total_weight = N if weighting == "uniform" else float(np.minimum(np.array(sizes) / 16, 1).sum())
    expected = 1.3 * 0.5 * 1.0 / (M / N * total_weight)  # w_max = 1
    pipe = pipeline(mech)
    draws = [flat(play_round(pipe, rnd, {})[0].mean) for rnd in range(1, 21)]  # noise only
    noise = np.concatenate(draws)  # 20 rounds x 2000 coordinates
    assert abs(noise.std() / expected - 1) < 0.03  # sampling error of a std over 40k draws ~0.4%
    assert abs(noise.mean()) < 4 * expected / math.sqrt(noise.size)
    assert mech.metrics()["noise_std"] == pytest.approx(expected, rel=1e-12)
    assert not np.array_equal(draws[0], draws[1])  # a fresh draw each round


def test_capped_weights_and_the_fixed_denominator_without_noise() -> None:
    sizes = tuple([5] * 100 + [40] * 100)
    mech = make(sizes=sizes, noise_multiplier=0.0, clip=1.0, weighting="capped", weight_cap=20.0)
    rng = np.random.default_rng(4)
    deltas = {0: random_state(rng, 0.5), 150: random_state(rng, 3.0)}  # the second is clipped
    aggregate, _ = play_round(pipeline(mech), 1, deltas, {0: 5, 150: 40})
    w = {0: 5 / 20, 150: 1.0}
    denominator = M / N * (100 * 0.25 + 100 * 1.0)
    want = (w[0] * flat(deltas[0]) + w[150] * flat(deltas[150]) / 3.0) / denominator  # 3 -> C=1
    np.testing.assert_allclose(flat(aggregate.mean), want, rtol=1e-5, atol=1e-9)
    assert aggregate.weight == pytest.approx(denominator) and aggregate.count == 2
    assert mech.metrics()["clipped_fraction"] == 0.5


def test_an_empty_cohort_releases_noise_of_the_state_shape_and_is_charged() -> None:
    mech = make()
    aggregate, _ = play_round(pipeline(mech), 1, {})
    assert aggregate.count == 0 and set(aggregate.mean) == set(SPEC.keys)
    assert aggregate.mean["a"].shape == (40, 25) and np.std(flat(aggregate.mean)) > 0
    assert mech.accountant.steps == 1


# -- clipping ----------------------------------------------------------------------------------
def test_every_clipped_delta_respects_c_also_after_a_norm_growing_codec() -> None:
    codec = {"name": "randk", "fraction": 0.1, "unbiased": True}  # decoding scales by d/k
    mech, rng = make(noise_multiplier=0.0, clip=0.3), np.random.default_rng(5)
    pipe = pipeline(mech, codec)
    assert pipe.up.can_grow_norm
    norms = [0.05, 0.2, 0.29, 1.0, 10.0]
    deltas = {c: random_state(rng, norm) for c, norm in enumerate(norms)}
    _, sent = play_round(pipe, 1, deltas)
    grown = [global_norm(sent[c]) for c in sorted(sent)]
    assert max(grown) > 0.3  # the codec did grow norms past C after the client's clip
    assert mech.metrics()["server_clipped"] >= 1
    assert mech.metrics()["clipped_fraction"] == 2 / 5  # the clients' own bits (1.0 and 10.0)
    for c, delta in deltas.items():  # each update alone: what the server summed is within C
        fresh = make(noise_multiplier=0.0, clip=0.3)
        aggregate, _ = play_round(pipeline(fresh, codec), 1, {c: delta})
        summed = flat(aggregate.mean) * aggregate.weight  # w = 1 (uniform)
        assert np.linalg.norm(summed) <= 0.3 * (1 + 1e-6)


def test_the_client_clips_before_encoding_and_reports_its_bit() -> None:
    mech, rng = make(clip=0.5), np.random.default_rng(6)
    for norm, bit in ((0.2, 1.0), (0.4999, 1.0), (0.5001, 0.0), (2.0, 0.0)):
        session: dict = {}
        sent = mech.client_transform(
            random_state(rng, norm),
            weight=1.0,
            client_id=0,
            round=1,
            seed=0,
            round_message=0.5,
            client_message=None,
            session=session,
        )
        assert global_norm(sent) <= 0.5
        _, figures = mech.client_finish(client_id=0, round=1, state=None, session=session)
        assert figures == {BIT: bit}


def test_adaptive_clip_tracks_the_median_update_norm_through_the_mechanism() -> None:
    mech = make(clip=0.05, adaptive=True, noise_multiplier=1.0, rounds=80)
    assert mech.update_noise_multiplier == pytest.approx(split_noise_multiplier(1.0, M / 20))
    rng, median = np.random.default_rng(7), 2.0
    pipe = pipeline(mech)
    clips = []
    for rnd in range(1, 81):  # about M clients a round, norms log-normal around the median
        cohort = np.flatnonzero(rng.random(N) < M / N)
        norms = median * np.exp(rng.normal(0.0, 0.5, len(cohort)))
        play_round(
            pipe, rnd, {int(c): random_state(rng, n) for c, n in zip(cohort, norms, strict=True)}
        )
        clips.append(mech.current_clip)
    assert clips[0] < 0.1  # it starts far below the median ...
    assert abs(math.log(np.median(clips[-20:]) / median)) < 0.15  # ... and ends at it


def test_max_clip_caps_the_adaptive_clip_and_its_noise() -> None:
    """Every update far above C (all bits 0), heavy noise: unbounded, C and the noise std grow
    round after round; with max_clip both stop at the cap."""

    def clips(**bounds) -> tuple[list[float], list[float]]:
        mech = make(adaptive=True, clip=0.25, noise_multiplier=3.0, count_noise_std=2.0, **bounds)
        pipe, rng, out, noise = pipeline(mech), np.random.default_rng(3), [], []
        for rnd in range(1, 41):
            play_round(pipe, rnd, {c: random_state(rng, 50.0) for c in range(M)})
            out.append(mech.current_clip)
            noise.append(mech.metrics()["noise_std"])
        return out, noise

    free, free_noise = clips()
    capped, capped_noise = clips(max_clip=0.5)
    assert max(free) > 1.0 and free_noise[-1] > 2 * capped_noise[-1]
    assert max(capped) <= 0.5 and capped[-1] == 0.5
    first = next(i for i, c in enumerate(free) if c > 0.5)
    assert capped[:first] == free[:first]  # the same sequence until the cap binds


# -- checkpoint ----------------------------------------------------------------------------------
def test_a_resumed_mechanism_releases_the_same_aggregates_and_epsilon() -> None:
    def deltas(rnd: int) -> dict[int, State]:
        rng = np.random.default_rng(rnd)
        return {c: random_state(rng, float(rng.uniform(0.01, 1))) for c in range(rnd + 2)}

    full = make(adaptive=True, count_noise_std=2.0, clip=0.2)
    pipe = pipeline(full)
    want = [play_round(pipe, rnd, deltas(rnd))[0] for rnd in range(1, 5)]
    first = make(adaptive=True, count_noise_std=2.0, clip=0.2)
    for rnd in (1, 2):
        play_round(pipeline(first), rnd, deltas(rnd))
    saved = first.state_dict()
    resumed = make(adaptive=True, count_noise_std=2.0, clip=0.2)
    resumed.load_state_dict(saved)
    got = [play_round(pipeline(resumed), rnd, deltas(rnd))[0] for rnd in (3, 4)]
    for a, b in zip(want[2:], got, strict=True):
        np.testing.assert_array_equal(flat(a.mean), flat(b.mean))
    assert resumed.metrics()["epsilon"] == full.metrics()["epsilon"]
    assert resumed.current_clip == full.current_clip
    with pytest.raises(KeyError, match="expected keys"):
        resumed.load_state_dict({"accountant": saved["accountant"]})
    with pytest.raises(ValueError, match="noise_multiplier"):
        make(noise_multiplier=2.0, adaptive=True, count_noise_std=2.0).load_state_dict(saved)


def test_a_resumed_mechanism_keeps_its_clip_bounds() -> None:
    def deltas(rnd: int) -> dict[int, State]:
        rng = np.random.default_rng(rnd)
        return {c: random_state(rng, 5.0) for c in range(M)}  # all far above C: it grows

    bounded = {"adaptive": True, "count_noise_std": 2.0, "clip": 0.2, "max_clip": 0.3}
    full = make(**bounded)
    want = [play_round(pipeline(full), rnd, deltas(rnd))[0] for rnd in range(1, 9)]
    first = make(**bounded)
    for rnd in range(1, 5):
        play_round(pipeline(first), rnd, deltas(rnd))
    resumed = make(**bounded)
    resumed.load_state_dict(first.state_dict())
    got = [play_round(pipeline(resumed), rnd, deltas(rnd))[0] for rnd in range(5, 9)]
    for a, b in zip(want[4:], got, strict=True):
        np.testing.assert_array_equal(flat(a.mean), flat(b.mean))
    assert resumed.current_clip == full.current_clip == 0.3  # reached the cap, kept it
    with pytest.raises(ValueError, match=r"saved clip 0\.3 lies outside"):
        make(**{**bounded, "max_clip": 0.25}).load_state_dict(first.state_dict())


# -- configuration ---------------------------------------------------------------------------
DP = ["tracking=none", "privacy=dp_fedavg", "privacy.noise_multiplier=1.0"]
ADAPTIVE = ["privacy.adaptive=true", "privacy.count_noise_std=1.0"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mode=async", "algorithm=fedasync"], "privacy.name=dp_fedavg needs mode=sync"),
        (["algorithm=median"], "algorithm=median, which reads individual updates"),
        (["algorithm=krum"], "algorithm=krum, which reads individual updates"),
        (["algorithm=scaffold"], "algorithm=scaffold, whose clients send extra state"),
        (["selection=power_of_choice"], "cannot account selection=power_of_choice"),
        (["mode.max_norm_ratio=3"], "mode.max_norm_ratio=3.0"),
        (["mode.min_clients=2"], "mode.min_clients=2"),
        (["privacy.target_epsilon=1"], "set exactly one of privacy.noise_multiplier"),
        (["privacy.adaptive=true"], "privacy.count_noise_std=0.5 must exceed"),
        (["privacy.weighting=capped"], "privacy.weight_cap=0.0: set it > 0"),
        (["privacy.delta=2"], "privacy.delta=2.0 must be in (0, 1)"),
        (["privacy.clip=0"], "privacy.clip=0.0 must be a finite number > 0"),
        (["privacy.max_clip=1"], "privacy.max_clip=1.0 bounds the adaptive clip, but"),
        (["privacy.min_clip=0.01"], "privacy.min_clip=0.01 bounds the adaptive clip, but"),
        ([*ADAPTIVE, "privacy.max_clip=0"], "privacy.max_clip=0.0 must be a finite number > 0"),
        ([*ADAPTIVE, "privacy.min_clip=-1"], "privacy.min_clip=-1.0 must be a finite number"),
        (
            [*ADAPTIVE, "privacy.min_clip=0.5", "privacy.max_clip=0.2"],
            "privacy.min_clip=0.5 must be <= max_clip=0.2",
        ),
        ([*ADAPTIVE, "privacy.max_clip=0.05"], "privacy.clip=0.1, the adaptive clip's start, must"),
        ([*ADAPTIVE, "privacy.min_clip=0.2"], "privacy.clip=0.1, the adaptive clip's start, must"),
    ],
)
def test_combinations_that_would_break_the_guarantee_are_refused_in_one_line(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_spec(compose([*DP, *overrides]))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["selection=poisson"],
        ["algorithm=fedadam"],
        ["algorithm=fedprox"],
        ["compression=int8"],
        ADAPTIVE,
        [*ADAPTIVE, "privacy.max_clip=1.0"],
        [*ADAPTIVE, "privacy.min_clip=0.01", "privacy.max_clip=0.1"],
        ["privacy.weighting=capped", "privacy.weight_cap=8"],
    ],
)
def test_combinations_that_keep_the_guarantee_are_accepted(overrides: list[str]) -> None:
    spec = build_spec(compose([*DP, *overrides]))
    assert spec.privacy.name == "dp_fedavg"
