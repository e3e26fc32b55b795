"""`privacy=dp_sgd`: opacus around every fit of a client's job, a per-client accountant in the
client's state; run on a tiny BERT without Ray (the actor's calls, in its order)."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld

from fedray.app.cli import compose
from fedray.app.spec import build_spec
from fedray.client.rules import LocalJob, LocalRule
from fedray.client.trainer import Recipe, Trainer
from fedray.core.config import ModelConfig
from fedray.core.errors import ConfigError
from fedray.models import encode, load_tokenizer, save_tiny_classifier
from fedray.privacy.dp_sgd import EPSILON, DpSgd, DpSgdOptions

RECIPE = Recipe(1, 8, 0.05, 0.0)
WORDS = (["to", "be", "or", "not", "that", "is"], ["quick", "brown", "fox", "jumps", "lazy"])


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> ModelConfig:
    return ModelConfig(name_or_path=save_tiny_classifier(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="module")
def data(cfg: ModelConfig) -> dict[str, np.ndarray]:
    """24 two-class texts, tokenized to length 12."""
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 2
    texts = [" ".join(rng.choice(WORDS[y], size=5)) for y in labels]
    return {**encode(load_tokenizer(cfg), texts, 12), "labels": labels.astype(np.int64)}


def mechanism(**options) -> DpSgd:
    opts = DpSgdOptions(**{"noise_multiplier": 1.2, "max_grad_norm": 0.5, **options})
    opts.check()
    return DpSgd(opts)


def job(
    mech: DpSgd,
    trainer: Trainer,
    data: dict[str, np.ndarray],
    start: dict[str, np.ndarray],
    *,
    seed: int = 11,
    state=None,
    recipe: Recipe | None = None,
    during: dict | None = None,
):
    """What the client actor does for one job: shape, run the rule, finish. `during` gets the
    number of hooks on the model right after opacus wrapped it."""
    session: dict = {}
    training = mech.client_training(client_id=3, round=1, seed=seed, state=state, session=session)
    if during is not None:
        inner = training.wrap

        def wrap(model, optimizer, loader):
            wrapped = inner(model, optimizer, loader)
            during["hooks"] = hooks(trainer.model)
            return wrapped

        training.wrap = wrap  # type: ignore[method-assign]
    with trainer.shaped(training):
        result = LocalRule().run(trainer, LocalJob(3, seed, data, start), recipe or RECIPE)
    kept, figures = mech.client_finish(client_id=3, round=1, state=state, session=session)
    return result, kept, figures, training


def hooks(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def pld_epsilon(rate: float, z: float, steps: int, delta: float) -> float:
    event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(z))
    return (
        pld.PLDAccountant(value_discretization_interval=1e-3)
        .compose(event, steps)
        .get_epsilon(delta)
    )


def test_a_job_trains_under_opacus_and_leaves_no_hook_behind(cfg, data) -> None:
    trainer = Trainer(cfg, "classification", 2, seed=0)
    start = trainer.get_state()
    before = hooks(trainer.model)
    during: dict = {}
    result, kept, figures, training = job(
        DpSgd(DpSgdOptions()), trainer, data, start, during=during
    )
    assert during["hooks"] > before  # opacus' hooks were on the model while it trained
    assert training.runs == [(1 / 3, 3)]  # 24 samples, batch 8: rate 1/3, 3 Poisson steps
    assert result.metrics["steps"] == 3
    assert figures[EPSILON] == kept["epsilon"] > 0 and kept["jobs"] == 1
    moved = sum(float(np.sum((result.trained[k] - start[k]) ** 2)) for k in start)
    assert moved > 0
    # no opacus hook or attribute outlives the job ...
    assert hooks(trainer.model) == before
    for p in trainer.model.parameters():
        for attr in ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample"):
            assert not hasattr(p, attr), attr
    # ... so the actor's next client trains exactly as on a fresh trainer
    plain = Recipe(1, 8, 5e-3, 0.0)
    trainer.set_state(start)
    trainer.fit(data, seed=5, recipe=plain)
    fresh = Trainer(cfg, "classification", 2, seed=0)
    fresh.set_state(start)
    fresh.fit(data, seed=5, recipe=plain)
    after, want = trainer.get_state(), fresh.get_state()
    assert all(np.array_equal(after[k], want[k]) for k in want)


def test_jobs_are_seeded_and_noised(cfg, data) -> None:
    trainer = Trainer(cfg, "classification", 2, seed=0)
    start = trainer.get_state()
    a = job(mechanism(), trainer, data, start, seed=1)[0].trained
    b = job(mechanism(), trainer, data, start, seed=1)[0].trained
    c = job(mechanism(), trainer, data, start, seed=2)[0].trained
    louder = job(mechanism(noise_multiplier=2.4), trainer, data, start, seed=1)[0].trained
    assert all(np.array_equal(a[k], b[k]) for k in a)  # same seed: same batches, same noise
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert any(not np.array_equal(a[k], louder[k]) for k in a)


def test_the_client_accountant_persists_across_its_jobs(cfg, data) -> None:
    trainer, mech = Trainer(cfg, "classification", 2, seed=0), mechanism()
    start = trainer.get_state()
    _, first, f1, _ = job(mech, trainer, data, start, seed=1)
    _, second, f2, _ = job(mech, trainer, data, start, seed=2, state=first)
    assert second["jobs"] == 2 and second["accountant"]["runs"] == [[1.2, 6]]
    assert math.isclose(f1[EPSILON], pld_epsilon(1 / 3, 1.2, 3, 1e-5), rel_tol=1e-9)
    assert math.isclose(f2[EPSILON], pld_epsilon(1 / 3, 1.2, 6, 1e-5), rel_tol=1e-9)
    with pytest.raises(ValueError, match="accountant holds rate"):  # the batch size changed
        job(mech, trainer, data, start, state=second, recipe=Recipe(1, 4, 0.05, 0.0))


def test_empty_poisson_batches_are_noise_only_steps(cfg, data) -> None:
    trainer, mech = Trainer(cfg, "classification", 2, seed=0), mechanism()
    start = trainer.get_state()
    empty = []
    session: dict = {}
    training = mech.client_training(client_id=0, round=1, seed=4, state=None, session=session)
    inner = training.empty_step
    training.empty_step = lambda: (empty.append(1), inner())[1]  # type: ignore[method-assign]
    trainer.set_state(start)
    few = {k: v[:16] for k, v in data.items()}
    with trainer.shaped(training):  # batch 1 of 16: each sample joins a step with rate 1/16
        out = trainer.fit(few, seed=4, recipe=Recipe(1, 1, 0.05, 0.0))
    steps = training.runs[0][1]
    assert out["steps"] == steps == 16 and len(empty) >= 2  # (15/16)^16 = 36% are empty
    kept, _ = mech.client_finish(client_id=0, round=1, state=None, session=session)
    assert kept["accountant"]["runs"] == [[1.2, steps]]  # empty steps are charged too


def test_a_client_withholds_an_update_past_its_budget(cfg, data) -> None:
    trainer = Trainer(cfg, "classification", 2, seed=0)
    start = trainer.get_state()
    _, kept, figures, _ = job(mechanism(), trainer, data, start)
    cap = figures[EPSILON] * 1.2  # a second job doubles the steps (epsilon x ~1.3)
    with pytest.raises(RuntimeError, match="withholds its update"):
        job(mechanism(max_epsilon=cap), trainer, data, start, state=kept)
    spent = {**kept, "epsilon": cap}
    with pytest.raises(RuntimeError, match="trains no more"):
        mechanism(max_epsilon=cap).client_training(
            client_id=3, round=2, seed=0, state=spent, session={}
        )


def test_the_trainer_refuses_what_per_sample_clipping_would_drop(cfg, data) -> None:
    trainer, mech = Trainer(cfg, "classification", 2, seed=0), mechanism()
    training = mech.client_training(client_id=0, round=1, seed=0, state=None, session={})
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    with trainer.shaped(training), pytest.raises(ValueError, match="proximal term"):
        trainer.fit(
            data, seed=0, recipe=Recipe(1, 8, 0.1, 0.0), extra_loss=lambda m: params[0].sum()
        )
    with trainer.shaped(training), pytest.raises(ValueError, match="cannot both apply"):
        trainer.fit(data, seed=0, recipe=Recipe(1, 8, 0.1, 0.0), wrap=lambda m, o, b: (m, o, b))


DP = ["tracking=none", "privacy=dp_sgd"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mode=async", "algorithm=fedasync"], "privacy.name=dp_sgd needs mode=sync"),
        (["algorithm=fedprox"], "client rule `proximal` adds a loss term"),
        (["algorithm=ditto"], "client rule `ditto` adds a loss term"),
        (["algorithm=scaffold"], "algorithm=scaffold: its clients send state"),
        (["data=shakespeare_lm"], "data.task=causal_lm: its loss is not a mean"),
        (["data=movielens"], "data.task=recommendation: its loss is not a mean"),
        (["model.dtype=float16"], "model.dtype=float16"),
        (["model.gradient_checkpointing=true"], "model.gradient_checkpointing=true: opacus'"),
        (["privacy.noise_multiplier=0"], "privacy.noise_multiplier=0.0 must be"),
        (["privacy.max_grad_norm=-1"], "privacy.max_grad_norm=-1.0 must be"),
    ],
)
def test_combinations_that_would_break_the_guarantee_are_refused_in_one_line(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_spec(compose([*DP, *overrides]))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["algorithm=fedavg"],
        ["algorithm=fedper"],
        ["algorithm=median"],
        ["selection=poisson"],
        ["data=synthetic"],  # vector_classification: a mean of per-sample losses too
        ["data=digits"],  # image_classification
    ],
)
def test_combinations_that_keep_the_guarantee_are_accepted(overrides: list[str]) -> None:
    assert build_spec(compose([*DP, *overrides])).privacy.name == "dp_sgd"
