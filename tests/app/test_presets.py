"""Every study preset in conf/experiment/ composes and validates in every combination of its
sweep, as `fedray -m experiment=NAME` would run it."""

from __future__ import annotations

import pytest

from fedray.app.cli import CONF_DIR, compose, sweep_space
from fedray.app.spec import build_spec

STUDIES = {  # preset -> the axes it must sweep
    "noniid": {"algorithm", "arm/noniid", "seed"},
    "robustness": {"arm/robustness", "attack", "seed"},
    "async": {"arm/async", "seed"},
    "compression": {"compression", "algorithm", "partition.alpha", "seed"},
    "privacy": {"arm/privacy", "algorithm", "seed"},
}


def test_every_study_preset_is_listed() -> None:
    presets = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
    recipes = {"w1", "w2", "w3", "digits", "synthetic", "movielens", "movielens_central"}
    assert presets - recipes == set(STUDIES)


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_study_preset_every_combination_validates(name: str) -> None:
    space = sweep_space([f"experiment={name}"])
    assert set(space.axes) == STUDIES[name]
    combos = space.check_combinations()
    assert len(combos) == space.size > 1
    names = set()
    for combo in combos:
        spec = build_spec(compose(combo))
        assert spec.tracking.experiment == name
        names.add((spec.algorithm.name, spec.partition.name, spec.mode.name, spec.seed))
    assert len({s for *_, s in names}) >= 2  # the seeds really vary


def test_command_line_narrows_a_preset_axis() -> None:
    space = sweep_space(["experiment=noniid", "seed=0", "algorithm=fedavg,scaffold"])
    assert "seed" not in space.axes and space.axes["algorithm"].values == ("fedavg", "scaffold")
    assert space.size == 2 * 3
