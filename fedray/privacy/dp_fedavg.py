"""`privacy=dp_fedavg`: client-level DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018), central
Gaussian noise added by a trusted server.

Per round, with clip norm C and noise multiplier z:

1. each client clips its delta to L2 norm C before encoding (cheap, bounded payloads) and
   reports one bit, 1[||delta|| <= C] (the adaptive clip's count, and `clipped_fraction`);
2. the server decodes each update and clips it to C again: a lossy codec can grow a norm
   (``Chain.can_grow_norm``), and the sensitivity bound must hold for what is summed;
3. it sums them with bounded weights w_i (``uniform``: 1; ``capped``: min(n_i / weight_cap, 1)),
   so one client moves the sum by at most w_max C = C, adds N(0, (z_D C w_max)^2) to every
   coordinate, and divides by the fixed expected weight q W (W = sum of all clients' weights,
   q = cohort / population), not by the realized total, which would depend on who took part;
4. the accountant records one round of the sampled Gaussian mechanism with multiplier z
   (:class:`~fedray.privacy.lib.accounting.DpAccountant`: PLD for Poisson sampling, RDP for
   fixed-size cohorts), and the adaptive clip (Andrew et al. 2021) moves C towards the target
   quantile of the update norms from the noised bit count, within [min_clip, max_clip] when
   those are set (under heavy noise the clip can run away, and the noise std grows with it).
   Releasing that count is part of the same Gaussian mechanism: the update sum is noised with
   z_D = split_noise_multiplier(z, sigma_b) and the accountant is charged z; the bounds are
   post-processing of it and cost nothing.

Every round is released, whatever the number of updates that arrive (an empty Poisson cohort
releases noise only): skipping a round would reveal that nobody took part. The guarantee
(epsilon, delta) covers the sequence of released models (and clips); the per-round diagnostics
(train_loss, clipped_fraction, client counts) are the trusted server's view and are not noised.
Noise is drawn from generators seeded by (run seed, round), so a resumed run releases the same
models and epsilon as one that never stopped (the clip bounds are settings of the run's config,
which a resume reuses). The options and their checks: :mod:`fedray.privacy._dp_fedavg_options`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from fedray.core.checkpoint import check_state_keys
from fedray.core.context import RoundContext, RunContext
from fedray.core.errors import BudgetExhausted
from fedray.core.registry import register
from fedray.core.statemath import weighted_sum
from fedray.core.types import Aggregate, Contribution, State, StateSpec, Update
from fedray.privacy._dp_fedavg_options import ACCOUNTABLE, DpFedAvgOptions
from fedray.privacy.base import CohortIO, Mechanism
from fedray.privacy.lib.accounting import POISSON, DpAccountant, calibrate_noise_multiplier
from fedray.privacy.lib.clipping import AdaptiveClip, clip_to_norm, split_noise_multiplier

BIT = "dp_clip_bit"  # what a client reports beside its update: 1.0 if its norm was <= C
_NOISE_STREAM, _COUNT_STREAM = 0x4E4F4953, 0x434F554E  # "NOIS", "COUN"


@register("privacy", "dp_fedavg", DpFedAvgOptions)
class DpFedAvg(Mechanism):
    """Client-level DP-FedAvg with fixed or adaptive clipping (see the module docstring)."""

    aggregates_any_cohort = True

    def __init__(self, options: DpFedAvgOptions) -> None:
        self.options = options
        self.run: RunContext | None = None
        self.accountant: DpAccountant | None = None
        self.noise_multiplier = 0.0  # z, what the accountant is charged
        self.update_noise_multiplier = 0.0  # z_D, what the update sum gets
        self.delta = 0.0
        self.denominator = 1.0  # q W
        self.w_max = 1.0
        self.clip = float(options.clip)
        self.adaptive: AdaptiveClip | None = None
        self._round: dict[str, float] = {}
        self._bits: list[float] = []

    # -- server: run set-up ----------------------------------------------------------------
    def setup(self, ctx: RunContext) -> None:
        """Accountant for the run's sampling, z (given or calibrated), weights, denominator."""
        o = self.options
        n, m = ctx.population, ctx.cohort_size
        if ctx.sampling not in ACCOUNTABLE:
            raise ValueError(f"privacy=dp_fedavg cannot account cohorts drawn by {ctx.sampling}")
        q = ctx.sampling_rate
        sampling = ACCOUNTABLE[ctx.sampling]
        kw: dict[str, Any] = (
            {"sampling_rate": q} if sampling == POISSON else {"cohort_size": m, "population": n}
        )
        self.run = ctx
        self.delta = o.delta if o.delta is not None else 1.0 / n**1.1
        self.accountant = DpAccountant(
            sampling=sampling, value_discretization_interval=o.accounting_resolution, **kw
        )
        if o.noise_multiplier is not None:
            self.noise_multiplier = float(o.noise_multiplier)
        else:
            assert o.target_epsilon is not None
            with quiet_rdp():
                self.noise_multiplier = calibrate_noise_multiplier(
                    o.target_epsilon,
                    self.delta,
                    ctx.rounds,
                    sampling=sampling,
                    value_discretization_interval=o.accounting_resolution,
                    **kw,
                )
        weights = self._population_weights(ctx)
        self.w_max = 1.0  # every weight is min(., 1), and 1 is reached (uniform) or allowed
        self.denominator = q * float(np.sum(weights))
        self.update_noise_multiplier = self.noise_multiplier
        if o.adaptive:
            sigma_b = o.count_std(m)
            self.adaptive = AdaptiveClip(
                o.clip,
                m,
                target_quantile=o.target_quantile,
                learning_rate=o.clip_learning_rate,
                count_noise_std=sigma_b,
                min_clip=o.min_clip,
                max_clip=o.max_clip,
            )
            if self.noise_multiplier > 0:
                self.update_noise_multiplier = split_noise_multiplier(
                    self.noise_multiplier, sigma_b
                )

    def _population_weights(self, ctx: RunContext) -> np.ndarray:
        if self.options.weighting == "uniform":
            return np.ones(ctx.population)
        if len(ctx.client_sizes) != ctx.population:
            raise ValueError(
                "privacy.weighting=capped needs every client's size to fix the denominator; "
                "the run context has none"
            )
        return self.weights(np.asarray(ctx.client_sizes, dtype=np.float64))

    def weights(self, num_samples: np.ndarray) -> np.ndarray:
        """w_i in (0, 1]: 1 (uniform) or min(n_i / weight_cap, 1) (capped)."""
        if self.options.weighting == "uniform":
            return np.ones(len(num_samples))
        return np.minimum(np.asarray(num_samples, np.float64) / self.options.weight_cap, 1.0)

    def _ready(self) -> DpAccountant:
        if self.accountant is None:
            raise RuntimeError("privacy=dp_fedavg: setup(run context) was not called")
        return self.accountant

    # -- server: round ---------------------------------------------------------------------
    def before_round(self, ctx: RoundContext, io: CohortIO) -> None:
        acc, cap = self._ready(), self.options.max_epsilon
        if cap is not None and acc.would_exceed(cap, self.delta, self.noise_multiplier):
            spent = acc.epsilon(self.delta)
            after = acc.epsilon_after(self.delta, self.noise_multiplier)
            raise BudgetExhausted(
                f"privacy.max_epsilon={cap:g} reached: round {ctx.round} would bring epsilon "
                f"from {spent:.4g} to {after:.4g} at delta={self.delta:.3g}"
            )

    def round_message(self, ctx: RoundContext) -> float:
        """The clip norm every client of the round applies."""
        return self.current_clip

    @property
    def current_clip(self) -> float:
        """C for the next (or current) round."""
        return self.adaptive.clip if self.adaptive is not None else self.clip

    # -- client ----------------------------------------------------------------------------
    def client_transform(
        self,
        delta: State,
        *,
        weight: float,
        client_id: int,
        round: int,
        seed: int,
        round_message: Any,
        client_message: Any,
        session: dict[str, Any],
    ) -> State:
        """Clip to the round's C; remember whether the update was already within it."""
        clipped, norm = clip_to_norm(delta, float(round_message))
        session[BIT] = float(norm <= float(round_message))
        return clipped

    def client_finish(
        self, *, client_id: int, round: int, state: Any, session: dict[str, Any]
    ) -> tuple[Any, dict[str, float]]:
        return state, {BIT: float(session.pop(BIT))}

    # -- server: aggregate -----------------------------------------------------------------
    def noise_std(self) -> float:
        """Std of the Gaussian noise on each coordinate of the weighted sum: z_D C w_max."""
        return self.update_noise_multiplier * self.current_clip * self.w_max

    def reduce(
        self,
        contributions: list[Contribution],
        updates: list[Update],
        ctx: RoundContext,
        io: CohortIO,
    ) -> Aggregate:
        """(sum_i w_i clip_C(delta_i) + N(0, noise_std^2)) / (q W)."""
        if ctx.spec is None:
            raise RuntimeError("privacy=dp_fedavg: the round context carries no state spec")
        clip = self.current_clip
        reported = {u.client_id: u.metrics.get(BIT) for u in updates}
        clipped, server_clipped = [], 0
        for c in contributions:
            delta, norm = clip_to_norm(c.delta, clip)  # a lossy codec may have grown the norm
            server_clipped += norm > clip
            clipped.append(delta)
        weights = self.weights(np.array([c.num_samples for c in contributions]))
        flat = np.zeros(ctx.spec.size, np.float64)
        if clipped:
            flat += ctx.spec.flatten(weighted_sum(clipped, weights.tolist()))
        std = self.noise_std()
        if std > 0:
            flat += self._rng(ctx.round, _NOISE_STREAM).normal(0.0, std, ctx.spec.size)
        mean = _unflatten(ctx.spec, flat / self.denominator)
        bits = [reported.get(c.client_id) for c in contributions]
        if any(b is None for b in bits):
            raise ValueError(f"some updates carry no {BIT}: were they made by privacy=dp_fedavg?")
        self._bits = [float(b) for b in bits]  # type: ignore[arg-type]
        self._round = {
            "clip": clip,
            "clipped_fraction": 1.0 - float(np.mean(self._bits)) if self._bits else 0.0,
            "server_clipped": float(server_clipped),
            "noise_std": std / self.denominator,
        }
        return Aggregate(mean, self.denominator, len(contributions))

    def _rng(self, round: int, stream: int) -> np.random.Generator:
        assert self.run is not None
        return np.random.default_rng([self.run.seed, round, stream])

    def after_round(self, ctx: RoundContext, aggregate: Aggregate) -> None:
        """Charge the accountant one round at z; move the adaptive clip."""
        self._ready().step(self.noise_multiplier)
        if self.adaptive is not None:
            centred = sum(self._bits) - 0.5 * len(self._bits)
            self.adaptive.update_from_sum(centred, self._rng(ctx.round, _COUNT_STREAM))

    def metrics(self) -> dict[str, float]:
        acc = self._ready()
        with quiet_rdp():
            rdp = acc.epsilon_rdp(self.delta)
        out = {
            "epsilon": acc.epsilon(self.delta),
            "epsilon_rdp": rdp,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
        }
        out.update(self._round)
        return out

    # -- checkpoint ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "accountant": self._ready().state_dict(),
            "noise_multiplier": self.noise_multiplier,
            "adaptive": None if self.adaptive is None else self.adaptive.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"accountant", "noise_multiplier", "adaptive"}, state, "DpFedAvg")
        acc = self._ready()
        if state["noise_multiplier"] != self.noise_multiplier:
            raise ValueError(
                f"DpFedAvg.load_state_dict: the checkpoint ran at noise_multiplier="
                f"{state['noise_multiplier']!r}, this run at {self.noise_multiplier!r}; resume "
                "with the checkpoint's privacy settings"
            )
        if (state["adaptive"] is None) != (self.adaptive is None):
            raise ValueError(
                "DpFedAvg.load_state_dict: privacy.adaptive differs from the checkpoint"
            )
        acc.load_state_dict(state["accountant"])
        if self.adaptive is not None:
            self.adaptive.load_state_dict(state["adaptive"])


@contextmanager
def quiet_rdp() -> Iterator[None]:
    """Silence dp_accounting's RDP warnings about fractional orders it skips (one per order and
    call, every round); the skipped orders only make the reported bound less tight."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _unflatten(spec: StateSpec, flat: np.ndarray) -> State:
    """A float32 :data:`State` (views of one new array) from a flat vector in spec order."""
    return spec.unflatten(flat.astype(np.float32))
