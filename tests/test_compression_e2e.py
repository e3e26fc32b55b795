"""Compression end to end (Hydra config, Ray actors, driver, MLflow) on a tiny model: every codec
in sync and async mode, the downlink counted apart, byte totals and ratios, the model size the
actors report, and error-feedback state surviving `resume` bit for bit."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fedray.app.cli import compose, precheck, split_argv, sweep_combinations
from fedray.app.run import run_experiment
from fedray.app.spec import build_spec
from fedray.core import registry
from fedray.core.checkpoint import load_checkpoint
from fedray.models import save_tiny_classifier

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "partition=iid",
    "partition.num_clients=3",
    "partition.max_samples_per_client=16",
    "mode.clients_per_round=3",  # every client every round: residuals are reused
    "data.max_test=32",
    "data.max_length=16",
    "client.num_cpus=1",
    "client.lr=5e-3",
    "model.lora.layers=null",
    "tracking.log_model=false",
]
ASYNC = ["mode=async", "algorithm=fedbuff", "mode.max_concurrency=2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_classifier(tmp_path_factory.mktemp("tiny")))


def _run(tmp: Path, name: str, overrides: list[str], **kw):
    cfg = compose([*SMALL, f"tracking.uri=sqlite:///{tmp}/mlflow.db", *overrides])
    return run_experiment(cfg, tmp / name, cwd=tmp, out=None, **kw)


def test_downlink_and_uplink_bytes_are_counted_apart_with_totals_and_ratios(
    ray_cluster, tiny: str, tmp_path: Path
) -> None:
    result = _run(
        tmp_path,
        "a",
        [
            f"model.name_or_path={tiny}",
            "mode.rounds=2",
            "mode.checkpoint_every=1",
            "compression=int8",
            "compression.down=fp16",
        ],
    )
    d = sum(v.size for v in load_state(tmp_path / "a").values())
    spec_sizes = [v.size for v in load_state(tmp_path / "a").values()]
    int8 = d + 2 * sum(-(-n // 256) for n in spec_sizes)  # values + a bf16 scale per block
    model = result.ready.actors[0]
    assert model["model_fp32_bytes"] == 4 * model["model_params"] == 4 * tiny_params(tiny)
    total_up = total_down = 0
    for row in result.history:
        assert row["bytes_up"] == 3 * int8 and row["bytes_down"] == 3 * 2 * d
        total_up, total_down = total_up + row["bytes_up"], total_down + row["bytes_down"]
        assert (row["bytes_up_total"], row["bytes_down_total"]) == (total_up, total_down)
        assert row["compression_down"] == 2.0
        assert row["compression_up"] == pytest.approx(4 * d / int8)
        assert row["compression_up_vs_model"] == pytest.approx(model["model_fp32_bytes"] / int8)
        assert row["bytes_up_client_min"] == row["bytes_up_client_max"] == int8
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(result.run_id)
    assert run.data.metrics["bytes_up_total"] == total_up
    assert run.data.params["model.model_fp32_bytes"] == str(model["model_fp32_bytes"])
    assert "traffic.png" in {a.path for a in client.list_artifacts(result.run_id)}


def load_state(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir / "checkpoint")
    assert state is not None, "runs here checkpoint every round"
    return state.global_state


def tiny_params(path: str) -> int:
    """The saved tiny classifier's parameters, counted without peft."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=6)
    return sum(p.numel() for p in model.parameters())


def test_error_feedback_and_stochastic_codecs_resume_bit_for_bit(
    ray_cluster, tiny: str, tmp_path: Path
) -> None:
    codec = [
        f"model.name_or_path={tiny}",
        "mode.checkpoint_every=1",
        "compression=chain",
        "compression.codecs=[{name:topk,fraction:0.1},{name:int8,rounding:stochastic}]",
        "compression.error_feedback=true",
        "compression.down={name:int4,rounding:stochastic}",
    ]
    full = _run(tmp_path, "a", [*codec, "mode.rounds=3"])
    first = _run(tmp_path, "b", [*codec, "mode.rounds=2"])
    rest = _run(tmp_path, "b", [*codec, "mode.rounds=3"], resume_run_id=first.run_id)
    assert [r["round"] for r in rest.history] == [3]
    for key in ("eval_loss", "train_loss", "bytes_up", "bytes_up_total", "bytes_down_total"):
        assert rest.history[0][key] == full.history[-1][key], key
    a, b = (
        load_checkpoint(tmp_path / "a" / "checkpoint"),
        load_checkpoint(tmp_path / "b" / "checkpoint"),
    )
    assert a.global_state.keys() == b.global_state.keys()
    assert all(np.array_equal(a.global_state[k], b.global_state[k]) for k in a.global_state)
    assert sorted(a.client_states) == sorted(b.client_states) == [0, 1, 2]  # by client id
    for cid, stored in a.client_states.items():
        residual, again = stored["codec"], b.client_states[cid]["codec"]
        assert residual.keys() == again.keys()
        assert all(np.array_equal(residual[k], again[k]) for k in residual)
        assert any(np.any(v != 0) for v in residual.values())
    assert a.pipeline["traffic"] == b.pipeline["traffic"]
    assert a.pipeline["traffic"]["up_total"] == full.history[-1]["bytes_up_total"]


# Every codec (YAML defaults) and the chains the study uses, in both schedulers.
CODECS = {
    **{n: [f"compression={n}"] for n in registry.names("compression")},
    "topk-int8": ["compression=chain", "compression.codecs=[{name:topk,fraction:0.1},{name:int8}]"],
}


def _every_codec(tmp: Path, tiny: str, mode: list[str], names: list[str]) -> None:
    for name in names:
        result = _run(
            tmp, name, [f"model.name_or_path={tiny}", "mode.rounds=2", *mode, *CODECS[name]]
        )
        spec = build_spec(compose([*SMALL, *CODECS[name]]))
        assert len(result.history) == 2, name
        for row in result.history:
            assert row["clients_failed"] == 0, name
            assert row["updates_rejected"] == 0, name
            dense = row["compression_up"]
            is_none = spec.compression.name == "none"
            assert (dense == 1.0) if is_none else (dense > 1.0), name
        assert np.isfinite(result.metric), name


FAST = {"sync": ["chain"], "async": ["sign"]}  # sparsifier + quantizer + EF; quantizer + EF


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_representative_codecs_run_end_to_end(ray_cluster, tiny, tmp_path, mode) -> None:
    _every_codec(tmp_path, tiny, ASYNC if mode == "async" else [], FAST[mode])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_codec_runs_end_to_end(ray_cluster, tiny, tmp_path, mode) -> None:
    rest = sorted(set(CODECS) - set(FAST[mode]))
    _every_codec(tmp_path, tiny, ASYNC if mode == "async" else [], rest)


def test_the_study_grid_composes_and_validates_as_a_hydra_sweep(monkeypatch, tmp_path) -> None:
    """`experiments/compression/run.py`'s sweep command: every job composes, validates, and is
    one of the study's cells (same compression node), each seed once."""
    sys.path.insert(0, str(ROOT / "experiments" / "compression"))
    try:
        import run as study
    finally:
        sys.path.pop(0)
    monkeypatch.chdir(tmp_path)
    jobs = []
    for command in study.sweep_command([0, 1, 2]).split(" && "):
        argv = shlex.split(command)[1:]
        precheck(argv)  # what `fedray -m ...` runs before Hydra: compose + validate each job
        jobs += sweep_combinations(split_argv(argv)[1])
    assert len(jobs) == 3 * len(study.CELLS)

    def node(overrides: list[str]) -> str:
        return repr(build_spec(compose(["tracking=none", *overrides])).compression)

    cells = {node(o): name for name, (_, o) in study.CELLS.items()}
    seen = sorted((cells[node(j)], next(o for o in j if o.startswith("seed="))) for j in jobs)
    assert seen == sorted((c, f"seed={s}") for c in study.CELLS for s in (0, 1, 2))
