"""Client selection and per-client seeds."""

from __future__ import annotations

import pytest

from fedray.core import registry
from fedray.core.seeding import client_seed


def _sampler(n: int, seed: int = 0):
    return registry.build("selection", {"name": "uniform"}, num_clients=n, seed=seed)


def test_uniform_reproduces_the_w1_schedule() -> None:
    s = _sampler(20)
    got = [s.select(r, 5) for r in range(1, 6)]
    assert got == [
        [1, 8, 12, 13, 15],
        [6, 9, 11, 12, 15],
        [3, 4, 9, 16, 18],
        [4, 8, 9, 17, 19],
        [2, 3, 10, 15, 19],
    ]


def test_uniform_state_dict_resumes_the_stream() -> None:
    a = _sampler(100, seed=7)
    a.select(1, 10)
    saved = a.state_dict()
    expected = [a.select(r, 10) for r in (2, 3)]
    b = _sampler(100, seed=7)
    b.load_state_dict(saved)
    assert [b.select(r, 10) for r in (2, 3)] == expected


def test_uniform_rejects_too_many() -> None:
    with pytest.raises(ValueError):
        _sampler(3).select(1, 4)


def test_client_seed_schemes() -> None:
    assert client_seed(0, 2, 7) == 2007
    assert client_seed(1, 2, 7, stride=10_000) == 1_020_007
    with pytest.raises(ValueError, match="round_stride"):
        client_seed(0, 1, 1000)
    hashed = {client_seed(0, r, c, "hash") for r in range(1, 11) for c in range(2000)}
    assert len(hashed) == 20_000
