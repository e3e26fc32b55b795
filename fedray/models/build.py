"""Building a task's model from `model.arch`: one registered architecture per module in
:mod:`fedray.models.archs` (group `arch`), selected by ``model.arch.name``.

A task names the kind of model it trains (``Task.model_kind``: ``classification`` and
``causal_lm`` for text, ``image_classification``, ``vector_classification``, ``rating``); an
architecture lists the kinds it can build (``kinds``) and builds one. The pairing is checked when
the config is typed (:func:`fedray.core.config.model_task_problem`), before anything starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from fedray.core import registry
from fedray.core.config import ModelConfig

if TYPE_CHECKING:
    import torch


class Architecture(Protocol):
    """A registered architecture: built with its options dataclass, it builds models."""

    kinds: ClassVar[tuple[str, ...]]

    def build(
        self, model: ModelConfig, kind: str, num_labels: int | None, seed: int
    ) -> torch.nn.Module:
        """A fresh (or pretrained, per `model.name_or_path`) model of `kind`, seeded."""
        ...


def architecture(model: ModelConfig) -> Any:
    """The architecture `model.arch` names, built with its typed options."""
    options = model.architecture
    return registry.entry("arch", options.name).factory(options)


def build_model(model: ModelConfig, kind: str, num_labels: int | None, seed: int) -> Any:
    """The model a task of `kind` trains, as `model.arch` builds it."""
    return architecture(model).build(model, kind, num_labels, seed)
