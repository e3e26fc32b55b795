"""Plain data types shared by the client, the pipeline, the strategies and the driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

State = dict[str, np.ndarray]
"""Trainable state: parameter name -> float32 numpy array (zero-copy through Ray's store)."""


@dataclass
class ClientUpdate:
    """What one client returns after local training in one round.

    `payload` is the output of the pipeline's client half (for the identity codec, the delta
    trained - global as a :data:`State`); `nbytes_up` is counted at the encode step.
    """

    client_id: int
    num_samples: int
    payload: Any
    nbytes_up: int
    metrics: dict[str, float] = field(default_factory=dict)
    client_state: State | None = None
    extra: State | None = None  # algorithm state sent up beside the update (SCAFFOLD's delta c)


@dataclass
class ClientFailure:
    """A client that did not return an update: who, and why."""

    client_id: int
    error: str
