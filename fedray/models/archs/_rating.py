"""What the rating architectures (`mf`, `ncf`) share: their options and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedray.models.paths import SCRATCH

if TYPE_CHECKING:
    from fedray.core.config import ModelConfig


@dataclass
class RatingOptions:
    """Options every rating architecture has."""

    name: str = ""
    num_users: int = 1  # 1: each client holds only its own user vector (row 0); N: a table
    num_items: int = 3496  # >= the data's items (MovieLens small, items with >= 5 ratings)
    dim: int = 16  # embedding width
    init_std: float = 0.1  # normal init of the embeddings
    mean: float = 3.5  # initial global offset (MovieLens' mean rating is 3.54)
    l2: float = 0.0  # per-rating L2 on the embedding rows each rating looks up (Koren et al.)

    def check(self) -> None:
        if self.num_users < 1 or self.num_items < 1 or self.dim < 1:
            raise ValueError("num_users, num_items and dim must be >= 1")
        if self.init_std <= 0:
            raise ValueError(f"init_std={self.init_std} must be > 0")
        if self.l2 < 0:
            raise ValueError(f"l2={self.l2} must be >= 0")

    def check_against(self, model: ModelConfig) -> str | None:
        if model.name_or_path != SCRATCH or model.finetune != "full":
            return (
                f"arch={self.name} has no pretrained checkpoints: set model.name_or_path=scratch "
                "and model.finetune=full"
            )
        return None
