"""Simulated stragglers (speed.stragglers): who straggles, how much work they do, and whether
their partial update is kept or dropped."""

from __future__ import annotations

import pytest

from fedray.client.speed import SpeedConfig, Straggled, Work, check_speed
from fedray.client.trainer import Recipe
from fedray.core import registry

COHORT = tuple(range(3, 23, 2))  # 10 clients
FULL = Recipe(epochs=20, batch_size=10, lr=0.01, weight_decay=0.0, optimizer="sgd")


def _work(share: float, keep: bool = True, seed: int = 0) -> Work:
    mode = "keep" if keep else "drop"
    return Work.of(SpeedConfig(stragglers=share, partial_work=mode), seed, "fedavg", False)


@pytest.mark.parametrize(("share", "count"), [(0.0, 0), (0.5, 5), (0.9, 9), (0.25, 3), (1.0, 10)])
def test_exactly_the_rounded_share_of_each_cohort_straggles(share: float, count: int) -> None:
    work = _work(share)
    for rnd in range(1, 6):
        assert sum(work.straggles(rnd, c, COHORT) for c in COHORT) == count
    if 0 < count < 10:
        rounds = [frozenset(c for c in COHORT if work.straggles(r, c, COHORT)) for r in range(8)]
        assert len(set(rounds)) > 1  # drawn afresh every round
        again = [frozenset(c for c in COHORT if work.straggles(r, c, COHORT)) for r in range(8)]
        assert rounds == again  # ... from (seed, round)
        other = _work(share, seed=1)
        assert rounds != [
            frozenset(c for c in COHORT if other.straggles(r, c, COHORT)) for r in range(8)
        ]


def test_a_straggler_runs_fewer_epochs_uniformly() -> None:
    work = _work(1.0)
    epochs = [work.recipe(FULL, rnd, 5, COHORT, n=100).epochs for rnd in range(400)]
    assert min(epochs) == 1 and max(epochs) == 19  # 1..E-1: strictly less than E
    assert 8 < sum(epochs) / len(epochs) < 12  # uniform: mean about 10
    assert all(work.recipe(FULL, r, 5, COHORT, n=100).max_steps == 0 for r in range(5))


def test_with_one_epoch_a_straggler_runs_fewer_steps() -> None:
    one = Recipe(epochs=1, batch_size=10, lr=0.01, weight_decay=0.0, max_steps=6)
    steps = {_work(1.0).recipe(one, rnd, 5, COHORT, n=100).max_steps for rnd in range(200)}
    assert steps == {1, 2, 3, 4, 5}  # of min(ceil(100 / 10), 6) = 6 steps
    assert _work(1.0).recipe(one, 1, 5, COHORT, n=8) is one  # one step: nothing smaller


def test_non_stragglers_keep_the_recipe_and_dropped_ones_raise() -> None:
    keep, drop = _work(0.5, keep=True), _work(0.5, keep=False)
    slow = [c for c in COHORT if keep.straggles(3, c, COHORT)]
    fast = [c for c in COHORT if not keep.straggles(3, c, COHORT)]
    assert all(keep.recipe(FULL, 3, c, COHORT, 100) is FULL for c in fast)
    assert all(keep.recipe(FULL, 3, c, COHORT, 100).epochs < 20 for c in slow)
    with pytest.raises(Straggled, match=r"straggled \(\d+ of 20 local epochs\).*drops partial"):
        drop.recipe(FULL, 3, slow[0], COHORT, 100)
    assert drop.recipe(FULL, 3, fast[0], COHORT, 100) is FULL


def test_async_jobs_straggle_independently_with_the_share() -> None:
    work = _work(0.3)
    hits = sum(work.straggles(rnd, c, ()) for rnd in range(100) for c in range(20))
    assert 500 < hits < 700  # 2000 jobs x 0.3


@pytest.mark.parametrize(
    ("algorithm", "keeps"),
    [
        ("fedavg", False),
        ("scaffold", False),
        ("fedadam", False),
        ("fedprox", True),
        ("fednova", True),
    ],
)
def test_auto_follows_the_algorithm(algorithm: str, keeps: bool) -> None:
    factory = registry.entry("algorithm", algorithm).factory
    work = Work.of(SpeedConfig(stragglers=1.0), 0, algorithm, factory.keeps_partial_work)
    assert work.keep is keeps
    forced = Work.of(SpeedConfig(stragglers=1.0, partial_work="drop"), 0, algorithm, True)
    assert not forced.keep and forced.policy == "speed.partial_work=drop"


def test_check_speed_names_the_bad_work_option() -> None:
    assert "speed.stragglers" in (check_speed(SpeedConfig(stragglers=1.5)) or "")
    assert "speed.partial_work" in (check_speed(SpeedConfig(partial_work="some")) or "")
