"""`privacy.grad_sample_mode=ghost`: opacus' ghost clipping gives the update of per-sample gradient
hooks, bounds every sample's clipped gradient, and refuses what it cannot clip; run on a tiny
BERT with LoRA and on a logistic regression, without Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.app.cli import compose
from fedray.app.spec import build_spec
from fedray.client.rules import LocalJob, LocalRule
from fedray.client.trainer import Recipe, Trainer
from fedray.core.config import LoraConfig, ModelConfig
from fedray.core.errors import ConfigError
from fedray.models import encode, load_tokenizer, save_tiny_causal_lm, save_tiny_classifier
from fedray.privacy.dp_sgd import EPSILON, DpSgd, DpSgdOptions, DpSgdTraining, ghost_problem

WORDS = (["to", "be", "or", "not", "that", "is"], ["quick", "brown", "fox", "jumps", "lazy"])
LOGREG = ModelConfig(name_or_path="scratch", finetune="full", arch={"name": "logreg"})
SCRATCH_VIT = {"name": "vit", "layers": 1, "hidden_size": 32, "mlp_size": 32}
OPACUS_ATTRS = ("grad_sample", "summed_grad", "_forward_counter", "_norm_sample")


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> ModelConfig:
    return ModelConfig(name_or_path=save_tiny_classifier(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="module")
def models(bert: ModelConfig) -> dict[str, tuple[ModelConfig, str, int, dict[str, np.ndarray]]]:
    """name: (model, task, labels, 24 samples): two-class texts of 12 tokens, and 3-class
    vectors of 60 features, some far out and some close to 0 (per-sample gradient norms on both
    sides of the clip)."""
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 2
    texts = [" ".join(rng.choice(WORDS[y], size=5)) for y in labels]
    text = {**encode(load_tokenizer(bert), texts, 12), "labels": labels.astype(np.int64)}
    x = rng.normal(size=(24, 60)).astype(np.float32)
    x[::5] *= 8.0  # per-sample gradient norms from ~1 to ~50 (zero-initialised weights)
    x[1::5] *= 0.2
    vectors = {"x": x, "labels": (np.arange(24) % 3).astype(np.int64)}
    return {
        "bert": (bert, "classification", 2, text),
        "logreg": (LOGREG, "vector_classification", 3, vectors),
    }


def options(mode: str, z: float = 1.2, clip: float = 0.5) -> DpSgdOptions:
    """DP-SGD options; z = 0 (no noise, refused by `check`) isolates the clipped sum."""
    return DpSgdOptions(noise_multiplier=z, max_grad_norm=clip, grad_sample_mode=mode)


def trainer_of(spec: tuple, dropout: bool = True) -> Trainer:
    cfg, task, labels, _ = spec
    trainer = Trainer(cfg, task, labels, seed=0)
    if not dropout:  # per-sample references run one forward per sample: no random masks
        for m in trainer.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    return trainer


def job(trainer: Trainer, data: dict, opts: DpSgdOptions, recipe: Recipe, seed: int = 11):
    """One client job as the actor runs it: (trained state, figures, kept state, fit runs)."""
    mech, session = DpSgd(opts), {}
    training = mech.client_training(client_id=3, round=1, seed=seed, state=None, session=session)
    with trainer.shaped(training):
        result = LocalRule().run(trainer, LocalJob(3, seed, data, trainer.get_state()), recipe)
    kept, figures = mech.client_finish(client_id=3, round=1, state=None, session=session)
    return result.trained, figures, kept, training.runs


def hooks(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("z", [0.0, 1.2])
@pytest.mark.parametrize("name", ["bert", "logreg"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_ghost_gives_the_update_of_per_sample_hooks(models, name, z, optimizer) -> None:
    """Same Poisson batches, clipped sum and noise draws, so the same update up to rounding;
    the same steps charged, so the same epsilon and client state."""
    spec, recipe = models[name], Recipe(2, 4, 0.1, 0.0, optimizer=optimizer)
    start = trainer_of(spec).get_state()
    want, f_hooks, kept_hooks, runs = job(trainer_of(spec), spec[3], options("hooks", z), recipe)
    got, f_ghost, kept_ghost, runs_ghost = job(
        trainer_of(spec), spec[3], options("ghost", z), recipe
    )
    assert runs == runs_ghost == [(1 / 6, 12)]  # 2 epochs of 6 Poisson steps at rate 1/6
    assert f_hooks == f_ghost and kept_hooks == kept_ghost and f_ghost[EPSILON] > 0
    assert max(float(np.abs(want[k] - start[k]).max()) for k in start) > 1e-2  # it trained
    atol = 1e-6 if optimizer == "sgd" else 2e-5  # Adam divides rounding by tiny moments
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=atol, err_msg=key)


def clipped_mean(trainer: Trainer, data: dict, rows: np.ndarray, clip: float):
    """(sum over `rows` of each sample's gradient clipped to `clip`, / len(rows); the norms)."""
    model, params = trainer.model, trainer.params
    model.train()
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for row in rows:
        batch = {k: torch.from_numpy(v[row : row + 1]) for k, v in data.items()}
        grads = torch.autograd.grad(trainer.task.loss(model, batch), params)
        norm = float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads)))
        norms.append(norm)
        for t, g in zip(total, grads, strict=True):
            t += g * min(1.0, clip / (norm + 1e-6))
    return [t / len(rows) for t in total], np.array(norms)


def one_step(trainer: Trainer, data: dict, opts: DpSgdOptions) -> list[torch.Tensor]:
    """The change of every trainable parameter after one SGD step (lr 1) over all of `data`:
    one batch per epoch, so Poisson sampling at rate 1 takes every row."""
    before = [p.detach().clone() for p in trainer.params]
    job(trainer, data, opts, Recipe(1, len(data["labels"]), 1.0, 0.0, optimizer="sgd"))
    return [p.detach() - b for p, b in zip(trainer.params, before, strict=True)]


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize("name", ["bert", "logreg"])
def test_one_step_is_minus_the_mean_of_the_clipped_per_sample_gradients(models, name, mode):
    spec = models[name]
    data = {k: v[:8] for k, v in spec[3].items()}
    trainer = trainer_of(spec, dropout=False)
    _, norms = clipped_mean(trainer, data, np.arange(8), 1.0)
    clip = float(np.median(norms))  # half the samples are clipped, half are not
    want, _ = clipped_mean(trainer, data, np.arange(8), clip)
    got = one_step(trainer, data, options(mode, z=0.0, clip=clip))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, -w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["bert", "logreg"])
def test_ghost_bounds_every_samples_gradient_by_max_grad_norm(models, name) -> None:
    """A batch of one sample: the step is that sample's clipped gradient, of norm
    min(||g||, C) <= C, for the samples whose gradient is larger and for the others."""
    spec = models[name]
    trainer = trainer_of(spec, dropout=False)
    start = trainer.get_state()
    _, norms = clipped_mean(trainer, spec[3], np.arange(10), 1.0)
    clip = float(np.quantile(norms, 0.3))
    assert (norms > clip).sum() >= 5 and (norms < clip).sum() >= 2
    for row, norm in enumerate(norms):
        trainer.set_state(start)
        data = {k: v[row : row + 1] for k, v in spec[3].items()}
        step = one_step(trainer, data, options("ghost", z=0.0, clip=clip))
        moved = float(torch.sqrt(sum(s.double().pow(2).sum() for s in step)))
        assert moved <= clip * (1 + 1e-5)
        assert moved == pytest.approx(min(norm, clip), rel=1e-4)


def test_a_ghost_job_leaves_no_hook_behind(models) -> None:
    spec = models["bert"]
    trainer = trainer_of(spec)
    start, before = trainer.get_state(), hooks(trainer.model)
    job(trainer, spec[3], options("ghost"), Recipe(1, 8, 0.05, 0.0))
    assert hooks(trainer.model) == before
    for p in trainer.model.parameters():
        for attr in OPACUS_ATTRS:
            assert not hasattr(p, attr), attr
    plain = Recipe(1, 8, 5e-3, 0.0)  # the actor's next client trains as on a fresh trainer
    trainer.set_state(start)
    trainer.fit(spec[3], seed=5, recipe=plain)
    fresh = trainer_of(spec)
    fresh.set_state(start)
    fresh.fit(spec[3], seed=5, recipe=plain)
    after, want = trainer.get_state(), fresh.get_state()
    assert all(np.array_equal(after[k], want[k]) for k in want)


def test_empty_poisson_batches_are_noise_only_steps_under_ghost(models, monkeypatch) -> None:
    spec = models["logreg"]
    few = {k: v[:16] for k, v in spec[3].items()}
    recipe = Recipe(1, 1, 0.05, 0.0)  # each sample joins a step with rate 1/16: some are empty
    empty, inner = [], DpSgdTraining.empty_step
    monkeypatch.setattr(DpSgdTraining, "empty_step", lambda t: (empty.append(1), inner(t))[1])
    got, _, kept, runs = job(trainer_of(spec), few, options("ghost"), recipe, seed=4)
    assert runs == [(1 / 16, 16)] and len(empty) >= 2  # (15/16)^16 = 36% are empty
    want, _, kept_hooks, _ = job(trainer_of(spec), few, options("hooks"), recipe, seed=4)
    assert kept == kept_hooks and len(empty) >= 4  # the same empty steps, charged the same
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_ghost_refuses_trainable_layers_without_a_norm_sampler(models) -> None:
    """A scratch ViT trains its patch convolution, LayerNorms and embeddings: refused before
    opacus touches the model (per-sample hooks train it)."""
    vit = ModelConfig(name_or_path="scratch", finetune="full", arch=SCRATCH_VIT)
    trainer = Trainer(vit, "image_classification", 10, seed=0)
    images = {
        "pixel_values": np.random.default_rng(0).normal(size=(8, 1, 16, 16)).astype(np.float32),
        "labels": (np.arange(8) % 10).astype(np.int64),
    }
    before = hooks(trainer.model)
    with pytest.raises(ValueError) as info:
        job(trainer, images, options("ghost"), Recipe(1, 4, 0.05, 0.0))
    message = str(info.value)
    assert "privacy.grad_sample_mode=ghost cannot clip the trainable layer" in message
    assert "Linear" in message and "grad_sample_mode=hooks" in message and "\n" not in message
    assert hooks(trainer.model) == before
    _, figures, _, _ = job(trainer, images, options("hooks"), Recipe(1, 4, 0.05, 0.0))
    assert figures[EPSILON] > 0


def test_ghost_refuses_tied_parameters() -> None:
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    b.weight = a.weight
    problem = ghost_problem(torch.nn.Sequential(a, b))
    assert problem is not None and "shared by `0` and `1`" in problem
    assert (
        ghost_problem(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Embedding(9, 4))) is None
    )


def test_the_trainer_refuses_ghost_for_a_task_without_per_sample_losses(tmp_path) -> None:
    lm = ModelConfig(
        name_or_path=save_tiny_causal_lm(tmp_path / "lm"),
        lora=LoraConfig(target_modules=["c_attn"]),
    )
    trainer = Trainer(lm, "causal_lm", None, seed=0)
    ids = np.ones((4, 8), dtype=np.int64)
    data = {"input_ids": ids, "attention_mask": ids}
    training = DpSgd(options("ghost")).client_training(
        client_id=0, round=1, seed=0, state=None, session={}
    )
    with trainer.shaped(training), pytest.raises(ValueError) as info:
        trainer.fit(data, seed=0, recipe=Recipe(1, 2, 0.1, 0.0))
    assert "CausalLM gives no per-sample losses" in str(info.value)
    assert "\n" not in str(info.value)


GHOST = ["tracking=none", "privacy=dp_sgd", "privacy.grad_sample_mode=ghost"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=shakespeare_lm"], "data.task=causal_lm: its loss is not a mean of per-sample"),
        (["data=movielens"], "data.task=recommendation: its loss is not a mean of per-sample"),
        (["privacy.grad_sample_mode=functorch"], "privacy.grad_sample_mode='functorch': use"),
    ],
)
def test_what_ghost_clipping_cannot_run_is_refused_in_one_line(overrides, message) -> None:
    with pytest.raises(ConfigError) as info:
        build_spec(compose([*GHOST, *overrides]))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("overrides", [[], ["data=synthetic"], ["algorithm=fedper"]])
def test_ghost_configs_are_accepted(overrides: list[str]) -> None:
    assert build_spec(compose([*GHOST, *overrides])).privacy.grad_sample_mode == "ghost"


def test_hooks_is_the_default() -> None:
    spec = build_spec(compose(["tracking=none", "privacy=dp_sgd"]))
    assert spec.privacy.grad_sample_mode == "hooks" == DpSgdOptions().grad_sample_mode
