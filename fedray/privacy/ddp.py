"""`privacy=ddp`: distributed DP (Kairouz, Liu, Steinke 2021; Agarwal, Kairouz, Liu 2021): each
client adds its share of discrete noise, and the secure sum of `privacy=secagg`
(:mod:`fedray.privacy._secure`) means the server only ever sees the noised sum.

Client: clip the delta to L2 norm `clip_norm`, rotate it (randomized Hadamard, seed public per
round), scale by 1/granularity, round conditionally (norm bound Delta2), add discrete Gaussian
(or Skellam) noise of per-client std sigma drawn from the OS (the server must not know it, so
ddp runs are not bit-reproducible), reduce mod 2^bits and mask. Server: unmask the sum, undo
the rotation and scaling: the sum of the clipped updates plus noise of std ``sqrt(n) sigma``
granularity per coordinate; the mean divides by the n clients in the sum (every client weighs
the same: sample-count weights would make one client's influence depend on its data size).

Accounting: :class:`~fedray.privacy.lib.ddp_accounting.DistributedDpAccountant` (add/remove
one client's update), one event per released sum with the number of noise shares in it. No
amplification by sampling: every round is composed as if every client took part (a valid,
conservative bound). The noise is sized for `min_shares` shares: the server refuses to unmask a
sum with fewer (so dropouts can never leave less noise than accounted), and with
`target_epsilon` sigma is calibrated for `min_shares` shares over `mode.rounds` rounds.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.checkpoint import check_state_keys
from fedray.core.context import RoundContext, RunContext
from fedray.core.errors import BudgetExhausted, ConfigError
from fedray.core.registry import register
from fedray.core.types import Aggregate, Contribution, State, StateSpec, Update
from fedray.privacy import _secure
from fedray.privacy._ddp_fit import fit_encoding
from fedray.privacy._secure import SecureSum, SecureSumOptions
from fedray.privacy.base import CohortIO, Mechanism
from fedray.privacy.lib.clipping import clip_to_norm
from fedray.privacy.lib.ddp_accounting import NOISES, DistributedDpAccountant
from fedray.privacy.lib.discrete import DdpEncoding


@dataclass
class DdpOptions(SecureSumOptions):
    """Options of `privacy=ddp` (and the secure-sum ones: degree, threshold, dropout...)."""

    name: str = "ddp"
    clip_norm: float = 0.1  # L2 bound of each client's delta (the sensitivity)
    noise: str = "discrete_gaussian"  # or skellam
    noise_multiplier: float | None = 1.0  # std of the summed noise / Delta2; null: calibrate
    target_epsilon: float | None = None  # calibrate sigma for this epsilon over mode.rounds
    delta: float = 1e-5
    max_epsilon: float | None = None  # stop the run before a round would pass it
    bits: int = 20  # ring Z_2^bits of the secure sum
    granularity: float | None = None  # rounding step gamma; null: the finest that fits bits
    min_shares: int | None = None  # noise shares guaranteed in a released sum; null: cohort

    def check(self) -> None:
        self.check_secure()
        if not self.clip_norm > 0:
            raise ValueError(f"clip_norm={self.clip_norm} must be > 0")
        if self.noise not in NOISES:
            raise ValueError(f"noise={self.noise!r} must be one of {', '.join(NOISES)}")
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError(
                f"target_epsilon={self.target_epsilon} needs noise_multiplier=null: set one of them"
            )
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("noise_multiplier=null needs a target_epsilon: set one of them")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier={self.noise_multiplier} must be > 0")
        for key in ("target_epsilon", "max_epsilon"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"{key}={value} must be > 0 or null")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta={self.delta} must be in (0, 1)")
        if not 16 <= self.bits <= 62:
            raise ValueError(f"bits={self.bits} must be in 16..62")
        if self.granularity is not None and not self.granularity > 0:
            raise ValueError(f"granularity={self.granularity} must be > 0 or null")
        if self.min_shares is not None and self.min_shares < 1:
            raise ValueError(f"min_shares={self.min_shares} must be >= 1 or null")

    def shares(self, n: int) -> int:
        """Noise shares guaranteed in every released sum."""
        return self.min_shares if self.min_shares is not None else n

    def check_against(self, spec: Any) -> str | None:
        n = self.summands(spec.mode.clients_per_round)
        if problem := self.graph_problem(n):
            return problem
        m = self.shares(n)
        if m > n:
            return f"min_shares={m} exceeds the {n} clients summed per round; lower it"
        left = spec.mode.clients_per_round - self.dropped_after_masking(spec.mode.clients_per_round)
        if left < m:
            return (
                f"dropout={self.dropout} leaves {left} noise shares but the noise is sized for "
                f"min_shares={m}; set privacy.min_shares <= {left}"
            )
        if spec.selection.name == "power_of_choice":
            return (
                "name=ddp cannot run with selection=power_of_choice, which picks clients by "
                "their training losses: the accountant assumes data-independent selection"
            )
        return None


@dataclass(frozen=True)
class DdpRound:
    """The round message: what a client needs to encode and noise its update."""

    spec: StateSpec
    encoding: DdpEncoding
    rotation_seed: int
    clip_norm: float


def _layout(spec: StateSpec) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """The discrete module's flat layout (sorted keys, float32) of `spec`."""
    return tuple((k, s, "<f4") for k, s in sorted(zip(spec.keys, spec.shapes, strict=True)))


@register("privacy", "ddp", DdpOptions)
class Ddp(Mechanism):
    """Distributed discrete-Gaussian / Skellam DP over secure aggregation."""

    sum_only = True
    reveals_client_metrics = False  # a client's loss is not covered by the accountant

    def __init__(self, options: DdpOptions) -> None:
        self.options = options
        self.secure: SecureSum | None = None
        self.run: RunContext | None = None
        self.encoding: DdpEncoding | None = None
        self.accountant: DistributedDpAccountant | None = None
        self._restored: dict[str, Any] | None = None
        self._round: DdpRound | None = None
        self._epsilon = 0.0

    def setup(self, ctx: RunContext) -> None:
        self.secure = SecureSum(self.options, ctx.seed)
        self.run = ctx

    @property
    def local_std(self) -> float:
        """Each client's noise std, in rounded units."""
        assert self.encoding is not None
        return self.encoding.local_std

    def _configure(self, spec: StateSpec) -> None:
        """Size the encoding and the noise for the state layout (once per run)."""
        assert self.run is not None
        o = self.options
        n = o.summands(self.run.cohort_size)
        try:
            self.encoding = fit_encoding(
                o, dim=spec.size, n=n, shares=o.shares(n), rounds=self.run.rounds
            )
        except ValueError as exc:
            raise ConfigError(f"privacy: {exc}") from None
        enc = self.encoding
        self.accountant = DistributedDpAccountant(
            noise=o.noise, dim=enc.padded_dim, l2_sensitivity=enc.l2_sensitivity
        )
        if self._restored is not None:
            self.accountant.load_state_dict(self._restored)
            self._restored = None
        self._epsilon = self.accountant.epsilon(o.delta)
        self._dim = spec.size

    def before_round(self, ctx: RoundContext, io: CohortIO) -> None:
        assert self.secure is not None and self.run is not None, "setup() was not called"
        if ctx.spec is None:
            raise ConfigError("privacy=ddp needs mode=sync (rounds with a state layout)")
        if self.encoding is None:
            self._configure(ctx.spec)
        elif ctx.spec.size != self._dim:
            raise ConfigError(f"the update size changed from {self._dim} to {ctx.spec.size}")
        enc, o = self.encoding, self.options
        assert enc is not None and self.accountant is not None
        if len(ctx.cohort) > enc.n_clients:
            raise ConfigError(
                f"round {ctx.round} has {len(ctx.cohort)} clients but the encoding is sized for "
                f"privacy.max_clients={enc.n_clients}; raise it"
            )
        shares = o.shares(enc.n_clients)
        if o.max_epsilon is not None:
            probe = DistributedDpAccountant.from_state_dict(self.accountant.state_dict())
            probe.step(enc.local_std, shares)
            spent = probe.epsilon(o.delta)
            if spent > o.max_epsilon:
                raise BudgetExhausted(
                    f"privacy.max_epsilon={o.max_epsilon:g}: round {ctx.round} would bring "
                    f"epsilon to {spent:.4g} (delta={o.delta:g}); the run stops before it"
                )
        seed = hashlib.sha256(f"fedray/ddp/rotation/{self.run.seed}/{ctx.round}".encode())
        rotation = int.from_bytes(seed.digest()[:8], "big") >> 1
        self._round = DdpRound(ctx.spec, enc, rotation, o.clip_norm)
        self.secure.open(
            ctx, io, vector_length=enc.padded_dim, bits=enc.bits, min_survivors=max(2, shares)
        )
        self.secure.transcript.record("round_message", None, self._round)

    def round_message(self, ctx: RoundContext) -> DdpRound | None:
        return self._round

    def client_message(self, ctx: RoundContext, client_id: int) -> Any:
        assert self.secure is not None
        return self.secure.message(client_id)

    def client_phase(
        self, phase: str, *, client_id: int, round: int, message: Any, session: dict[str, Any]
    ) -> Any:
        return _secure.client_phase(phase, client_id=client_id, message=message, session=session)

    @staticmethod
    def encode(delta: State, msg: DdpRound, rng: np.random.Generator) -> np.ndarray:
        """Clip, rotate, scale, round and noise `delta`: the client's ring vector."""
        clipped, _ = clip_to_norm({k: np.asarray(delta[k]) for k in msg.spec.keys}, msg.clip_norm)
        return msg.encoding.encode(clipped, rotation_seed=msg.rotation_seed, rng=rng)

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
        rng = np.random.default_rng(secrets.randbits(128))  # never the run seed: the server has it
        ring = self.encode(delta, round_message, rng)
        return _secure.mask(ring, client_id=client_id, delivery=client_message, session=session)

    def reduce(
        self,
        contributions: list[Contribution],
        updates: list[Update],
        ctx: RoundContext,
        io: CohortIO,
    ) -> Aggregate:
        assert self.secure is not None and self._round is not None
        msg = self._round
        result = self.secure.close(updates, ctx, io)
        n = len(result.survivors)
        total = msg.encoding.decode(
            result.total.astype(np.uint64), _layout(msg.spec), rotation_seed=msg.rotation_seed
        )
        mean = {k: (total[k] / np.float32(n)).astype(np.float32) for k in msg.spec.keys}
        return Aggregate(mean, float(n), n)

    def after_round(self, ctx: RoundContext, aggregate: Aggregate) -> None:
        assert self.accountant is not None and self.encoding is not None
        self.accountant.step(self.encoding.local_std, aggregate.count)
        self._epsilon = self.accountant.epsilon(self.options.delta)

    def metrics(self) -> dict[str, float]:
        if self.secure is None or self.encoding is None:
            return {}
        enc = self.encoding
        shares = self.options.shares(enc.n_clients)
        return {
            **self.secure.metrics(),
            "epsilon": self._epsilon,
            "privacy_local_noise_std": enc.local_std,
            "privacy_noise_multiplier": math.sqrt(shares) * enc.local_std / enc.l2_sensitivity,
            "privacy_granularity": enc.gamma,
            "privacy_l2_sensitivity": enc.l2_sensitivity,
            "privacy_padded_dim": float(enc.padded_dim),
            "privacy_ring_bits": float(enc.bits),
        }

    def state_dict(self) -> dict[str, Any]:
        if self.accountant is not None:
            return {"accountant": self.accountant.state_dict()}
        return {"accountant": self._restored}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"accountant"}, state, type(self).__name__)
        self._restored = state["accountant"]
        self.encoding, self.accountant = None, None  # rebuilt, then restored, by the next round
