"""The non-text tasks without Ray: encoding, their models (model.arch), training and metrics."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fedray.client.trainer import Recipe, Trainer
from fedray.core.config import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    PartitionConfig,
    RatingsConfig,
    model_task_problem,
)
from fedray.core.errors import ConfigError, ModelError
from fedray.data import build_federated_data
from fedray.data.base import ClientBatch
from fedray.models import architecture, build_model, get_trainable_state
from fedray.tasks.image_classification import pixel_values
from fedray.tasks.recommendation import NEGATIVES, Recommendation
from fedray.tasks.vector_classification import VectorClassification

SCRATCH = {"name_or_path": "scratch", "finetune": "full"}
VIT = ModelConfig(**SCRATCH, arch={"name": "vit", "layers": 1, "hidden_size": 32, "mlp_size": 32})
LOGREG = ModelConfig(**SCRATCH, arch={"name": "logreg", "in_features": 60})
MF = ModelConfig(**SCRATCH, arch={"name": "mf", "num_items": 3496, "dim": 8})


def _fit_then_eval(trainer: Trainer, train: dict, test: dict, recipe: Recipe) -> tuple:
    before = trainer.evaluate(test)
    trainer.fit(train, seed=0, recipe=recipe)
    return before, trainer.evaluate(test)


@pytest.fixture(scope="module")
def digits():
    cfg = DataConfig(name="digits", task="image_classification", max_test=0)
    data = build_federated_data(cfg, PartitionConfig(num_clients=4, alpha=1.0), 0)
    from fedray.tasks.image_classification import ImageClassification

    return data, ImageClassification().encode(data, VIT, 0)


def test_digits_become_normalised_16x16_pixels(digits) -> None:
    data, enc = digits
    x = enc.train["pixel_values"]
    assert x.shape == (sum(map(len, data.clients)), 1, 16, 16) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0  # (v / 255 - 0.5) / 0.5
    assert enc.test["pixel_values"].shape == (269, 1, 16, 16)
    assert [len(c) for c in enc.clients] == [len(c) for c in data.clients]


def test_vit_learns_digits(digits) -> None:
    _, enc = digits
    trainer = Trainer(VIT, "image_classification", 10, seed=0, threads=1)
    recipe = Recipe(epochs=3, batch_size=32, lr=3e-3, weight_decay=0.0)
    before, after = _fit_then_eval(trainer, enc.train, enc.test, recipe)
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.5 > before["accuracy"]


def test_pixel_values_convert_resize_and_normalise() -> None:
    grey = np.zeros((2, 4, 4), dtype=np.uint8)
    grey[1] = 255
    out = pixel_values(grey, size=8, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert out.shape == (2, 3, 8, 8)
    assert np.allclose(out[0, :, 0, 0], [-2.0, -1.0, -0.5])  # black: (0 - 0.5) / std
    assert np.allclose(out[1, :, 0, 0], [2.0, 1.0, 0.5])


def _tiny_vit_checkpoint(path: Path) -> str:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    config = ViTConfig(
        image_size=12,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessorPil(
        size={"height": 12, "width": 12}, image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.2, 0.2]
    ).save_pretrained(path)
    return str(path)


def _tiny_clip_checkpoint(path: Path) -> str:
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 64},
        vision_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 8, "patch_size": 4},
        projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    return str(path)


def test_a_saved_vit_loads_by_path_with_a_new_head_and_lora(tmp_path: Path) -> None:
    path = _tiny_vit_checkpoint(tmp_path / "vit")
    lora = LoraConfig(target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])
    cfg = ModelConfig(name_or_path=path, finetune="lora", lora=lora, arch={"name": "vit"})
    fmt = architecture(cfg).image_format(cfg)
    assert (fmt.size, fmt.channels, fmt.mean, fmt.std) == (12, 3, (0.4,) * 3, (0.2,) * 3)
    model = build_model(cfg, "image_classification", 10, seed=0)
    state = get_trainable_state(model)
    assert any("lora_A" in k for k in state) and any("classifier" in k for k in state)
    assert not any("patch_embeddings" in k for k in state)  # the frozen base does not travel
    assert model(pixel_values=torch.zeros(2, 3, 12, 12)).logits.shape == (2, 10)


def test_a_clip_vision_tower_loads_as_an_image_classifier(tmp_path: Path) -> None:
    cfg = ModelConfig(
        name_or_path=_tiny_clip_checkpoint(tmp_path / "clip"), finetune="full", arch={"name": "vit"}
    )
    fmt = architecture(cfg).image_format(cfg)
    assert (fmt.size, fmt.channels) == (8, 3)
    model = build_model(cfg, "image_classification", 4, seed=0)
    assert type(model).__name__ == "CLIPForImageClassification"
    assert model(pixel_values=torch.zeros(1, 3, 8, 8)).logits.shape == (1, 4)


def test_logistic_regression_learns_synthetic() -> None:
    cfg = DataConfig(name="synthetic", task="vector_classification", max_test=0)
    data = build_federated_data(cfg, PartitionConfig(name="natural"), 0)
    enc = VectorClassification().encode(data, LOGREG, 0)
    trainer = Trainer(LOGREG, "vector_classification", 10, seed=0, threads=1)
    assert all(np.all(v == 0) for v in trainer.get_state().values())  # zero init, as the paper
    recipe = Recipe(epochs=2, batch_size=10, lr=0.01, weight_decay=0.0, optimizer="sgd")
    before, after = _fit_then_eval(trainer, enc.train, enc.test, recipe)
    assert before["accuracy"] < 0.3 and after["accuracy"] > 0.6
    with pytest.raises(ModelError, match=r"set model\.arch\.in_features=60"):
        bad = ModelConfig(**SCRATCH, arch={"name": "logreg", "in_features": 5})
        VectorClassification().encode(data, bad, 0)


@pytest.fixture(scope="module")
def movielens():
    cfg = DataConfig(name="movielens", task="recommendation", max_test=0)
    data = build_federated_data(cfg, PartitionConfig(name="natural"), 0)
    return data, Recommendation().encode(data, MF, 0)


def test_each_client_gets_its_users_held_out_rating(movielens) -> None:
    data, enc = movielens
    f = data.corpus.features
    assert enc.client_test is not None and len(enc.client_test) == 671
    for k in (0, 1, 400):
        (row,) = enc.client_test[k]
        assert f["user"][data.test_idx[row]] == f["user"][data.clients[k][0]]
        batch = enc.client_batch(k)
        assert isinstance(batch, ClientBatch) and len(batch["item"]) == len(data.clients[k])
        assert batch.own_test["item"].tolist() == [f["item"][data.test_idx[row]]]
    assert np.all(enc.train["user"] == 0) and np.all(enc.test["user"] == 0)  # num_users=1


def test_negatives_are_items_the_user_never_rated(movielens) -> None:
    data, enc = movielens
    f = data.corpus.features
    negatives = enc.test["negatives"]
    assert negatives.shape == (671, NEGATIVES)
    for row in (0, 100, 670):
        user = f["user"][data.test_idx[row]]
        rated = set(f["item"][f["user"] == user].tolist())
        assert not rated & set(negatives[row].tolist())
        assert len(set(negatives[row].tolist())) == NEGATIVES
    again = Recommendation().encode(data, MF, 0)
    assert np.array_equal(again.test["negatives"], negatives)  # fixed per user


def test_rating_model_sizes_are_checked_against_the_data(movielens) -> None:
    data, _ = movielens
    small = ModelConfig(**SCRATCH, arch={"name": "mf", "num_items": 100})
    with pytest.raises(ModelError, match=r"set model\.arch\.num_items=3496"):
        Recommendation().encode(data, small, 0)
    few = ModelConfig(**SCRATCH, arch={"name": "ncf", "num_users": 10})
    with pytest.raises(ModelError, match="set it to 671"):
        Recommendation().encode(data, few, 0)
    table = ModelConfig(**SCRATCH, arch={"name": "mf", "num_users": 671})
    assert Recommendation().encode(data, table, 0).train["user"].max() == 670


class _ScoreIsItem(torch.nn.Module):
    """A rating 'model' whose score is the item id (ranks are known in advance)."""

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return item.float()


def test_hit_rate_and_ndcg_count_the_negatives_scored_at_least_as_high() -> None:
    task = Recommendation()
    batch = {
        "user": torch.zeros(3, dtype=torch.long),
        "item": torch.tensor([50, 95, 200]),
        "rating": torch.tensor([50.0, 93.0, 200.0]),
        # ranks: 50 of 100 above item 50 -> 50; item 95 -> 4 at or above; 200 -> 0
        "negatives": torch.stack([torch.arange(1, 101), torch.arange(1, 101), torch.arange(100)]),
    }
    sums = task.eval_batch(_ScoreIsItem(), batch)
    metrics = task.metrics(sums)
    assert sums["hits"] == 2  # ranks 6 and 0 (item 95: 96..100 above -> 5, plus the tie 95)
    assert metrics["hr10"] == pytest.approx(2 / 3)
    assert metrics["ndcg10"] == pytest.approx((1 / math.log2(8) + 1) / 3)
    assert metrics["rmse"] == pytest.approx(math.sqrt(4 / 3))


def test_mf_learns_movielens_centrally(movielens) -> None:
    data, _ = movielens
    table = ModelConfig(**SCRATCH, arch={"name": "mf", "num_users": 671, "dim": 8})
    enc = Recommendation().encode(data, table, 0)
    trainer = Trainer(table, "recommendation", None, seed=0, threads=1)
    recipe = Recipe(epochs=2, batch_size=256, lr=1e-2, weight_decay=0.1)
    before, after = _fit_then_eval(trainer, enc.train, enc.test, recipe)
    assert after["rmse"] < before["rmse"] and after["rmse"] < 1.0
    assert after["hr10"] > 0.15  # 10 of 101 candidates: 0.099 by chance


@pytest.mark.parametrize("arch", ["mf", "ncf"])
def test_l2_adds_the_squared_rows_each_rating_looks_up(arch: str) -> None:
    cfg = ModelConfig(**SCRATCH, arch={"name": arch, "num_users": 3, "num_items": 7, "l2": 0.5})
    model = build_model(cfg, "rating", None, seed=0)
    batch = {
        "user": torch.tensor([0, 2, 2]),
        "item": torch.tensor([1, 1, 6]),
        "rating": torch.tensor([4.0, 2.0, 5.0]),
    }
    mse = torch.nn.functional.mse_loss(model(batch["user"], batch["item"]), batch["rating"])
    tables = {k: v for k, v in model.named_parameters() if k.endswith(".weight") and v.ndim == 2}
    by_rating = torch.zeros(3)
    for key, table in tables.items():
        if key.startswith(("user", "item")):
            index = batch["user"] if key.startswith("user") else batch["item"]
            by_rating += table[index].square().sum(-1)
    loss = Recommendation().loss(model, batch)
    assert loss.item() == pytest.approx((mse + 0.5 * by_rating.mean()).item(), rel=1e-6)
    model.l2 = 0.0
    assert Recommendation().loss(model, batch).item() == pytest.approx(mse.item(), rel=1e-7)


def test_the_l2_term_does_not_count_as_a_lookup() -> None:
    from fedray.client.rows import count_lookups

    cfg = ModelConfig(**SCRATCH, arch={"name": "mf", "num_items": 7, "l2": 0.1})
    model = build_model(cfg, "rating", None, seed=0)
    batch = {"user": torch.zeros(2, dtype=torch.long), "item": torch.tensor([3, 3])}
    with count_lookups(model) as lookups:
        model.train()
        Recommendation().loss(model, {**batch, "rating": torch.tensor([1.0, 2.0])})
    rows, counts = lookups.sparse()["item.weight"]
    np.testing.assert_array_equal(rows, [3])
    np.testing.assert_array_equal(counts, [2])


@pytest.mark.parametrize("arch", ["mf", "ncf"])
def test_user_parameters_and_only_they_are_named_user(arch: str) -> None:
    cfg = ModelConfig(**SCRATCH, arch={"name": arch, "num_items": 50})
    keys = list(get_trainable_state(build_model(cfg, "rating", None, seed=0)))
    users = [k for k in keys if "user" in k]
    assert users and all(k.startswith("user") for k in users)
    assert any(k.startswith("item") for k in keys)


@pytest.mark.parametrize(
    ("model", "task", "match"),
    [
        (ModelConfig(), "image_classification", "arch=hf builds models of kind classification"),
        (VIT, "classification", "pick a model whose arch builds it \\(hf\\)"),
        (MF, "vector_classification", "\\(logreg\\)"),
    ],
)
def test_a_model_the_task_cannot_train_is_named_with_the_fix(model, task, match) -> None:
    problem = model_task_problem(model, task)
    assert problem is not None and re.search(match, problem)


@pytest.mark.parametrize(
    ("model", "task"),
    [
        (ModelConfig(), "classification"),
        (VIT, "image_classification"),
        (LOGREG, "vector_classification"),
        (MF, "recommendation"),
    ],
)
def test_the_right_pairs_pass(model, task) -> None:
    assert model_task_problem(model, task) is None


@pytest.mark.parametrize(
    ("arch", "extra", "match"),
    [
        ({"name": "vit", "patch_size": 5}, {}, "model.arch.patch_size=5 must divide"),
        ({"name": "vit"}, {"finetune": "lora"}, "set model.finetune=full"),
        ({"name": "mf"}, {"name_or_path": "builtin:minilm"}, "set model.name_or_path=scratch"),
        ({"name": "hf"}, {"name_or_path": "scratch"}, "loads a pretrained checkpoint"),
        ({"name": "nope"}, {}, "model.arch.name='nope' is unknown"),
        ({"name": "ncf", "layers": [0]}, {}, "every layer needs >= 1 unit"),
        ({"name": "mf", "l2": -0.1}, {}, "l2=-0.1 must be >= 0"),
    ],
)
def test_bad_architecture_options_are_one_line_config_errors(arch, extra, match) -> None:
    kwargs = {**SCRATCH, **extra}
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs, arch=arch)


def test_ratings_config_checks_its_values() -> None:
    with pytest.raises(ConfigError, match="min_item_ratings=0"):
        RatingsConfig(min_item_ratings=0)
