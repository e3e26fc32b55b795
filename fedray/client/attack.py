"""Byzantine clients: a seeded set of attackers corrupts its update after local training.

The attackers are `round(fraction * num_clients)` client ids drawn once from `attack.seed`
(null: the run seed), so they are the same on every actor and in every round. The attack acts on
the delta (trained - global) before the pipeline's client half, as a compromised client would.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedray.core.config import AttackConfig
from fedray.core.registry import typed
from fedray.core.types import State

KINDS = ("none", "sign_flip", "scale", "gaussian", "nan")


def attack_config(node: Any) -> AttackConfig:
    """An AttackConfig from a config node, a plain dict, or None (defaults)."""
    return typed(AttackConfig, node, "attack")


def check(node: Any) -> str | None:
    """One line naming the first problem of an attack config, or None."""
    cfg = attack_config(node)
    if cfg.kind not in KINDS:
        return f"attack.kind={cfg.kind!r}: use one of {', '.join(KINDS)}"
    if cfg.kind != "none" and not 0.0 < cfg.fraction <= 1.0:
        return f"attack.fraction={cfg.fraction} must be in (0, 1]"
    if cfg.noise_std < 0:
        return f"attack.noise_std={cfg.noise_std} must be >= 0"
    return None


def attackers(cfg: AttackConfig, num_clients: int, run_seed: int) -> frozenset[int]:
    """The attacking client ids (empty for kind=none)."""
    if cfg.kind == "none":
        return frozenset()
    count = round(cfg.fraction * num_clients)
    seed = run_seed if cfg.seed is None else cfg.seed
    rng = np.random.default_rng([seed, 0xA77AC])
    return frozenset(int(c) for c in rng.choice(num_clients, size=count, replace=False))


def corrupt(cfg: AttackConfig, delta: State, client_id: int, round: int, seed: int) -> State:
    """The attacked delta (float32, same keys and shapes)."""
    if cfg.kind == "sign_flip":
        return {k: np.negative(v, dtype=np.float32) for k, v in delta.items()}
    if cfg.kind == "scale":
        return {
            k: np.multiply(v, np.float32(cfg.scale), dtype=np.float32) for k, v in delta.items()
        }
    if cfg.kind == "gaussian":
        rng = np.random.default_rng([seed, round, client_id])
        return {
            k: rng.normal(0.0, cfg.noise_std, size=v.shape).astype(np.float32)
            for k, v in delta.items()
        }
    if cfg.kind == "nan":
        return {k: np.full(v.shape, np.nan, np.float32) for k, v in delta.items()}
    return delta


class Attack:
    """Applies the configured attack to the trained state of the attacking clients."""

    def __init__(self, node: Any, num_clients: int, run_seed: int) -> None:
        self.cfg = cfg = attack_config(node)
        self.seed = run_seed if cfg.seed is None else cfg.seed
        self.ids = attackers(cfg, num_clients, run_seed)

    def apply(self, trained: State, global_state: State, client_id: int, round: int) -> State:
        """`trained` unchanged for honest clients, else global + corrupt(trained - global)."""
        if client_id not in self.ids:
            return trained
        delta = {k: np.subtract(trained[k], global_state[k], dtype=np.float32) for k in trained}
        bad = corrupt(self.cfg, delta, client_id, round, self.seed)
        return {k: np.add(global_state[k], bad[k], dtype=np.float32) for k in bad}
