"""Every algorithm of every study in experiments/noniid/run.py composes and validates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fedray.app.cli import compose
from fedray.app.spec import build_spec

RUN = Path(__file__).resolve().parents[1] / "experiments" / "noniid" / "run.py"


def _studies() -> dict:
    spec = importlib.util.spec_from_file_location("noniid_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.STUDIES


STUDIES = _studies()


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_each_algorithm_of_a_study_validates_in_its_first_setting(name: str) -> None:
    study = STUDIES[name]
    setting = next(iter(study.settings))
    for algorithm, overrides in study.algorithms.items():
        if study.skip(setting, algorithm) is not None:
            continue
        cfg = compose([*study.base, *study.settings[setting], *overrides, "seed=1"])
        build_spec(cfg)  # raises ConfigError with the key on a bad combination
