"""The values that flow through a round, one name per change of meaning.

A client's rule produces a trained state; the client half of the pipeline turns the delta into
an :class:`Update` (what travels up); the server half turns each plaintext update back into a
:class:`Contribution` (what a strategy reads), and a cohort's contributions, or a secure sum of
its updates, into one :class:`Aggregate` (what a server optimizer step reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from math import prod
from typing import Any

import numpy as np

State = dict[str, np.ndarray]
"""Trainable state: parameter name -> float32 numpy array (zero-copy through Ray's store)."""

RowCounts = dict[str, tuple[np.ndarray, np.ndarray]]
"""Per embedding table (state key): the rows a client looked up in training (int64, ascending)
and how often (float32); sent with `client.embedding_rows=lookups` (:mod:`fedray.client.rows`)."""

ClientState = dict[str, Any]
"""What the client-state store keeps for one client between its rounds, by owner:
``"rule"`` (the algorithm's client rule, e.g. SCAFFOLD's c_i), ``"codec"`` (error-feedback
residuals), ``"privacy"`` (e.g. a per-client DP accountant). Keyed by client id, checkpointed."""


@dataclass
class Update:
    """What one client sends up after its job in one round.

    `num_samples` is the update's aggregation weight: the samples it trained on (1 each when
    the selector asks for equal weights). `payload` is whatever the pipeline's client half
    produced (bytes for a codec chain, a masked vector under secure aggregation, ...);
    `nbytes_up` is the length of what actually travels.
    `extra` is plaintext algorithm state sent beside the update (SCAFFOLD's delta c); `node`
    the Ray node that trained it (where a silo's samples were read); `row_counts` the
    embedding rows it looked up (`client.embedding_rows=lookups`), also counted in `nbytes_up`.
    """

    client_id: int
    num_samples: int
    payload: Any
    nbytes_up: int
    metrics: dict[str, float] = field(default_factory=dict)
    client_state: ClientState | None = None
    extra: State | None = None
    node: str = ""
    row_counts: RowCounts | None = None


@dataclass
class Contribution:
    """One decoded plaintext client update as a strategy sees it."""

    client_id: int
    delta: State
    num_samples: int
    extra: State | None = None
    row_counts: RowCounts | None = None


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


@dataclass(frozen=True)
class StateSpec:
    """Ordered keys with their shapes; tensor `i` occupies `[offsets[i], offsets[i+1])`."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.shapes):
            raise ValueError(f"StateSpec: {len(self.keys)} keys but {len(self.shapes)} shapes")
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("StateSpec: duplicate keys")
        object.__setattr__(self, "keys", tuple(str(k) for k in self.keys))
        object.__setattr__(self, "shapes", tuple(tuple(int(n) for n in s) for s in self.shapes))

    @classmethod
    def of(cls, state: Mapping[str, np.ndarray]) -> StateSpec:
        """The spec of `state`, keys in its iteration order (the global state's, on both ends)."""
        return cls(tuple(state), tuple(tuple(np.shape(v)) for v in state.values()))

    @cached_property
    def sizes(self) -> np.ndarray:
        """Elements per tensor (int64)."""
        return np.array([prod(s) for s in self.shapes], dtype=np.int64)

    @cached_property
    def offsets(self) -> np.ndarray:
        """Start of each tensor in the flat vector, plus the total at the end (int64)."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @property
    def size(self) -> int:
        """Total number of values `d`."""
        return int(self.offsets[-1])

    @cached_property
    def rows(self) -> np.ndarray:
        """Rows per tensor for structured sparsity: `shape[0]` (a scalar is one row)."""
        return np.array([s[0] if s else 1 for s in self.shapes], dtype=np.int64)

    def flatten(self, state: Mapping[str, np.ndarray]) -> np.ndarray:
        """A fresh float32 vector of `state`'s values in spec order (checks keys and shapes)."""
        if state.keys() != set(self.keys):
            missing = sorted(set(self.keys) - set(state))
            extra = sorted(set(state) - set(self.keys))
            raise ValueError(
                f"state does not match the spec: missing {missing}, unexpected {extra}"
            )
        parts = []
        for key, shape in zip(self.keys, self.shapes, strict=True):
            value = np.asarray(state[key])
            if value.shape != shape:
                raise ValueError(f"state[{key!r}] has shape {value.shape}; the spec says {shape}")
            parts.append(value.reshape(-1))
        if not parts:
            return np.zeros(0, np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def unflatten(self, flat: np.ndarray) -> State:
        """The :data:`State` whose arrays are views of `flat` (float32, length :attr:`size`)."""
        if flat.shape != (self.size,):
            raise ValueError(f"flat vector has shape {flat.shape}; the spec needs ({self.size},)")
        flat = flat.astype(np.float32, copy=False)
        o = self.offsets
        return {
            k: flat[o[i] : o[i + 1]].reshape(s)
            for i, (k, s) in enumerate(zip(self.keys, self.shapes, strict=True))
        }


def spec_of(state: State) -> StateSpec:
    """The :class:`StateSpec` of a state (its key order and shapes)."""
    return StateSpec.of(state)


@dataclass
class TrainJob:
    """One client's job in one round, as the coordinator sends it to a client actor.

    `spec` is the key order and shapes of the broadcast state (what the update must match),
    `client_state` what the store holds for the client (empty on a first visit), `message`
    what the privacy mechanism sends this client only (e.g. its encrypted key shares),
    `cohort` the round's clients (sync; empty in async mode), for what is drawn per cohort
    (simulated stragglers).
    """

    round: int
    client_id: int
    seed: int
    attempt: int
    spec: StateSpec
    client_state: ClientState = field(default_factory=dict)
    message: Any = None
    cohort: tuple[int, ...] = ()
