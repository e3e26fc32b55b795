"""`selection=poisson`: independent coins per client and round, seeded by (seed, round)."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.core import registry
from fedray.server.protocol import RoundProtocol
from fedray.server.selection import PoissonSampler, PowerOfChoice, UniformSampler


def sampler(n: int, seed: int = 0) -> PoissonSampler:
    return registry.build("selection", {"name": "poisson"}, num_clients=n, seed=seed)


def test_each_client_joins_with_rate_k_over_n_and_the_size_varies() -> None:
    s = sampler(100)
    cohorts = [s.select(r, 10) for r in range(1, 3001)]
    sizes = np.array([len(c) for c in cohorts])
    assert abs(sizes.mean() - 10) < 0.2  # binomial(100, 0.1): mean 10, std 3
    assert 2.6 < sizes.std() < 3.4 and sizes.min() < 5 and sizes.max() > 15
    joins = np.bincount(np.concatenate(cohorts), minlength=100) / 3000
    assert np.all(np.abs(joins - 0.1) < 0.025)  # each client's own rate
    assert all(c == sorted(set(c)) for c in cohorts)  # sorted, no repeats


def test_a_cohort_is_a_function_of_seed_and_round_alone() -> None:
    a, b = sampler(50, seed=3), sampler(50, seed=3)
    forward = [a.select(r, 5) for r in range(1, 11)]
    backward = [b.select(r, 5) for r in reversed(range(1, 11))][::-1]
    assert forward == backward  # nothing carried from round to round ...
    assert sampler(50, seed=4).select(1, 5) != forward[0] or forward[1] != sampler(
        50, seed=4
    ).select(2, 5)
    resumed = sampler(50, seed=3)
    resumed.load_state_dict(a.state_dict())  # ... so a checkpoint holds nothing
    assert a.state_dict() == {} and resumed.select(7, 5) == forward[6]
    with pytest.raises(KeyError, match="expected keys"):
        resumed.load_state_dict({"rng": 1})


def test_cohorts_can_be_empty_and_the_rate_is_checked() -> None:
    s = sampler(8, seed=2)
    assert s.select(2, 2) == []  # (1 - 1/4)^8 = 10% of rounds draw nobody
    with pytest.raises(ValueError, match=r"lower mode\.clients_per_round"):
        s.select(1, 9)


def test_samplings_tell_the_accountant_how_cohorts_are_drawn() -> None:
    assert PoissonSampler.sampling == "poisson" and UniformSampler.sampling == "fixed"
    assert PowerOfChoice.sampling == "by_loss"  # fixed size, but chosen by loss: not uniform


def test_commit_keeps_the_privacy_state_of_an_update_that_was_not_used() -> None:
    from fedray.core.types import Update

    class Selector:
        def observe(self, rnd: int, losses: dict[int, float]) -> None:
            self.losses = losses

    states = {1: {"rule": "old-1", "privacy": "spent-0"}, 2: {"rule": "old-2"}}
    placement = object()  # the commit stage never routes
    protocol = RoundProtocol(None, None, None, Selector(), None, None, None, states, placement)  # type: ignore[arg-type]
    accepted = Update(1, 4, b"", 0, client_state={"rule": "new-1", "privacy": "spent-1"})
    rejected = Update(2, 4, b"", 0, client_state={"rule": "new-2", "privacy": "spent-2"})
    protocol.commit(1, [accepted], arrived=[accepted, rejected])
    assert states[1] == {"rule": "new-1", "privacy": "spent-1"}
    assert states[2] == {"rule": "old-2", "privacy": "spent-2"}  # only what it spent is kept
