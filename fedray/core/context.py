"""The run context every stage of the round protocol receives."""

from __future__ import annotations

from dataclasses import dataclass

from fedray.core.types import StateSpec

SAMPLINGS = ("fixed", "poisson", "by_loss")


@dataclass(frozen=True)
class RunContext:
    """What a stage may know about the run: who exists, how cohorts are drawn, the seed.

    `sampling` is how a round's cohort is drawn: ``fixed`` (exactly `cohort_size` clients,
    uniformly without replacement), ``poisson`` (each client independently with probability
    `cohort_size / population`) or ``by_loss`` (chosen by the clients' reported losses, which no
    privacy accountant covers); a privacy accountant needs to know which. `client_sizes` holds
    each client's number of samples (index = client id; empty when not known).
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
    """One round as a stage sees it: the run, the round number and its cohort; `spec` is the key
    order and shapes of what the cohort's updates must match, set once the round's state is
    broadcast (the stages after it see it; a mechanism aggregating an empty cohort needs it)."""

    run: RunContext
    round: int
    cohort: tuple[int, ...]
    spec: StateSpec | None = None  # keys and shapes of what clients send up (sync rounds)
