"""DP end to end on Ray and a tiny model: epsilon and weights survive `resume` exactly, the budget
stops a run cleanly, an empty Poisson cohort, and DP-SGD's per-client accountants (with
per-sample gradient hooks and with ghost clipping)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fedray.app.cli import compose
from fedray.app.run import run_experiment
from fedray.core import registry
from fedray.core.checkpoint import load_checkpoint
from fedray.core.errors import FedrayError
from fedray.models import save_tiny_classifier
from fedray.privacy.lib.accounting import DpAccountant


def base(tmp_path: Path, seed: int, cohort: int = 2) -> list[str]:
    model = save_tiny_classifier(tmp_path / "tiny")
    return [
        f"seed={seed}",
        "partition.num_clients=8",
        "partition.max_samples_per_client=12",
        f"mode.clients_per_round={cohort}",
        "mode.checkpoint_every=1",
        "data.max_test=32",
        "data.max_length=16",
        "client.num_cpus=1",
        "client.lr=5e-3",
        f"model.name_or_path={model}",
        "model.lora.layers=null",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    ]


def run(cfg: list[str], tmp_path: Path, name: str, resume: str | None = None):
    return run_experiment(
        compose(cfg), tmp_path / name, cwd=tmp_path, out=None, resume_run_id=resume
    )


def test_dp_fedavg_epsilon_and_weights_survive_resume_and_the_budget_stops_the_run(
    ray_cluster, tmp_path: Path
) -> None:
    z, q, resolution = 1.0, 2 / 8, 1e-3
    probe = DpAccountant(sampling_rate=q, value_discretization_interval=resolution)
    eps = []
    for _ in range(4):
        probe.step(z)
        eps.append(probe.epsilon(1 / 8**1.1))
    cap = (eps[2] + eps[3]) / 2  # three rounds fit the budget, a fourth does not
    # seed 2 draws cohorts [3, 7], [], [0, 2, 4, 7]: round 2 samples nobody
    cfg = [
        *base(tmp_path, seed=2),
        "selection=poisson",
        "privacy=dp_fedavg",
        f"privacy.noise_multiplier={z}",
        f"privacy.accounting_resolution={resolution}",
        f"privacy.max_epsilon={cap}",
        "privacy.clip=0.05",
    ]
    full = run([*cfg, "mode.rounds=5"], tmp_path, "full")
    assert [r["round"] for r in full.history] == [1, 2, 3]
    assert full.stop_reason and "round 4 would bring epsilon" in full.stop_reason
    assert [r["clients"] for r in full.history] == [2, 0, 4]
    empty = full.history[1]  # the empty round is released (noise only) and charged
    assert empty["round_skipped"] == 0 and empty["epsilon"] == pytest.approx(eps[1], rel=1e-9)
    assert full.history[2]["epsilon"] == pytest.approx(eps[2], rel=1e-9) and eps[2] <= cap
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    finished = client.get_run(full.run_id)
    assert (
        finished.info.status == "FINISHED"
        and "max_epsilon" in finished.data.tags["fedray.stop_reason"]
    )

    first = run([*cfg, "mode.rounds=2"], tmp_path, "split")
    rest = run([*cfg, "mode.rounds=5"], tmp_path, "split", resume=first.run_id)
    assert [r["round"] for r in rest.history] == [3] and rest.stop_reason == full.stop_reason
    for key in ("epsilon", "epsilon_rdp", "clip", "clipped_fraction", "train_loss"):
        assert rest.history[0][key] == full.history[2][key], key
    a = load_checkpoint(tmp_path / "full" / "checkpoint")
    b = load_checkpoint(tmp_path / "split" / "checkpoint")
    assert a.round == b.round == 3
    assert all(np.array_equal(a.global_state[k], b.global_state[k]) for k in a.global_state)
    assert a.pipeline == b.pipeline  # the accountant's history, step for step


def test_without_dp_an_empty_poisson_cohort_follows_the_quorum_rule(
    ray_cluster, tmp_path: Path
) -> None:
    cfg = [*base(tmp_path, seed=2), "selection=poisson", "mode.rounds=2"]
    skipped = run([*cfg, "mode.on_quorum_loss=skip"], tmp_path, "skip")
    assert [(r["clients"], r["round_skipped"]) for r in skipped.history] == [(2, 0), (0, 1)]
    with pytest.raises(FedrayError, match="round 2: 0 of 0 clients returned a valid update"):
        run(cfg, tmp_path, "stop")


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_dp_sgd_client_accountants_persist_across_rounds_and_resume(
    ray_cluster, tmp_path: Path, mode: str
) -> None:
    z, delta = 1.5, 1e-5
    cfg = [
        *base(tmp_path, seed=0, cohort=4),
        "privacy=dp_sgd",
        f"privacy.noise_multiplier={z}",
        f"privacy.grad_sample_mode={mode}",  # per-sample gradients or ghost clipping: same state
        "client.batch_size=4",
        "client.max_steps=0",  # a whole epoch: 1/q Poisson steps
    ]
    first = run([*cfg, "mode.rounds=2"], tmp_path, "run")
    rest = run([*cfg, "mode.rounds=3"], tmp_path, "run", resume=first.run_id)
    history = first.history + rest.history
    state = load_checkpoint(tmp_path / "run" / "checkpoint")
    selector = registry.build("selection", {"name": "uniform"}, num_clients=8, seed=0)
    joined = np.bincount(np.concatenate([selector.select(r, 4) for r in (1, 2, 3)]), minlength=8)
    assert joined.max() >= 2  # some client trained in two rounds, across the resume
    spent = {}
    for cid, times in enumerate(joined):
        if not times:
            assert "privacy" not in state.client_states.get(cid, {})
            continue
        kept = state.client_states[cid]["privacy"]
        assert kept["jobs"] == times  # one job per round it joined, before and after resume
        acc = DpAccountant.from_state_dict(kept["accountant"])
        steps = acc.steps
        assert steps == times * round(1 / acc.sampling_rate)  # 1 epoch of 1/q Poisson steps
        fresh = DpAccountant(sampling_rate=acc.sampling_rate, value_discretization_interval=1e-3)
        fresh.step(z, steps)
        assert math.isclose(kept["epsilon"], fresh.epsilon(delta), rel_tol=1e-9)
        spent[cid] = kept["epsilon"]
    last = history[-1]
    assert last["epsilon"] == last["epsilon_max"] == max(spent.values())
    assert last["epsilon_mean"] == pytest.approx(np.mean(list(spent.values())), rel=1e-12)
    assert last["clients_trained"] == len(spent)
    assert [r["epsilon_max"] for r in history] == sorted(r["epsilon_max"] for r in history)
