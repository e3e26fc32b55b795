"""Byzantine attacks: a seeded attacker set and hand-checked corruptions of a tiny delta."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.client.attack import Attack, attackers, check, corrupt

GLOBAL = {"w": np.array([1.0, 1.0, 1.0], np.float32)}
TRAINED = {"w": np.array([2.0, 3.0, 0.5], np.float32)}  # delta [1, 2, -0.5]


def _cfg(kind: str, **over: object):
    from fedray.client.attack import attack_config

    return attack_config({"kind": kind, **over})


def test_attackers_are_a_seeded_fraction_of_the_clients() -> None:
    ids = attackers(_cfg("scale", fraction=0.2), 24, run_seed=0)
    assert len(ids) == 5 and ids <= set(range(24))  # round(0.2 * 24)
    assert attackers(_cfg("scale", fraction=0.2), 24, run_seed=0) == ids
    assert attackers(_cfg("scale", fraction=0.2, seed=5), 24, run_seed=0) != ids
    assert attackers(_cfg("none"), 24, run_seed=0) == frozenset()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("sign_flip", [0.0, -1.0, 1.5]),  # 1 - delta
        ("scale", [11.0, 21.0, -4.0]),  # 1 + 10 * delta
        ("none", [2.0, 3.0, 0.5]),
    ],
)
def test_attack_on_the_delta(kind: str, expected: list[float]) -> None:
    attack = Attack({"kind": kind, "fraction": 1.0}, num_clients=4, run_seed=0)
    out = attack.apply(TRAINED, GLOBAL, client_id=2, round=1)
    np.testing.assert_array_equal(out["w"], np.array(expected, np.float32))


def test_nan_and_gaussian_attacks() -> None:
    delta = {"w": np.ones(1000, np.float32)}
    assert np.isnan(corrupt(_cfg("nan"), delta, 0, 1, seed=0)["w"]).all()
    noise = corrupt(_cfg("gaussian", noise_std=0.5), delta, 3, 2, seed=0)["w"]
    assert noise.dtype == np.float32 and abs(float(noise.std()) - 0.5) < 0.05
    again = corrupt(_cfg("gaussian", noise_std=0.5), delta, 3, 2, seed=0)["w"]
    np.testing.assert_array_equal(noise, again)


def test_honest_clients_are_untouched() -> None:
    attack = Attack({"kind": "scale", "fraction": 0.25}, num_clients=4, run_seed=0)
    [bad] = attack.ids
    honest = next(c for c in range(4) if c != bad)
    assert attack.apply(TRAINED, GLOBAL, honest, 1) is TRAINED


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"kind": "poison"}, "attack.kind='poison'"),
        ({"kind": "scale", "fraction": 0.0}, "attack.fraction=0.0"),
        ({"kind": "gaussian", "noise_std": -1.0}, "attack.noise_std=-1.0"),
    ],
)
def test_check_names_the_problem(cfg: dict, message: str) -> None:
    assert message in (check(cfg) or "")
