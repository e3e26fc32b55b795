"""The values that flow through a round, one name per change of meaning.

A client's rule produces a trained state; the client half of the pipeline turns the delta into
an :class:`Update` (what travels up); the server half turns each plaintext update back into a
:class:`Contribution` (what a strategy reads), and a cohort's contributions, or a secure sum of
its updates, into one :class:`Aggregate` (what a server optimizer step reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

State = dict[str, np.ndarray]
"""Trainable state: parameter name -> float32 numpy array (zero-copy through Ray's store)."""

StateSpec = tuple[tuple[str, tuple[int, ...]], ...]
"""The keys (in order) and shapes of a float32 state: what both ends of a link already know, so
a payload need not carry them."""

ClientState = dict[str, Any]
"""What the client-state store keeps for one client between its rounds, by owner:
``"rule"`` (the algorithm's client rule, e.g. SCAFFOLD's c_i), ``"codec"`` (error-feedback
residuals), ``"privacy"`` (e.g. a per-client DP accountant). Keyed by client id, checkpointed."""


@dataclass
class Update:
    """What one client sends up after its job in one round.

    `payload` is whatever the pipeline's client half produced (bytes for a codec chain, a masked
    vector under secure aggregation, ...); `nbytes_up` is the length of what actually travels.
    `extra` is plaintext algorithm state sent beside the update (SCAFFOLD's delta c).
    """

    client_id: int
    num_samples: int
    payload: Any
    nbytes_up: int
    metrics: dict[str, float] = field(default_factory=dict)
    client_state: ClientState | None = None
    extra: State | None = None


@dataclass
class Contribution:
    """One decoded plaintext client update as a strategy sees it."""

    client_id: int
    delta: State
    num_samples: int
    extra: State | None = None


@dataclass
class Aggregate:
    """A cohort's updates combined: what a server optimizer step consumes.

    `mean` is the weighted mean delta (weights: sample counts, or a mechanism's own weighting),
    `extra_mean` the unweighted mean of the updates' extra states (None when they carry none),
    `weight` the total weight and `count` the number of updates combined.
    """

    mean: State
    weight: float
    count: int
    extra_mean: State | None = None


@dataclass(frozen=True)
class Failure:
    """A client call that produced no usable update this round: who, and why (one line)."""

    client_id: int
    error: str


def spec_of(state: State) -> StateSpec:
    """The :data:`StateSpec` of a state (its key order and shapes)."""
    return tuple((k, tuple(v.shape)) for k, v in state.items())


@dataclass
class TrainJob:
    """One client's job in one round, as the coordinator sends it to a client actor.

    `spec` is the key order and shapes of the broadcast state (what the update must match),
    `client_state` what the store holds for the client (empty on a first visit), `message`
    what the privacy mechanism sends this client only (e.g. its encrypted key shares).
    """

    round: int
    client_id: int
    seed: int
    attempt: int
    spec: StateSpec
    client_state: ClientState = field(default_factory=dict)
    message: Any = None
