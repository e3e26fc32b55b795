"""Median, trimmed mean, Krum and Multi-Krum on tiny tensors checked by hand."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedray.core import registry
from fedray.core.errors import ConfigError
from fedray.core.types import Contribution
from fedray.strategies import robust
from fedray.strategies.robust import krum_scores

CONF = Path(__file__).resolve().parents[2] / "conf" / "algorithm"
NODES = [
    {"name": "median"},
    {"name": "trimmed_mean", "beta": 0.2},
    {"name": "krum", "f": 1},
    {"name": "multikrum", "f": 1},
    {"name": "multikrum", "f": 1, "m": 2},
]


def _ro(values: object) -> np.ndarray:
    """A read-only float32 array: any in-place write by a strategy raises."""
    arr = np.array(values, np.float32)
    arr.setflags(write=False)
    return arr


def _contribs(values: list[list[float]], samples: list[int] | None = None) -> list[Contribution]:
    """One contribution per row of `values` (key "w"); client ids 10, 11, ..."""
    samples = samples or [1] * len(values)
    return [
        Contribution(10 + i, {"w": _ro(v)}, n)
        for i, (v, n) in enumerate(zip(values, samples, strict=True))
    ]


def _agg(node: dict, values: list[list[float]], samples: list[int] | None = None) -> np.ndarray:
    strategy = registry.build("algorithm", node)
    return strategy.aggregate({"w": _ro(np.ones(len(values[0])))}, _contribs(values, samples))["w"]


# --- median -----------------------------------------------------------------------------------


def test_median_odd_count_ignores_sample_counts() -> None:
    values = [[1, 10, -1], [2, -5, 0], [100, 0, 3]]
    # per coordinate: median(1, 2, 100) = 2, median(10, -5, 0) = 0, median(-1, 0, 3) = 0; +1
    expected = [3, 1, 1]
    np.testing.assert_array_equal(_agg({"name": "median"}, values), expected)
    np.testing.assert_array_equal(_agg({"name": "median"}, values, [1, 1, 10**6]), expected)


def test_median_even_count_averages_the_middle_two() -> None:
    # median(1, 2, 4, 100) = 3, median(-8, 0, 1, 1) = 0.5; +1
    np.testing.assert_array_equal(
        _agg({"name": "median"}, [[1, -8], [100, 1], [2, 0], [4, 1]]), [4, 1.5]
    )


def test_median_keeps_shapes_and_keys() -> None:
    g = {"w": _ro(np.zeros((2, 2))), "b": _ro([5])}
    c = [Contribution(i, {"w": _ro(np.full((2, 2), i)), "b": _ro([-i])}, 1) for i in range(3)]
    new = registry.build("algorithm", {"name": "median"}).aggregate(g, c)
    np.testing.assert_array_equal(new["w"], np.ones((2, 2)))
    np.testing.assert_array_equal(new["b"], [4])
    assert new["w"].dtype == new["b"].dtype == np.float32


# --- trimmed mean -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("beta", "expected"),
    [
        (0.25, [1 + 2.5, 1 + 0.5]),  # n=4 cuts 1 per end: mean(2, 3), mean(0, 1)
        (0.2, [1 + 26.5, 1 - 1.5]),  # floor(0.8) = 0: plain mean of (1, 2, 3, 100), (-8, 0, 1, 1)
        (0.0, [1 + 26.5, 1 - 1.5]),
    ],
)
def test_trimmed_mean(beta: float, expected: list[float]) -> None:
    values = [[1, -8], [100, 1], [2, 0], [3, 1]]
    out = _agg({"name": "trimmed_mean", "beta": beta}, values, [1, 9, 1, 9])
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_trimmed_mean_cut_is_exact_floor() -> None:
    # 0.29 * 100 == 28.999999999999996 in floats; the cut must still be 29 per end.
    rng = np.random.default_rng(0)
    columns = np.stack([rng.permutation(100) ** 2 for _ in range(3)], axis=1).astype(np.float32)
    out = _agg({"name": "trimmed_mean", "beta": 0.29}, columns.tolist())
    expected = 1 + sum(i * i for i in range(29, 71)) / 42
    np.testing.assert_allclose(out, [expected] * 3, rtol=1e-6)


# --- Krum / Multi-Krum ------------------------------------------------------------------------

POINTS = [[0.0], [1.0], [2.5], [3.0], [100.0]]
# squared distances to the n - f - 2 = 2 nearest others (f=1):
#   0: 1 + 6.25 | 1: 1 + 2.25 | 2.5: 0.25 + 2.25 | 3: 0.25 + 4 | 100: 97² + 97.5²
SCORES = [7.25, 3.25, 2.5, 4.25, 9409 + 9506.25]


def test_krum_scores_by_hand() -> None:
    deltas = [{"w": _ro(p)} for p in POINTS]
    np.testing.assert_allclose(krum_scores(deltas, {"w": _ro([0])}, f=1), SCORES, rtol=1e-9)


def test_krum_scores_survive_a_large_common_offset() -> None:
    # POINTS along a random direction, on top of an offset of squared norm ~3e12 shared by all:
    # uncentred, even a float64 Gram matrix would lose ~1e-3 of the distances (~1).
    rng = np.random.default_rng(0)
    offset, direction = rng.uniform(-1e5, 1e5, 1000), rng.standard_normal(1000)
    rows = [
        (offset + p[0] * direction / np.linalg.norm(direction)).astype(np.float32) for p in POINTS
    ]
    exact = [[np.sum((a.astype(np.float64) - b) ** 2) for b in rows] for a in rows]  # direct
    expected = [sum(sorted(d[:i] + d[i + 1 :])[:2]) for i, d in enumerate(exact)]
    deltas = [{"w": _ro(r)} for r in rows]
    scores = krum_scores(deltas, {"w": _ro(offset)}, f=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-9)
    np.testing.assert_allclose(scores, SCORES, rtol=1e-2)  # float32 rounding of the rows


def test_krum_scores_of_honest_updates_survive_a_far_outlier() -> None:
    # The outlier drags the mean to ~2e4: honest squared norms ~4e8 after centring.
    deltas = [{"w": _ro(p)} for p in [*POINTS[:4], [1e5]]]
    far = (1e5 - 3) ** 2 + (1e5 - 2.5) ** 2
    np.testing.assert_allclose(
        krum_scores(deltas, {"w": _ro([0])}, f=1), [*SCORES[:4], far], rtol=1e-7
    )


def test_krum_scores_do_not_depend_on_how_keys_split_the_vector() -> None:
    rng = np.random.default_rng(3)
    flat = rng.standard_normal((6, 10)).astype(np.float32)
    whole = [{"w": _ro(x)} for x in flat]
    split = [{"a": _ro(x[:3]), "b": _ro(x[3:].reshape(7, 1))} for x in flat]
    ref_whole, ref_split = (
        {"w": _ro(np.zeros(10))},
        {"a": _ro(np.zeros(3)), "b": _ro(np.zeros((7, 1)))},
    )
    np.testing.assert_allclose(
        krum_scores(split, ref_split, 1), krum_scores(whole, ref_whole, 1), rtol=1e-5
    )


@pytest.mark.parametrize(
    ("node", "expected", "chosen"),
    [
        ({"name": "krum", "f": 1}, 1 + 2.5, [12]),
        ({"name": "multikrum", "f": 1, "m": 1}, 1 + 2.5, [12]),
        ({"name": "multikrum", "f": 1, "m": 3}, 1 + (2.5 + 1 + 3) / 3, [12, 11, 13]),
        ({"name": "multikrum", "f": 1}, 1 + (2.5 + 1 + 3 + 0) / 4, [12, 11, 13, 10]),  # m=n-f
    ],
)
def test_krum_and_multikrum_pick_by_hand(node: dict, expected: float, chosen: list[int]) -> None:
    strategy = registry.build("algorithm", node)
    # the outlier claims a huge sample count: Krum must not care
    new = strategy.aggregate({"w": _ro([1])}, _contribs(POINTS, [1, 1, 1, 1, 10**6]))
    np.testing.assert_allclose(new["w"], [expected], rtol=1e-6)
    assert strategy.last_selected == chosen


def test_krum_needs_2f_plus_3_updates() -> None:
    strategy = registry.build("algorithm", {"name": "krum", "f": 1})
    with pytest.raises(ValueError, match=r"f=1 needs n >= 2f \+ 3 = 5 updates, got 4"):
        strategy.aggregate({"w": _ro([0])}, _contribs(POINTS[:4]))
    zero = registry.build("algorithm", {"name": "krum", "f": 0})
    # n=3, f=0: 0 and 1 tie (score 1 each); the earlier update wins
    np.testing.assert_array_equal(zero.aggregate({"w": _ro([0])}, _contribs(POINTS[:3]))["w"], [0])
    assert zero.last_selected == [10]


def test_ties_go_to_the_earliest_updates() -> None:
    values = [[1.0, 2.0]] * 40  # identical updates: every score is 0
    krum = registry.build("algorithm", {"name": "krum", "f": 2})
    krum.aggregate({"w": _ro([0, 0])}, _contribs(values))
    multi = registry.build("algorithm", {"name": "multikrum", "f": 2, "m": 4})
    multi.aggregate({"w": _ro([0, 0])}, _contribs(values))
    assert (krum.last_selected, multi.last_selected) == ([10], [10, 11, 12, 13])


def test_multikrum_m_larger_than_n_is_an_error() -> None:
    strategy = registry.build("algorithm", {"name": "multikrum", "f": 1, "m": 6})
    with pytest.raises(ValueError, match="m=6 exceeds the 5 updates"):
        strategy.aggregate({"w": _ro([0])}, _contribs(POINTS))


# --- shared properties ------------------------------------------------------------------------


def _round(seed: int, n: int = 7) -> tuple[dict, list[Contribution]]:
    rng = np.random.default_rng(seed)
    g = {"w": _ro(rng.standard_normal((5, 7))), "b": _ro(rng.standard_normal(3))}
    c = [
        Contribution(
            i,
            {
                k: _ro(10.0 ** rng.integers(-3, 3) * rng.standard_normal(a.shape))
                for k, a in g.items()
            },
            1,
        )
        for i in range(n)
    ]
    return g, c


@pytest.mark.parametrize("node", NODES, ids=lambda n: str(n))
def test_finite_deterministic_and_chunking_and_thread_invariant(
    node: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    g, c = _round(0)
    monkeypatch.setattr(robust, "reduction_threads", lambda: 1)
    a = registry.build("algorithm", node).aggregate(g, c)
    b = registry.build("algorithm", node).aggregate(g, c)
    monkeypatch.setattr(robust, "_CHUNK_ELEMS", 3 * len(c))  # 3 columns a chunk: splits keys
    chunked = {1: registry.build("algorithm", node).aggregate(g, c)}
    for threads in (2, 3, 8):  # 15 chunks dealt round-robin, each thread its own scratch block
        monkeypatch.setattr(robust, "reduction_threads", lambda t=threads: t)
        chunked[threads] = registry.build("algorithm", node).aggregate(g, c)
    for k in g:
        assert a[k].shape == g[k].shape and a[k].dtype == np.float32
        assert np.isfinite(a[k]).all()
        np.testing.assert_array_equal(a[k], b[k])
        for out in chunked.values():
            assert out[k].tobytes() == a[k].tobytes()


@pytest.mark.parametrize("node", NODES, ids=lambda n: str(n))
def test_state_dict_round_trip(node: dict) -> None:
    first = registry.build("algorithm", node)
    first.aggregate(*_round(1))
    second = registry.build("algorithm", node)
    second.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    a, b = first.aggregate(*_round(2)), second.aggregate(*_round(2))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(KeyError, match="expected keys"):
        second.load_state_dict({"m": 1})


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multikrum"])
def test_yaml_parses_to_defaults_and_needs_individual_updates(name: str) -> None:
    options = registry.parse("algorithm", OmegaConf.load(CONF / f"{name}.yaml"))
    assert options == type(options)()
    assert registry.entry("algorithm", name).factory.requires_individual_updates is True


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"name": "trimmed_mean", "beta": 0.6}, r"beta=0.6 must be in \[0, 0.5\)"),
        ({"name": "trimmed_mean", "beta": 0.5}, r"beta=0.5 must be in \[0, 0.5\)"),
        ({"name": "trimmed_mean", "beta": -0.1}, "beta=-0.1 must be in"),
        ({"name": "krum", "f": -1}, "f=-1 must be >= 0"),
        ({"name": "krum", "m": 2}, "m is not an option of algorithm=krum"),
        ({"name": "multikrum", "m": 0}, "m=0 must be >= 1 or null"),
        ({"name": "median", "beta": 0.1}, "beta is not an option of algorithm=median"),
    ],
)
def test_bad_options_are_config_errors(node: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.parse("algorithm", node)


def test_mismatched_update_is_a_clear_error() -> None:
    bad = [Contribution(0, {"w": _ro([1, 2])}, 1), Contribution(1, {"w": _ro([1, 2, 3])}, 1)]
    with pytest.raises(ValueError, match=r"update 1: key 'w' has shape \(3,\)"):
        registry.build("algorithm", {"name": "median"}).aggregate({"w": _ro([0, 0])}, bad)
