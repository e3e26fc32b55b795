"""The fixed benchmark workloads of shared/bench/WORKLOAD.md: config and reference values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    """One workload: the fedray preset that runs it, and what an identical run reproduces."""

    name: str
    preset: str
    fingerprint: str
    accuracies: tuple[float, ...]  # per evaluated round, 4 decimals
    eval_rounds: tuple[int, ...]
    num_clients: int
    clients_per_round: int
    rounds: int
    max_per_client: int
    batch_size: int
    lr: float
    round_stride: int
    lora: bool


WORKLOADS = {
    "w1": Workload(
        "w1",
        "experiment=w1",
        "c219cf428cdbcd7d",
        (0.2183, 0.2067, 0.2017, 0.2200, 0.2150),
        (1, 2, 3, 4, 5),
        20,
        5,
        5,
        64,
        16,
        5e-4,
        1000,
        True,
    ),
    "w2": Workload(
        "w2",
        "experiment=w2",
        "c9b5bff9a5173afb",
        (0.2783,),
        (10,),
        1222,
        50,
        10,
        8,
        8,
        5e-4,
        10_000,
        True,
    ),
    "w3": Workload(
        "w3",
        "experiment=w3",
        "aef64031ed576541",
        (0.2150, 0.2183, 0.2167),
        (1, 2, 3),
        20,
        5,
        3,
        64,
        16,
        5e-5,
        1000,
        False,
    ),
}
