"""`privacy=secagg`: secure aggregation (Bonawitz et al. 2017; SecAgg+ with `degree`), the
server learns only the weighted sum of the survivors' updates and the sum of their weights.

Client: clip the delta (optional L2 norm `clip_norm`; every coordinate to ``[-bound, bound]``),
encode ``[(w/W) x, (w/W) bound]`` in fixed point (``w`` its sample count, ``W`` the public cap:
the largest sample count of the round's cohort, or `max_weight`), mask it and send the
bit-packed ring vector. Server: the secure sum gives ``sum w_i x_i / W`` and
``bound sum w_i / W`` over exactly the clients in the sum, so the mean is
``sum w_i x_i / sum w_i`` even when clients drop out after masking (the bug of OpenFL #1407
was dividing by the weights of everyone who started). The ring is sized once, before the run,
for `max_clients` summands (fedbiomed #1210: a sum that silently wraps around).

Rounding is stochastic (unbiased) and seeded by the client's job seed, so a run is
reproducible: the masks cancel exactly and the sum is the plain fixed-point sum, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.context import RoundContext, RunContext
from fedray.core.errors import ConfigError
from fedray.core.registry import register
from fedray.core.types import Aggregate, Contribution, State, StateSpec, Update
from fedray.privacy import _secure
from fedray.privacy._secure import SecureSum, SecureSumOptions
from fedray.privacy._weighted import check_weight, clipped_flat, cohort_weight_cap
from fedray.privacy.base import CohortIO, Mechanism
from fedray.privacy.lib.masking import (
    MAX_BITS,
    MIN_BITS,
    FixedPointCodec,
    decode_weighted,
    encode_weighted,
)


@dataclass
class SecAggOptions(SecureSumOptions):
    """Options of `privacy=secagg` (and the secure-sum ones: degree, threshold, dropout...)."""

    name: str = "secagg"
    clip_norm: float | None = None  # L2 clip of each delta before encoding (null: off)
    bound: float = 1.0  # every coordinate clipped to [-bound, bound]; sizes the ring
    scale_bits: int = 24  # fixed-point resolution 2^-scale_bits of (w/W) x
    bits: int | None = None  # ring Z_2^bits; null: the fewest that hold max_clients summands
    max_weight: float | None = None  # public cap W on a weight; null: the cohort's largest

    def check(self) -> None:
        self.check_secure()
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm={self.clip_norm} must be > 0 or null")
        if not self.bound > 0:
            raise ValueError(f"bound={self.bound} must be > 0")
        if not 1 <= self.scale_bits <= 52:
            raise ValueError(f"scale_bits={self.scale_bits} must be in 1..52")
        if self.bits is not None and not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits={self.bits} must be in {MIN_BITS}..{MAX_BITS} or null")
        if self.max_weight is not None and not self.max_weight > 0:
            raise ValueError(f"max_weight={self.max_weight} must be > 0 or null")

    def check_against(self, spec: Any) -> str | None:
        n = self.summands(spec.mode.clients_per_round)
        if problem := self.graph_problem(n):
            return problem
        try:
            self.codec(n)
        except ValueError as exc:
            return f"{exc}" if self.bits is not None else f"scale_bits={self.scale_bits}: {exc}"
        return None

    def codec(self, summands: int) -> FixedPointCodec:
        """The fixed-point codec (ring size checked against `summands`)."""
        scale = float(2**self.scale_bits)
        if self.bits is None:
            return FixedPointCodec.tight(self.bound, scale, summands)
        return FixedPointCodec(self.bound, scale, self.bits, summands)


@dataclass(frozen=True)
class SecAggRound:
    """The round message: everything public a client needs to encode its update."""

    spec: StateSpec
    codec: FixedPointCodec
    max_weight: float
    clip_norm: float | None


@register("privacy", "secagg", SecAggOptions)
class SecAgg(Mechanism):
    """Secure aggregation of the sample-weighted mean; see the module docstring."""

    sum_only = True

    def __init__(self, options: SecAggOptions) -> None:
        self.options = options
        self.secure: SecureSum | None = None
        self.codec: FixedPointCodec | None = None
        self._round: SecAggRound | None = None

    def setup(self, ctx: RunContext) -> None:
        self.secure = SecureSum(self.options, ctx.seed)
        self.codec = self.options.codec(self.options.summands(ctx.cohort_size))

    def before_round(self, ctx: RoundContext, io: CohortIO) -> None:
        assert self.secure is not None and self.codec is not None, "setup() was not called"
        if ctx.spec is None:
            raise ConfigError("privacy=secagg needs mode=sync (rounds with a state layout)")
        if len(ctx.cohort) > self.codec.max_summands:
            raise ConfigError(
                f"round {ctx.round} has {len(ctx.cohort)} clients but the secure sum is sized "
                f"for privacy.max_clients={self.codec.max_summands}; raise it"
            )
        self._round = SecAggRound(
            ctx.spec,
            self.codec,
            cohort_weight_cap(ctx, self.options.max_weight),
            self.options.clip_norm,
        )
        self.secure.open(ctx, io, vector_length=ctx.spec.size + 1, bits=self.codec.bits)
        self.secure.transcript.record("round_message", None, self._round)

    def round_message(self, ctx: RoundContext) -> SecAggRound | None:
        return self._round

    def client_message(self, ctx: RoundContext, client_id: int) -> Any:
        assert self.secure is not None
        return self.secure.message(client_id)

    def client_phase(
        self, phase: str, *, client_id: int, round: int, message: Any, session: dict[str, Any]
    ) -> Any:
        return _secure.client_phase(phase, client_id=client_id, message=message, session=session)

    def encode(self, delta: State, *, weight: float, seed: int, msg: SecAggRound) -> np.ndarray:
        """The client's plain fixed-point ring vector (before masking)."""
        check_weight(weight, msg.max_weight)
        flat = clipped_flat(delta, msg.spec, msg.clip_norm)
        rng = np.random.default_rng([seed, 0x5ECA66])  # rounding: reproducible, not secret
        return encode_weighted(msg.codec, flat, weight, msg.max_weight, rng)

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
    ) -> np.ndarray:
        ring = self.encode(delta, weight=weight, seed=seed, msg=round_message)
        return _secure.mask(ring, client_id=client_id, delivery=client_message, session=session)

    def reduce(
        self,
        contributions: list[Contribution],
        updates: list[Update],
        ctx: RoundContext,
        io: CohortIO,
    ) -> Aggregate:
        assert self.secure is not None and self.codec is not None and self._round is not None
        msg = self._round
        result = self.secure.close(updates, ctx, io)
        summed = decode_weighted(self.codec, result.total, msg.max_weight)
        mean = msg.spec.unflatten(summed.mean.astype(np.float32))
        return Aggregate(mean, summed.total_weight, len(result.survivors))

    def metrics(self) -> dict[str, float]:
        if self.secure is None or self.codec is None:
            return {}
        return {**self.secure.metrics(), "privacy_ring_bits": float(self.codec.bits)}
