"""Configs of the non-text tasks: a sweep over them composes and validates before Ray starts,
and the process that runs them never imports torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedray.app.cli import compose, precheck, sweep_combinations
from fedray.app.spec import build_spec
from fedray.core.errors import ConfigError


def test_a_sweep_over_the_task_data_composes_and_validates_before_ray(tmp_path, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("validating a sweep started Ray")

    monkeypatch.setattr(ray, "init", no_ray)  # another test's session may hold a Ray already
    monkeypatch.chdir(tmp_path)
    argv = ["-m", "data=digits,synthetic,movielens", "tracking=none"]
    precheck(argv)  # raises on the first combination that does not validate
    specs = [build_spec(compose(c)) for c in sweep_combinations(argv[1:])]
    picked = {(s.data.task, s.model.architecture.name, s.partition.name) for s in specs}
    assert picked == {
        ("image_classification", "vit", "dirichlet"),
        ("vector_classification", "logreg", "natural"),
        ("recommendation", "mf", "natural"),
    }


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data=digits", "model=minilm_lora"], "data.task=image_classification trains one of kind"),
        (["data=movielens", "model=vit"], r"pick a model whose arch builds it \(mf, ncf\)"),
        (["data=synthetic", "model.arch.in_features=0"], "in_features=0 must be >= 1"),
        (["data=digits", "model.finetune=lora"], "set model.finetune=full"),
        (["experiment=synthetic", "algorithm=fednova", "client.optimizer=adamw"], "sgd"),
        (["speed.stragglers=2"], "speed.stragglers=2.0 must be in"),
        (["client.optimizer=lion"], "client.optimizer='lion' is unknown"),
        (["client.embedding_rows=rows"], "client.embedding_rows='rows' is unknown"),
        (
            ["experiment=movielens", "client.embedding_rows=lookups", "privacy=secagg"],
            "cannot run with privacy=secagg",
        ),
        (
            ["experiment=movielens", "client.embedding_rows=lookups", "algorithm=median"],
            "needs the synchronous weighted mean; algorithm=median",
        ),
        (
            [
                "experiment=movielens",
                "client.embedding_rows=lookups",
                "mode=async",
                "algorithm=fedbuff",
            ],
            "needs the synchronous weighted mean",
        ),
        (["selection=power_of_choice", "selection.weights=size"], "weights='size' is unknown"),
    ],
)
def test_bad_task_configs_are_one_line_errors_before_anything_starts(overrides, match) -> None:
    with pytest.raises(ConfigError, match=match):
        build_spec(compose([*overrides, "tracking=none"]))


@pytest.mark.parametrize("data", ["digits", "synthetic", "movielens"])
def test_preparing_a_task_run_imports_no_torch(data: str) -> None:
    code = (
        "import sys\n"
        "from fedray.app.cli import compose\n"
        "from fedray.app.run import prepare_data\n"
        "from fedray.core import registry\n"
        f"spec, data = prepare_data(compose(['data={data}', 'tracking=none']))\n"
        "task = registry.build('task', {'name': spec.data.task})\n"
        "task.metrics({'count': 1})\n"
        "import fedray.server.driver\n"
        "print(data.num_clients(), sorted(m for m in ('torch', 'transformers', 'peft') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].endswith("[]")
