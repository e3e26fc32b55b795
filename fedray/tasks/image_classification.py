"""`data.task=image_classification`: one label per image, cross-entropy, accuracy.

Images come from the source as ``features["image"]``: a uint8 array [N, H, W] or [N, H, W, C]
(e.g. scikit-learn's digits), or one value per sample that is a file path, encoded bytes, an HF
``Image`` value or a PIL image. The encoder (numpy and PIL only) converts each to the model's
channels, resizes it to the model's input size (bilinear) and normalises it with the model's
mean and std, as :meth:`fedray.models.archs.vit.ViTArchitecture.image_format` gives them: the
`pixel_values` column, float32 [N, C, S, S].
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedray.core.config import ModelConfig
from fedray.core.errors import DataError
from fedray.core.registry import register
from fedray.data.base import EncodedData, FederatedData
from fedray.tasks.base import Batch, Objective, client_rows, label_metrics, label_sums


@dataclass
class ImageClassificationOptions:
    """Options of `data.task=image_classification`: none."""

    name: str = "image_classification"


def _pil(value: Any) -> Any:
    """One image value as a PIL image."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(value.squeeze()))
    if isinstance(value, dict):  # an HF Image value that was not decoded
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray):
        return Image.open(io.BytesIO(value))
    if isinstance(value, str | Path):
        try:
            return Image.open(value)
        except OSError as exc:
            raise DataError(f"cannot read image {value}: {exc}") from None
    raise DataError(
        f"an image value of type {type(value).__name__} is not an array, a path, bytes or a "
        "PIL image; point data.image_column at the images"
    )


def pixel_values(images: Any, size: int, channels: int, mean: Any, std: Any) -> np.ndarray:
    """Images as normalised float32 [N, channels, size, size] (see the module docstring)."""
    from PIL import Image

    out = np.empty((len(images), channels, size, size), dtype=np.float32)
    mode = "L" if channels == 1 else "RGB"
    for i, value in enumerate(images):
        image = _pil(value).convert(mode)
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32).reshape(size, size, channels) / 255.0
        out[i] = pixels.transpose(2, 0, 1)
    out -= np.asarray(mean, dtype=np.float32).reshape(1, channels, 1, 1)
    out /= np.asarray(std, dtype=np.float32).reshape(1, channels, 1, 1)
    return out


@register("task", "image_classification", ImageClassificationOptions)
class ImageClassification:
    """Image classification with an image-classification model (`model.arch=vit`)."""

    objective = Objective("accuracy", "maximize")
    display = ("accuracy", "loss")
    needs_labels = True
    model_kind = "image_classification"
    per_sample_loss = True

    def __init__(self, options: ImageClassificationOptions | None = None) -> None:
        self.options = options or ImageClassificationOptions()

    def encode(self, data: FederatedData, model: ModelConfig, max_length: int) -> EncodedData:
        from fedray.models import architecture

        corpus = data.corpus
        images = corpus.features.get("image")
        if images is None or corpus.labels is None:
            raise DataError(
                f"data.task=image_classification needs images and labels; data.name gives "
                f"{sorted(corpus.features) or 'text'} (set data.image_column for files/hf)"
            )
        fmt = architecture(model).image_format(model)
        used, clients = client_rows(data)

        def columns(rows: np.ndarray) -> dict[str, np.ndarray]:
            return {
                "pixel_values": pixel_values(
                    [images[i] for i in rows], fmt.size, fmt.channels, fmt.mean, fmt.std
                ),
                "labels": corpus.labels[rows].astype(np.int64),
            }

        return EncodedData(columns(used), columns(data.test_idx), clients)

    def build_model(self, model: ModelConfig, num_labels: int | None, seed: int) -> Any:
        from fedray.models import build_model

        return build_model(model, self.model_kind, num_labels, seed)

    def loss(self, model: Any, batch: Batch) -> Any:
        import torch.nn.functional as F

        logits = model(pixel_values=batch["pixel_values"]).logits
        return F.cross_entropy(logits.float(), batch["labels"])

    def sample_losses(self, model: Any, batch: Batch) -> Any:
        import torch.nn.functional as F

        logits = model(pixel_values=batch["pixel_values"]).logits
        return F.cross_entropy(logits.float(), batch["labels"], reduction="none")

    def eval_batch(self, model: Any, batch: Batch) -> dict[str, float]:
        return label_sums(model(pixel_values=batch["pixel_values"]).logits.float(), batch["labels"])

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        return label_metrics(totals)
