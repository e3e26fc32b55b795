"""Client selection: which virtual clients train in a round. Registered in group `selection`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from fedray.registry import register
from fedray.strategies.base import check_state_keys


@dataclass
class UniformOptions:
    """Options of `selection=uniform`."""

    name: str = "uniform"


@register("selection", "uniform", UniformOptions)
class UniformSampler:
    """`sorted(rng.sample(range(num_clients), k))` per round from one `random.Random(seed)`.

    Rounds draw in order from one stream, so the schedule is a function of the seed alone.
    """

    def __init__(self, options: UniformOptions, *, num_clients: int, seed: int) -> None:
        self.options = options
        self.num_clients = num_clients
        self.rng = random.Random(seed)

    def select(self, round: int, k: int) -> list[int]:
        if k > self.num_clients:
            raise ValueError(f"cannot select {k} of {self.num_clients} clients")
        return sorted(self.rng.sample(range(self.num_clients), k))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"rng"}, state, "UniformSampler")
        self.rng.setstate(state["rng"])
