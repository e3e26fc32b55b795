"""Power-of-choice selection: stale losses (the observe hook) and fresh ones (a probe)."""

from __future__ import annotations

import pytest

from fedray.core import registry
from fedray.core.errors import ConfigError


def _pow(sizes: list[int], d: int, seed: int = 0):
    return registry.build(
        "selection",
        {"name": "power_of_choice", "d": d},
        num_clients=len(sizes),
        seed=seed,
        client_sizes=sizes,
    )


def test_picks_highest_last_loss_and_unseen_first() -> None:
    s = _pow([10, 10, 10, 10], d=4)  # d = N: every client is a candidate
    assert s.select(1, 2) == [0, 1]  # all unseen: ties go to the lower id
    s.observe(1, {0: 0.5, 1: 2.0, 2: 1.0})
    assert s.select(2, 2) == [1, 3]  # 3 is unseen (infinite), then 1 (2.0)
    s.observe(2, {1: 0.1, 3: 0.2})
    assert s.select(3, 2) == [0, 2]  # losses now 0.5, 0.1, 1.0, 0.2


def test_candidates_follow_data_size() -> None:
    s = _pow([0, 5, 0, 5], d=2)  # clients without data are never candidates
    for r in range(5):
        assert s.select(r, 2) == [1, 3]
    big = _pow([1] + [1000] * 3, d=3, seed=1)
    counts = sum(0 in big.candidates() for _ in range(200))
    assert counts < 10  # weight 1 against 1000: a candidate ~0.1% of draws per slot


def test_seeded_and_resumable() -> None:
    a, b = _pow(list(range(1, 21)), d=8, seed=3), _pow(list(range(1, 21)), d=8, seed=3)
    assert [a.select(r, 4) for r in range(3)] == [b.select(r, 4) for r in range(3)]
    a.observe(3, {5: 1.0, 6: 3.0})
    saved = a.state_dict()
    expected = [a.select(r, 4) for r in (4, 5)]
    c = _pow(list(range(1, 21)), d=8, seed=99)
    c.load_state_dict(saved)
    assert [c.select(r, 4) for r in (4, 5)] == expected


def test_rejects_d_below_k_or_above_n() -> None:
    from types import SimpleNamespace

    options = registry.parse("selection", {"name": "power_of_choice", "d": 2})
    spec = SimpleNamespace(mode=SimpleNamespace(clients_per_round=3))
    assert "d=2 is below mode.clients_per_round=3" in options.check_against(spec)
    with pytest.raises(ValueError, match="exceeds the 2 clients"):
        _pow([1, 1], d=3)


def test_uniform_accepts_and_ignores_observations() -> None:
    a = registry.build("selection", {"name": "uniform"}, num_clients=20, seed=0, client_sizes=None)
    b = registry.build("selection", {"name": "uniform"}, num_clients=20, seed=0)
    a.observe(1, {3: 9.0})
    assert a.select(1, 5) == b.select(1, 5) == [1, 8, 12, 13, 15]


def test_fresh_losses_rank_the_candidates_the_protocol_probed() -> None:
    s = registry.build(
        "selection",
        {"name": "power_of_choice", "d": 4, "loss": "fresh"},
        num_clients=4,
        seed=0,
        client_sizes=[5, 5, 5, 5],
    )
    assert s.probes
    with pytest.raises(RuntimeError, match="loss=fresh"):
        s.select(1, 2)
    candidates = s.candidates()
    assert sorted(candidates) == [0, 1, 2, 3]
    assert s.choose(candidates, {0: 0.1, 1: 0.9, 2: 0.5, 3: 0.9}, 2) == [1, 3]
    assert s.choose(candidates, {0: 0.1, 1: 0.9, 3: 0.2}, 2) == [1, 2]  # 2 did not answer


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"mode": "async"}, "needs mode=sync"),
        ({"privacy": "dp_fedavg"}, "privacy=dp_fedavg does not account for"),
        ({"algorithm": "fedper"}, "algorithm=fedper's clients train a different one"),
    ],
)
def test_fresh_losses_refuse_what_they_cannot_serve(changes: dict, match: str) -> None:
    from types import SimpleNamespace

    names = {"mode": "sync", "privacy": "none", "algorithm": "fedavg", **changes}
    spec = SimpleNamespace(
        mode=SimpleNamespace(clients_per_round=2, name=names["mode"]),
        privacy=SimpleNamespace(name=names["privacy"]),
        algorithm=SimpleNamespace(name=names["algorithm"]),
    )
    fresh = registry.parse("selection", {"name": "power_of_choice", "d": 4, "loss": "fresh"})
    assert match in fresh.check_against(spec)
    stale = registry.parse("selection", {"name": "power_of_choice", "d": 4})
    assert stale.check_against(spec) is None
    with pytest.raises(ConfigError, match="loss='recent' is unknown"):
        registry.parse("selection", {"name": "power_of_choice", "loss": "recent"})
