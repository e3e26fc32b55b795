"""The layout both ends already know: ordered keys and shapes of the (float32) trainable state.

A payload never carries key names or shapes; encoder and decoder flatten a :data:`State` into one
float32 vector in the order of :class:`StateSpec` and cut it back the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from math import prod

import numpy as np

from fedray.types import State


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
