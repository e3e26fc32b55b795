"""What the coordinator streams to the process that started the run, one typed record each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedray.core.types import Failure


@dataclass
class Ready:
    """The client actors are up; the run starts at `start_round` (> 1 when resumed)."""

    actors: list[dict[str, Any]]
    startup_s: float
    start_round: int
    num_clients: int


@dataclass
class Evaluated:
    """Test metrics of the initial model (`mode.eval_initial`), logged as round 0."""

    metrics: dict[str, float]


@dataclass
class RoundEnd:
    """One round (sync) or one period of arrivals (async) is done.

    `metrics` holds every numeric figure logged for the round (train_loss, bytes_up, ...,
    ``eval_*`` when evaluated); `selected` the clients it covered, in schedule order; `nodes`
    the Ray node each arrived update was trained on, by client id.
    """

    round: int
    selected: list[int]
    failures: list[Failure] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    nodes: dict[int, str] = field(default_factory=dict)


@dataclass
class Done:
    """The run finished: the final model's files (when exported) and the actors replaced."""

    model_files: dict[str, bytes] | None
    actors_replaced: int
    stop_reason: str | None = None  # why the run ended before its last round (a DP budget)


Event = Ready | Evaluated | RoundEnd | Done
