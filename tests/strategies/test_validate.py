"""split_valid: which client updates are usable, and a one-line reason for the others."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.core.types import Contribution
from fedray.core.validate import check_like, split_valid

REF = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def _delta(**over: object) -> dict:
    delta = {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)}
    delta.update(over)
    return {k: v for k, v in delta.items() if v is not None}


def _nan_at(shape: tuple[int, ...], value: float, count: int) -> np.ndarray:
    arr = np.ones(shape, np.float32)
    arr.flat[:count] = value
    return arr


@pytest.mark.parametrize(
    ("delta", "reason"),
    [
        (_delta(w=_nan_at((2, 3), np.nan, 2)), "key 'w': 2 of 6 values are NaN or Inf"),
        (_delta(b=_nan_at((3,), np.inf, 1)), "key 'b': 1 of 3 values are NaN or Inf"),
        (_delta(b=_nan_at((3,), -np.inf, 3)), "key 'b': 3 of 3 values are NaN or Inf"),
        (_delta(b=None), "missing key 'b'"),
        (_delta(w=None, b=None), "missing key 'b' (and 1 more)"),
        (_delta(extra=np.ones(1, np.float32)), "unexpected key 'extra'"),
        (_delta(w=np.ones((3, 2), np.float32)), "key 'w': shape (3, 2) but the global state"),
        (
            _delta(b=np.ones(3, np.float64)),
            "key 'b': dtype float64 but the global state has float32",
        ),
        (_delta(b=[1.0, 1.0, 1.0]), "key 'b': expected a numpy array, got list"),
    ],
)
def test_rejects_with_a_one_line_reason_naming_the_key(delta: dict, reason: str) -> None:
    good = Contribution(1, _delta(), 4)
    valid, rejected = split_valid([good, Contribution(7, delta, 4)], REF)
    assert valid == [good]
    assert len(rejected) == 1
    cid, text = rejected[0]
    assert cid == 7
    assert text.startswith(reason)
    assert "\n" not in text


def test_keeps_order_and_accepts_finite_extremes() -> None:
    big = np.finfo(np.float32).max
    # these sum to +inf in float32; the check must not mistake a large sum for an Inf value
    extremes = _delta(w=np.full((2, 3), big, np.float32), b=np.array([-big, 0, big], np.float32))
    contributions = [Contribution(cid, _delta(), 1) for cid in (5, 2)]
    contributions.insert(1, Contribution(9, extremes, 1))
    valid, rejected = split_valid(contributions, REF)
    assert [c.client_id for c in valid] == [5, 9, 2]
    assert rejected == []


def test_float64_states_are_checked_too() -> None:
    ref = {"w": np.zeros(2)}
    huge = np.finfo(np.float64).max
    valid, rejected = split_valid(
        [
            Contribution(0, {"w": np.array([huge, huge])}, 1),
            Contribution(1, {"w": np.array([0, np.nan])}, 1),
        ],
        ref,
    )
    assert [c.client_id for c in valid] == [0]
    assert rejected == [(1, "key 'w': 1 of 2 values are NaN or Inf")]


def test_inputs_are_not_modified() -> None:
    delta = _delta(w=_nan_at((2, 3), np.nan, 1))
    for arr in (*delta.values(), *REF.values()):
        arr.setflags(write=False)
    split_valid([Contribution(0, delta, 1)], REF)
    assert np.isnan(delta["w"]).sum() == 1


def test_check_like() -> None:
    check_like(_delta(), REF, "x")
    with pytest.raises(ValueError, match="x: keys differ from the global state"):
        check_like(_delta(b=None), REF, "x")
    with pytest.raises(ValueError, match=r"x: key 'b' has shape \(4,\)"):
        check_like(_delta(b=np.ones(4, np.float32)), REF, "x")


@pytest.mark.parametrize(
    ("algorithm", "options"),
    [
        ("fedavg", {}),
        ("fedavgm", {}),
        ("fedadam", {}),
        ("median", {}),
        ("trimmed_mean", {"beta": 0.2}),
        ("krum", {"f": 1}),
        ("multikrum", {"f": 1}),
    ],
)
def test_nan_updates_never_reach_the_global_state(algorithm: str, options: dict) -> None:
    """Screened as the driver does, 2 NaN/Inf updates among 7 leave every aggregator finite."""
    from fedray.core import registry
    from fedray.server.collect import screen

    rng = np.random.default_rng(0)
    honest = [
        Contribution(
            i, {"w": rng.normal(size=(2, 3)).astype(np.float32), "b": np.ones(3, np.float32)}, 1
        )
        for i in range(5)
    ]
    bad = [
        Contribution(5, {"w": np.full((2, 3), np.nan, np.float32), "b": np.ones(3, np.float32)}, 1),
        Contribution(6, {"w": np.ones((2, 3), np.float32), "b": _nan_at((3,), np.inf, 1)}, 1),
    ]
    kept, rejected = screen([*honest[:3], *bad, *honest[3:]], REF, max_norm_ratio=0.0)
    assert [f.client_id for f in rejected] == [5, 6] and len(kept) == 5
    strategy = registry.build("algorithm", {"name": algorithm, **options})
    out = strategy.aggregate(REF, kept)
    assert all(np.isfinite(v).all() for v in out.values())
