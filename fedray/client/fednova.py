"""FedNova's client half (Wang et al. 2020): local training, then the normaliser ``a_i``.

The client trains exactly as the plain `local` rule does and sends, beside its update, the
L1 norm ``a_i`` of the vector that weighs its local gradients (extra state tagged ``nova``), so
the server can normalise each update by the amount of local work behind it
(:mod:`fedray.strategies.fednova`). For tau_i steps of SGD with heavy-ball momentum rho,

    a_i = (tau_i - rho * (1 - rho^tau_i) / (1 - rho)) / (1 - rho)    (rho = 0: a_i = tau_i)

(Wang et al. 2020, Sec. 4). Other optimizers have no such closed form: `algorithm=fednova`
requires `client.optimizer=sgd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.client.rules import LocalJob, LocalResult
from fedray.client.trainer import Recipe, Trainer
from fedray.core.extra import tagged
from fedray.core.registry import register
from fedray.tasks.base import num_rows


def normaliser(steps: int, momentum: float) -> float:
    """``||a_i||_1`` after `steps` local SGD steps with heavy-ball `momentum`."""
    if steps < 0 or not 0 <= momentum < 1:
        raise ValueError(f"steps={steps} must be >= 0 and momentum={momentum} in [0, 1)")
    if momentum == 0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


def nova_extra(a: float) -> dict[str, np.ndarray]:
    """The extra state a FedNova client sends (and the server broadcasts as its template)."""
    return tagged({"a": np.array([a], dtype=np.float32)}, "nova")


@dataclass
class FedNovaOptions:
    """Options of the `fednova` rule: none."""

    name: str = "fednova"


@register("rule", "fednova", FedNovaOptions)
class FedNovaRule:
    """Plain local training; the update carries ``a_i`` as extra state ``nova/a``."""

    def __init__(self, options: FedNovaOptions | None = None, **_: Any) -> None:
        self.options = options or FedNovaOptions()

    def run(self, trainer: Trainer, job: LocalJob, recipe: Recipe) -> LocalResult:
        if recipe.optimizer != "sgd":
            raise ValueError("fednova: the normaliser is defined for client.optimizer=sgd only")
        trainer.set_state(job.global_state)
        metrics = trainer.fit(job.batch, seed=job.seed, recipe=recipe)
        a = normaliser(int(metrics["steps"]), recipe.momentum)
        return LocalResult(
            trainer.get_state(),
            num_rows(job.batch),
            metrics,
            client_state=job.client_state,
            extra=nova_extra(a),
        )
