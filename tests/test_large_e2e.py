"""Large-model features end to end through Ray (tiny BERT): the shared frozen base, exact and
heterogeneous LoRA aggregation, FedDF with two architectures in one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedray.app.cli import compose
from fedray.app.run import run_experiment
from fedray.models import save_tiny_classifier

SMALL = [
    "partition=iid",
    "partition.num_clients=6",
    "partition.max_samples_per_client=16",
    "mode.rounds=2",
    "mode.clients_per_round=4",
    "mode.eval_every=1",
    "data.max_test=64",
    "data.max_length=24",
    "client.lr=3e-3",
    "tracking=none",
    "model.lora.target_modules=[query,value]",
    "model.lora.layers=null",
    "model.lora.modules_to_save=[classifier]",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny-bert"))


def _run(tmp_path: Path, tiny: str, *overrides: str):
    cfg = compose([*SMALL, f"model.name_or_path={tiny}", *overrides])
    return run_experiment(cfg, tmp_path / "run", cwd=tmp_path, out=None)


def test_two_actors_on_one_shared_base_compute_what_own_copies_compute(
    ray_cluster, tmp_path: Path, tiny: str
) -> None:
    two = ["client.num_cpus=1", "client.num_actors=2"]
    shared = _run(tmp_path / "a", tiny, *two)
    own = _run(tmp_path / "b", tiny, *two, "model.shared_base=false")
    assert [a["base"] for a in shared.ready.actors] == ["shared", "shared"]
    assert [a["base"] for a in own.ready.actors] == ["own", "own"]
    # Every frozen tensor of both actors' models (the one that trains and evaluates), the
    # loader's included, lies in the object store's copy: no actor keeps a private one.
    for a in shared.ready.actors:
        assert a["base_bytes"] > 0 and a["base_shared_bytes"] == a["base_bytes"]
    assert all(a["base_bytes"] > 0 and a["base_shared_bytes"] == 0 for a in own.ready.actors)
    assert shared.fingerprint == own.fingerprint
    keys = ("train_loss", "eval_accuracy", "eval_loss")
    assert [[r[k] for k in keys] for r in shared.history] == [
        [r[k] for k in keys] for r in own.history
    ]


def test_feddf_runs_two_architectures_and_logs_the_distillation(
    ray_cluster, tmp_path: Path, tiny: str
) -> None:
    result = _run(
        tmp_path,
        tiny,
        "client.num_cpus=2",
        "algorithm=feddf",
        "algorithm.public_size=24",
        "algorithm.steps=2",
        "compression=trim",
        "model.groups=[{share:0.5},{share:0.5,num_layers:1,layers:[0]}]",
    )
    # one 2-CPU actor: nothing to share, so no object-store copy beside the actor's own
    assert [a["base"] for a in result.ready.actors] == ["own"]
    for row in result.history:
        assert row["clients_ok"] == 4 and row["distill_teacher_passes"] == 4 * 24
        assert row["distill_steps"] == 2 * 2  # steps x architectures
        assert row["distill_s"] > 0 and row["distill_bytes"] > 0
        assert 0 <= row["eval_accuracy"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [
        ("flora", []),
        ("ffa_lora", []),
        ("hetlora", ["model.groups=[{share:0.5,r:2,layers:[1]},{share:0.5,r:8}]"]),
    ],
)
def test_exact_and_heterogeneous_lora_run_end_to_end(
    ray_cluster, tmp_path: Path, tiny: str, algorithm: str, extra: list[str]
) -> None:
    base = _run(tmp_path / "fedavg", tiny, "client.num_cpus=2", "compression=trim")
    result = _run(
        tmp_path / algorithm,
        tiny,
        "client.num_cpus=2",
        f"algorithm={algorithm}",
        "compression=trim",
        *extra,
    )
    up, down = result.history[0]["bytes_up"], result.history[0]["bytes_down"]
    ref_up, ref_down = base.history[0]["bytes_up"], base.history[0]["bytes_down"]
    assert all(r["clients_ok"] == 4 for r in result.history)
    if algorithm == "flora":  # the dense merged delta goes down, never up
        assert down > 2 * ref_down and up == pytest.approx(ref_up, rel=0.05)
    elif algorithm == "ffa_lora":  # A never travels
        assert up < ref_up and down < ref_down
    else:  # lower ranks and fewer layers upload less; the superset goes down
        assert up < ref_up and down == ref_down
