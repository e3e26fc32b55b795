"""FedAdagrad, FedAdam, FedYogi: adaptive server optimizers (Reddi et al., 2021, Algorithm 2).

The pseudo-gradient is the sample-weighted mean delta (it points uphill on the clients' progress,
so it is added). Per coordinate, with no bias correction, as in the paper:

    m = beta1 * m + (1 - beta1) * delta
    v = v + delta²                                         (Adagrad)
    v = beta2 * v + (1 - beta2) * delta²                   (Adam)
    v = v - (1 - beta2) * delta² * sign(v - delta²)        (Yogi)
    new = global + server_lr * m / (sqrt(v) + tau)

m starts at 0 and v at tau² (the paper's v_{-1} >= tau²).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.checkpoint import check_state_keys
from fedray.core.registry import register
from fedray.core.types import Aggregate, State
from fedray.core.validate import check_like
from fedray.strategies.base import Strategy


@dataclass
class FedAdagradOptions:
    """Options of `algorithm=fedadagrad` (no beta2: Adagrad never forgets v)."""

    name: str = "fedadagrad"
    server_lr: float = 1e-2  # Reddi et al. tune it per task; 1e-2 is inside their grid
    beta1: float = 0.9  # fixed at 0.9 in all of Reddi et al.'s experiments
    tau: float = 1e-3  # adaptivity: larger tau makes the step more like server-side SGD

    def check(self) -> None:
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")
        if not 0 <= self.beta1 < 1:
            raise ValueError(f"beta1={self.beta1} must be in [0, 1)")
        if self.tau <= 0:
            raise ValueError(f"tau={self.tau} must be > 0 (it keeps m / (sqrt(v) + tau) finite)")


@dataclass
class FedAdamOptions(FedAdagradOptions):
    """Options of `algorithm=fedadam`."""

    name: str = "fedadam"
    beta2: float = 0.99  # fixed at 0.99 in all of Reddi et al.'s experiments

    def check(self) -> None:
        super().check()
        if not 0 <= self.beta2 < 1:
            raise ValueError(f"beta2={self.beta2} must be in [0, 1)")


@dataclass
class FedYogiOptions(FedAdamOptions):
    """Options of `algorithm=fedyogi`."""

    name: str = "fedyogi"


class _FedOpt(Strategy):
    """Shared math; a subclass says how v absorbs delta²."""

    def __init__(self, options: FedAdagradOptions) -> None:
        self.options = options
        self._m: State | None = None
        self._v: State | None = None
        self._step = 0

    def _update_v(self, v: np.ndarray, d2: np.ndarray) -> None:
        """Update `v` in place from `d2` = delta² (which it may overwrite)."""
        raise NotImplementedError

    def step(self, global_state: State, aggregate: Aggregate) -> State:
        o = self.options
        delta = aggregate.mean  # updated in place below: the aggregate is this step's to use up
        check_like(delta, global_state, f"{o.name}: the mean update")
        if self._m is None or self._v is None:
            self._m = {k: np.zeros(a.shape, np.float32) for k, a in global_state.items()}
            self._v = {k: np.full(a.shape, o.tau**2, np.float32) for k, a in global_state.items()}
        check_like(self._m, global_state, f"{o.name}: the optimizer state")
        new: State = {}
        for k, d in delta.items():
            m, v = self._m[k], self._v[k]
            m *= np.float32(o.beta1)
            m += np.float32(1 - o.beta1) * d
            self._update_v(v, np.square(d, out=d))
            step = np.sqrt(v)
            step += np.float32(o.tau)
            np.divide(m, step, out=step)
            step *= np.float32(o.server_lr)
            new[k] = np.add(global_state[k], step, dtype=np.float32)
        self._step += 1
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"m": _copy(self._m), "v": _copy(self._v), "step": self._step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"m", "v", "step"}, state, type(self).__name__)
        m, v = _copy(state["m"]), _copy(state["v"])
        if (m is None) != (v is None):
            raise ValueError(f"{type(self).__name__}.load_state_dict: m and v must both be set")
        if m is not None and v is not None:
            check_like(v, m, f"{type(self).__name__}.load_state_dict: v against m")
        self._m, self._v, self._step = m, v, int(state["step"])


def _copy(state: State | None) -> State | None:
    """Writable float32 copies (inputs may be read-only or shared with a checkpoint)."""
    return None if state is None else {k: np.array(a, np.float32) for k, a in state.items()}


@register("algorithm", "fedadagrad", FedAdagradOptions)
class FedAdagrad(_FedOpt):
    """v = v + delta²."""

    def _update_v(self, v: np.ndarray, d2: np.ndarray) -> None:
        v += d2


@register("algorithm", "fedadam", FedAdamOptions)
class FedAdam(_FedOpt):
    """v = beta2 * v + (1 - beta2) * delta²."""

    options: FedAdamOptions

    def _update_v(self, v: np.ndarray, d2: np.ndarray) -> None:
        v *= np.float32(self.options.beta2)
        d2 *= np.float32(1 - self.options.beta2)
        v += d2


@register("algorithm", "fedyogi", FedYogiOptions)
class FedYogi(_FedOpt):
    """v = v - (1 - beta2) * delta² * sign(v - delta²): v moves toward delta² additively."""

    options: FedYogiOptions

    def _update_v(self, v: np.ndarray, d2: np.ndarray) -> None:
        sign = np.sign(v - d2)
        d2 *= np.float32(1 - self.options.beta2)
        d2 *= sign
        v -= d2
