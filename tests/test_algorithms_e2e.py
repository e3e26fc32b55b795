"""The client-rule algorithms and power-of-choice through run_experiment (tiny model, 2 rounds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedray.app.cli import compose
from fedray.app.run import run_experiment
from fedray.app.spec import build_spec
from fedray.core.checkpoint import load_checkpoint
from fedray.models import save_tiny_classifier

BASE = [
    "partition.num_clients=6",
    "partition.max_samples_per_client=16",
    "mode.clients_per_round=3",
    "mode.rounds=2",
    "mode.eval_every=1",
    "mode.checkpoint_every=1",
    "data.max_test=48",
    "data.max_length=24",
    "client.num_cpus=1",
    "client.lr=5e-3",
    "model.lora.layers=null",
    "tracking=none",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny"))


def _run(tiny: str, tmp: Path, *overrides: str):
    cfg = compose([*BASE, f"model.name_or_path={tiny}", *overrides])
    return run_experiment(cfg, tmp, cwd=tmp, out=None)


def test_fedprox_runs_with_its_proximal_rule(ray_cluster, tiny, tmp_path: Path) -> None:
    result = _run(tiny, tmp_path, "algorithm=fedprox", "algorithm.mu=1.0", "client.batch_size=8")
    state = load_checkpoint(tmp_path / "checkpoint")
    full = sum(v.nbytes for v in state.global_state.values())
    for row in result.history:
        assert row["clients_ok"] == 3
        assert row["bytes_up"] == row["bytes_down"] == full * 3  # nothing extra travels
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert state.client_states == {}


def test_scaffold_keeps_control_variates_and_counts_their_bytes(
    ray_cluster, tiny, tmp_path: Path
) -> None:
    result = _run(
        tiny, tmp_path, "algorithm=scaffold", "selection=power_of_choice", "selection.d=4"
    )
    state = load_checkpoint(tmp_path / "checkpoint")
    model_bytes = sum(v.nbytes for v in state.global_state.values())
    for row in result.history:
        # c goes down with x, delta c comes up with delta y: twice the model's bytes each way
        assert row["bytes_down"] == 2 * model_bytes * 3
        assert row["bytes_up"] == 2 * model_bytes * 3
    trained = set(state.selector["losses"])  # every client that reported a loss
    assert 3 <= len(trained) <= 6 and set(state.client_states) == trained
    c = state.strategy["c"]
    assert c.keys() == state.global_state.keys()
    # c stays the mean of all N = 6 clients' c_i (never-trained clients hold c_i = 0)
    for k in c:
        mean = sum(ci["rule"][k] for ci in state.client_states.values()) / 6
        np.testing.assert_allclose(c[k], mean, rtol=1e-4, atol=1e-7)
    assert any(np.abs(v).max() > 0 for v in c.values())


def _initial_state(tiny: str) -> dict[str, np.ndarray]:
    from fedray.models import get_trainable_state, load_model

    spec = build_spec(compose([*BASE, f"model.name_or_path={tiny}"]))  # typed, as actors get it
    return get_trainable_state(load_model(spec.model, "classification", 6, spec.seed))


def test_fedper_head_never_leaves_the_client(ray_cluster, tiny, tmp_path: Path) -> None:
    result = _run(tiny, tmp_path, "algorithm=fedper")
    state = load_checkpoint(tmp_path / "checkpoint")
    initial = _initial_state(tiny)
    head = {k for k in initial if "classifier" in k}
    rules = [s["rule"] for s in state.client_states.values()]  # the client rule's stored state
    assert head and all(set(s) == head for s in rules)
    for k in head:  # the global head is never aggregated: still the loaded one
        assert np.array_equal(state.global_state[k], initial[k])
    assert any(not np.array_equal(s[k], initial[k]) for s in rules for k in head)
    shared_bytes = sum(v.nbytes for k, v in initial.items() if k not in head)
    for row in result.history:
        assert row["bytes_up"] == row["bytes_down"] == shared_bytes * 3
        assert 0.0 <= row["eval_personal_accuracy"] <= 1.0
        assert row["eval_personal_clients"] == 3
        assert "eval_accuracy" in row


def test_ditto_keeps_personal_models(ray_cluster, tiny, tmp_path: Path) -> None:
    result = _run(tiny, tmp_path, "algorithm=ditto", "algorithm.lam=0.5")
    state = load_checkpoint(tmp_path / "checkpoint")
    assert len(state.client_states) >= 3
    for stored in state.client_states.values():
        personal = stored["rule"]
        assert personal.keys() == state.global_state.keys()
        assert any(not np.array_equal(personal[k], state.global_state[k]) for k in personal)
    full = sum(v.nbytes for v in state.global_state.values())
    for row in result.history:
        assert row["bytes_up"] == full * 3
        assert 0.0 <= row["eval_personal_accuracy"] <= 1.0


@pytest.mark.slow
def test_scaffold_resume_restores_server_and_client_variates(
    ray_cluster, tiny, tmp_path: Path
) -> None:
    algo = ["algorithm=scaffold", "partition=iid"]
    _run(tiny, tmp_path / "a", *algo, "mode.rounds=3")
    _run(tiny, tmp_path / "b", *algo, "mode.rounds=2")
    cfg = compose([*BASE, f"model.name_or_path={tiny}", *algo, "mode.rounds=3"])
    rest = run_experiment(cfg, tmp_path / "b", cwd=tmp_path, out=None, resume_run_id="resume")
    assert [r["round"] for r in rest.history] == [3]
    a = load_checkpoint(tmp_path / "a" / "checkpoint")
    b = load_checkpoint(tmp_path / "b" / "checkpoint")

    def same(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> bool:
        return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)

    assert same(a.global_state, b.global_state)
    assert same(a.strategy["c"], b.strategy["c"])
    assert a.client_states.keys() == b.client_states.keys()
    assert all(
        same(a.client_states[c]["rule"], b.client_states[c]["rule"]) for c in a.client_states
    )
