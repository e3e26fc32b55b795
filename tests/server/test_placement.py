"""Placement: a silo's clients go to its own actor slots; without silos nothing changes."""

from __future__ import annotations

from fedray.client.silo import ActorGroup
from fedray.server.placement import Placement


def _silos() -> Placement:
    groups = [
        ActorGroup("a", [], 0, 3, actors=2, labels={"silo": "a"}),
        ActorGroup("b", [], 3, 4, actors=1, labels={"silo": "b"}),
    ]
    return Placement(groups, [2, 1])


def test_without_silos_the_cohort_is_dealt_over_all_actors_as_before() -> None:
    p = Placement([ActorGroup("all", [], 0, 20)], [3])
    assert not p.routed
    cohort = [7, 2, 11, 4, 9]
    assert p.assign(cohort) == {cid: i % 3 for i, cid in enumerate(cohort)}  # PoolIO's old deal
    assert p.slot_for(7) is None
    assert [p.shard_of(s) for s in range(3)] == [(0, 3), (1, 3), (2, 3)]


def test_silo_clients_go_only_to_their_silos_slots() -> None:
    p = _silos()
    assert p.routed
    assert p.assign([0, 3, 1, 4, 2, 6]) == {0: 0, 1: 1, 2: 0, 3: 2, 4: 2, 6: 2}
    assert [p.slot_for(c) for c in range(7)] == [0, 1, 0, 2, 2, 2, 2]
    assert [p.shard_of(s) for s in range(3)] == [(0, 2), (1, 2), (0, 1)]
