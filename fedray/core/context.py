"""The run context every stage of the round protocol receives."""

from __future__ import annotations

from dataclasses import dataclass

from fedray.core.types import StateSpec

SAMPLINGS = ("fixed", "poisson")


@dataclass(frozen=True)
class RunContext:
    """What a stage may know about the run: who exists, how cohorts are drawn, the seed.

    `sampling` is how a round's cohort is drawn: ``fixed`` (exactly `cohort_size` clients,
    uniformly without replacement) or ``poisson`` (each client independently with probability
    `cohort_size / population`); a privacy accountant needs to know which.
    """

    population: int
    cohort_size: int
    sampling: str
    rounds: int
    seed: int
    mode: str  # sync | async
    client_sizes: tuple[int, ...] = ()  # samples per client (by id): public, the weights' caps

    @property
    def sampling_rate(self) -> float:
        """q = cohort size / population."""
        return self.cohort_size / self.population


@dataclass(frozen=True)
class RoundContext:
    """One round as a stage sees it: the run, the round number and its cohort."""

    run: RunContext
    round: int
    cohort: tuple[int, ...]
    spec: StateSpec | None = None  # keys and shapes of what clients send up (sync rounds)
