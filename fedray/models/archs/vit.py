"""`model.arch.name=vit`: a ViT image classifier (transformers), from scratch or a checkpoint.

With ``model.name_or_path=scratch`` the model is ``ViTForImageClassification`` built from a
``ViTConfig`` of these options, trained in full. With a checkpoint (hub name or local folder of
any ViT, DeiT, CLIP vision tower or other image-classification architecture transformers knows)
it is ``AutoModelForImageClassification.from_pretrained`` with a fresh head of the data's
classes, fine-tuned in full or with LoRA (``model.lora``: e.g. ``target_modules=[q_proj,
v_proj]``, ``modules_to_save=[classifier]``). The images are resized to the model's input size and
normalised with its image processor's mean and std (0.5 when it has none).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedray.core.errors import ModelError
from fedray.core.registry import register
from fedray.models.paths import SCRATCH, first_line, model_key, resolve_model_path

if TYPE_CHECKING:
    from fedray.core.config import ModelConfig


@dataclass
class ViTOptions:
    """Options of `model.arch=vit` (a `ViTConfig`; used with model.name_or_path=scratch)."""

    name: str = "vit"
    image_size: int = 16  # digits' 8x8 images are upsampled to this
    patch_size: int = 4  # (16 / 4)^2 = 16 patch tokens + [CLS]
    channels: int = 1  # images are converted to this many channels (1: grey, 3: RGB)
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    mlp_size: int = 128
    dropout: float = 0.0

    def check(self) -> None:
        if self.image_size < 1 or self.patch_size < 1 or self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size} must divide image_size={self.image_size}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels} must be 1 (grey) or 3 (RGB)")
        if self.heads < 1 or self.hidden_size % self.heads:
            raise ValueError(f"heads={self.heads} must divide hidden_size={self.hidden_size}")
        if self.layers < 1 or self.mlp_size < 1:
            raise ValueError("layers and mlp_size must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")

    def check_against(self, model: ModelConfig) -> str | None:
        if model.name_or_path == SCRATCH and model.finetune != "full":
            return (
                "arch=vit from scratch trains every weight; set model.finetune=full (LoRA needs "
                "a pretrained model.name_or_path)"
            )
        return None


@dataclass(frozen=True)
class ImageFormat:
    """What the model takes: square `size` x `size` images of `channels`, normalised per
    channel as (x / 255 - mean) / std."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@register("arch", "vit", ViTOptions)
class ViTArchitecture:
    """ViT (Dosovitskiy et al. 2021) for image classification."""

    kinds = ("image_classification",)

    def __init__(self, options: ViTOptions | None = None) -> None:
        self.options = options or ViTOptions()

    def image_format(self, model: ModelConfig) -> ImageFormat:
        """The input size, channels and normalisation of the model `model` names."""
        o = self.options
        if model.name_or_path == SCRATCH:
            half = (0.5,) * o.channels
            return ImageFormat(o.image_size, o.channels, half, half)
        from transformers import AutoConfig, AutoImageProcessor

        path = resolve_model_path(model.name_or_path)
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ModelError(f"{model_key(model.name_or_path)}: no config ({first_line(e)})") from e
        vision = getattr(config, "vision_config", config)  # CLIP keeps it in a sub-config
        size = vision.image_size
        size = size if isinstance(size, int) else int(size.get("height", size.get("shortest_edge")))
        channels = int(getattr(vision, "num_channels", 3))
        try:
            with warnings.catch_warnings():  # "requires torchvision; falling back to PIL"
                warnings.simplefilter("ignore")
                processor = AutoImageProcessor.from_pretrained(path)
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        except (OSError, ValueError, AttributeError, TypeError):
            mean, std = (0.5,) * channels, (0.5,) * channels
        return ImageFormat(size, channels, mean, std)

    def build(self, model: ModelConfig, kind: str, num_labels: int | None, seed: int) -> Any:
        import torch
        from transformers import AutoModelForImageClassification, ViTConfig
        from transformers import ViTForImageClassification as ViT

        if not num_labels or num_labels < 2:
            raise ModelError(f"num_labels={num_labels}: image classification needs >= 2 classes")
        torch.manual_seed(seed)
        if model.name_or_path == SCRATCH:
            o = self.options
            config = ViTConfig(
                image_size=o.image_size,
                patch_size=o.patch_size,
                num_channels=o.channels,
                hidden_size=o.hidden_size,
                num_hidden_layers=o.layers,
                num_attention_heads=o.heads,
                intermediate_size=o.mlp_size,
                hidden_dropout_prob=o.dropout,
                attention_probs_dropout_prob=o.dropout,
                num_labels=num_labels,
            )
            return ViT(config)
        path = resolve_model_path(model.name_or_path)
        try:
            with warnings.catch_warnings():  # the new head's "newly initialized" notice
                warnings.simplefilter("ignore")
                net = AutoModelForImageClassification.from_pretrained(
                    path,
                    num_labels=num_labels,
                    ignore_mismatched_sizes=True,
                    dtype=torch.float32,
                )
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(
                f"{model_key(model.name_or_path)}: not loadable as an image classifier "
                f"(AutoModelForImageClassification): {first_line(e)}"
            ) from e
        if model.finetune == "full":
            for p in net.parameters():
                p.requires_grad_(True)
            return net
        from fedray.models.loading import lora_wrap

        return lora_wrap(net, model, None)
