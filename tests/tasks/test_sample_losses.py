"""Per-sample losses: a task that declares ``per_sample_loss`` gives each sample's loss, and their
mean is its training loss (what per-sample clipping and ghost clipping rely on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.client.trainer import Trainer
from fedray.core import registry
from fedray.core.config import ModelConfig
from fedray.models import encode, load_tokenizer, save_tiny_classifier

SCRATCH = {"name_or_path": "scratch", "finetune": "full"}


def batches(tmp_path) -> dict[str, tuple[ModelConfig, int, dict[str, np.ndarray]]]:
    """task: (model, labels, a batch of 6 samples)."""
    rng = np.random.default_rng(0)
    bert = ModelConfig(name_or_path=save_tiny_classifier(tmp_path / "bert"))
    texts = ["to be or not", "quick brown fox", "that is lazy", "be quick", "or not", "fox"]
    labels = np.array([0, 1, 0, 1, 0, 2], dtype=np.int64)
    return {
        "classification": (
            bert,
            3,
            {**encode(load_tokenizer(bert), texts, 8), "labels": labels},
        ),
        "vector_classification": (
            ModelConfig(**SCRATCH, arch={"name": "logreg", "in_features": 5, "zero_init": False}),
            3,
            {"x": rng.normal(size=(6, 5)).astype(np.float32), "labels": labels},
        ),
        "image_classification": (
            ModelConfig(**SCRATCH, arch={"name": "vit", "layers": 1, "hidden_size": 32}),
            3,
            {
                "pixel_values": rng.normal(size=(6, 1, 16, 16)).astype(np.float32),
                "labels": labels,
            },
        ),
    }


@pytest.mark.parametrize(
    "task", ["classification", "vector_classification", "image_classification"]
)
def test_the_mean_of_the_sample_losses_is_the_training_loss(tmp_path, task: str) -> None:
    cfg, labels, data = batches(tmp_path)[task]
    trainer = Trainer(cfg, task, labels, seed=0)
    trainer.model.eval()  # no dropout: both calls see the same model
    batch = trainer.tensors(data)
    with torch.no_grad():
        losses = trainer.task.sample_losses(trainer.model, batch)
        loss = trainer.task.loss(trainer.model, batch)
    assert losses.shape == (6,)
    assert float(losses.std()) > 1e-3  # distinct samples, distinct losses
    torch.testing.assert_close(losses.mean(), loss, rtol=1e-6, atol=1e-6)
    one = {k: v[2:3] for k, v in batch.items()}  # a sample's loss does not depend on the others
    with torch.no_grad():
        torch.testing.assert_close(trainer.task.loss(trainer.model, one), losses[2])


@pytest.mark.parametrize("name", registry.names("task"))
def test_every_task_declares_whether_it_gives_per_sample_losses(name: str) -> None:
    task = registry.entry("task", name).factory
    assert isinstance(task.per_sample_loss, bool)
    assert task.per_sample_loss == callable(getattr(task, "sample_losses", None))
