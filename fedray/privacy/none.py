"""`privacy=none`: updates travel in the clear."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedray.registry import register
from fedray.strategies.base import Contribution, check_state_keys
from fedray.types import State


@dataclass
class NoPrivacyOptions:
    """Options of `privacy=none`."""

    name: str = "none"


@register("privacy", "none", NoPrivacyOptions)
class NoPrivacy:
    """No clipping, no masking, no noise."""

    reveals_only_sums = False

    def __init__(self, options: NoPrivacyOptions) -> None:
        self.options = options

    def client_apply(self, delta: State, *, client_id: int, round: int) -> State:
        return delta

    def server_apply(self, contributions: list[Contribution], *, round: int) -> list[Contribution]:
        return contributions

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(set(), state, "NoPrivacy")
