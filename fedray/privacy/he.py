"""`privacy=he`: additively homomorphic aggregation with CKKS (TenSEAL / Microsoft SEAL; packing
and wire format in :mod:`fedray.privacy.lib.ckks`).

A key holder, a separate Ray actor started by :meth:`HomomorphicSum.setup`, makes the keys; the
driver only gets the public context and puts it in the object store once. Each client encrypts
``[(w/W) clip(x), (w/W) bound]`` (all values of the trainable state packed across layer
boundaries, two per complex slot), the driver adds the ciphertexts without any key and sends
only the encrypted sum to the key holder, which decrypts it: the mean is ``sum w_i x_i / sum
w_i`` over the clients whose ciphertexts arrived.

Threat model: an honest-but-curious server that does not collude with the key holder. The
decrypted sum is approximate: each value is within ``CkksParams.error_bound(n)`` of the exact
sum of n clients' (clipped, weighted) values.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedray.core.context import RoundContext, RunContext
from fedray.core.errors import ConfigError
from fedray.core.registry import register
from fedray.core.types import Aggregate, Contribution, State, StateSpec, Update
from fedray.privacy._transcript import Transcript
from fedray.privacy._weighted import (
    clipped_flat,
    cohort_weight_cap,
    split_weighted,
    weighted_vector,
)
from fedray.privacy.base import CohortIO, Mechanism


@dataclass
class HeOptions:
    """Options of `privacy=he`."""

    name: str = "he"
    clip_norm: float | None = None  # L2 clip of each delta before encrypting (null: off)
    bound: float = 1.0  # every value clipped to [-bound, bound]; sets the CKKS headroom
    poly_modulus_degree: int = 4096  # N: 4096 values per ciphertext (two per complex slot)
    coeff_mod_bit_sizes: list[int] = field(default_factory=lambda: [50, 59])  # 128-bit secure
    scale_bits: int = 38  # precision: about 1e-8 per value and client
    max_weight: float | None = None  # public cap W on a weight; null: the cohort's largest
    max_clients: int | None = None  # the most ciphertexts summed; null: mode.clients_per_round
    min_summands: int = 2  # the key holder refuses to decrypt a sum of fewer ciphertexts
    transcript: str | None = None  # directory: record all the server receives (audits)

    def params(self, summands: int) -> Any:
        """The CKKS parameters (ValueError, one line, if they cannot hold the sum)."""
        from fedray.privacy.lib.ckks import CkksParams

        return CkksParams(
            poly_modulus_degree=self.poly_modulus_degree,
            coeff_mod_bit_sizes=tuple(self.coeff_mod_bit_sizes),
            scale_bits=self.scale_bits,
            bound=self.bound,
            max_summands=summands,
        )

    def check(self) -> None:
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm={self.clip_norm} must be > 0 or null")
        if self.max_weight is not None and not self.max_weight > 0:
            raise ValueError(f"max_weight={self.max_weight} must be > 0 or null")
        if self.max_clients is not None and self.max_clients < 2:
            raise ValueError(f"max_clients={self.max_clients} must be >= 2 or null")
        if self.min_summands < 2:
            raise ValueError(f"min_summands={self.min_summands} must be >= 2")
        self.params(self.max_clients or 2)

    def check_against(self, spec: Any) -> str | None:
        n = self.max_clients or spec.mode.clients_per_round
        if n < 2:
            return f"max_clients: homomorphic aggregation needs at least 2 clients, not {n}"
        if self.min_summands > n:
            return f"min_summands={self.min_summands} exceeds the {n} clients per round"
        try:
            self.params(n)
        except ValueError as exc:
            return f"scale_bits={self.scale_bits}: {exc}"
        return None


@dataclass(frozen=True)
class HeRound:
    """The round message: the public context (an object ref, put once) and the weighting."""

    spec: StateSpec
    key_id: bytes
    context: Any  # ray.ObjectRef of the public context bytes
    max_weight: float
    bound: float
    clip_norm: float | None


@register("privacy", "he", HeOptions)
class HomomorphicSum(Mechanism):
    """CKKS sum of the weighted updates, decrypted by a separate key-holder actor."""

    sum_only = True

    def __init__(self, options: HeOptions) -> None:
        self.options = options
        self.transcript = Transcript(options.transcript)
        self.holder: Any = None  # the key holder's actor handle (driver side, after setup)
        self.params: Any = None  # CkksParams
        self.summands = 0  # the most ciphertexts a sum may hold
        self._context_ref: Any = None
        self._key_id = b""
        self._public_bytes = b""
        self._holder_pid = -1
        self._round: HeRound | None = None
        self._publics: dict[bytes, Any] = {}  # client side: key id -> CkksPublic
        self._figures: dict[str, float] = {}

    def setup(self, ctx: RunContext) -> None:
        import ray

        from fedray.privacy._keyholder import KeyHolder
        from fedray.privacy.lib.ckks import CkksPublic

        o = self.options
        self.summands = o.max_clients or ctx.cohort_size
        params = o.params(self.summands)
        holder = ray.remote(KeyHolder).options(num_cpus=0, max_restarts=0)
        self.holder = holder.remote(asdict(params), o.min_summands)
        public = ray.get(self.holder.public_context.remote())
        self.params = params
        self._key_id = CkksPublic(public).key_id  # parses it: a public context, checked
        self._public_bytes = public  # public: what the transcript shows the driver holds
        self._context_ref = ray.put(public)
        self._holder_pid = int(ray.get(self.holder.pid.remote()))
        self._figures = {"he_context_bytes": float(len(public))}

    def before_round(self, ctx: RoundContext, io: CohortIO) -> None:
        if ctx.spec is None:
            raise ConfigError("privacy=he needs mode=sync (rounds with a state layout)")
        if len(ctx.cohort) > self.summands:
            raise ConfigError(
                f"round {ctx.round} has {len(ctx.cohort)} clients but the CKKS parameters hold "
                f"privacy.max_clients={self.summands}; raise it"
            )
        o = self.options
        cap = cohort_weight_cap(ctx, o.max_weight)
        self._round = HeRound(ctx.spec, self._key_id, self._context_ref, cap, o.bound, o.clip_norm)
        self.transcript.start(
            ctx.round,
            {
                "public_context": self._public_bytes,
                "key_holder_pid": self._holder_pid,
                "max_weight": cap,
                "bound": o.bound,
            },
        )

    def round_message(self, ctx: RoundContext) -> HeRound | None:
        return self._round

    # -- client --------------------------------------------------------------------------------
    def _public(self, msg: HeRound) -> Any:
        """The client's encryptor for the round's key (fetched once per actor and key)."""
        if msg.key_id not in self._publics:
            import ray

            from fedray.privacy.lib.ckks import CkksPublic

            self._publics = {msg.key_id: CkksPublic(ray.get(msg.context))}
        return self._publics[msg.key_id]

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
        msg: HeRound = round_message
        flat = clipped_flat(delta, msg.spec, msg.clip_norm)
        vector = weighted_vector(flat, weight, msg.max_weight, msg.bound)
        return np.frombuffer(self._public(msg).encrypt(vector), dtype=np.uint8)

    # -- server --------------------------------------------------------------------------------
    def reduce(
        self,
        contributions: list[Contribution],
        updates: list[Update],
        ctx: RoundContext,
        io: CohortIO,
    ) -> Aggregate:
        import ray

        from fedray.privacy.lib.ckks_format import CkksAccumulator

        assert self._round is not None and self.holder is not None, "setup() was not called"
        msg, t0 = self._round, time.perf_counter()
        acc, summed, sizes = CkksAccumulator(), [], []
        for u in sorted(updates, key=lambda u: u.client_id):
            blob = np.asarray(u.payload, dtype=np.uint8).tobytes()
            self.transcript.record("encrypted", u.client_id, blob)
            try:
                acc.add(blob)
            except ValueError:  # malformed, or under another key: that client is dropped
                continue
            summed.append(u.client_id)
            sizes.append(len(blob))
        if not summed:
            raise ValueError("homomorphic aggregation: no well-formed ciphertext arrived")
        t1 = time.perf_counter()
        try:
            total = ray.get(self.holder.decrypt_sum.remote(acc.result()))
        except ray.exceptions.RayTaskError as exc:
            raise ValueError(f"the key holder refused: {exc.cause}") from None
        except ray.exceptions.RayActorError:
            raise ValueError("the key holder actor died; the run cannot decrypt") from None
        self.transcript.record("decrypted_sum", None, total)
        self.transcript.flush()
        weighted, weight = split_weighted(total, msg.max_weight, msg.bound)
        if not weight > 0:
            raise ValueError("homomorphic aggregation: the decrypted total weight is not > 0")
        mean = msg.spec.unflatten((weighted / weight).astype(np.float32))
        self._figures.update(
            privacy_clients_summed=float(len(summed)),
            he_expansion=float(np.mean(sizes)) / (4.0 * msg.spec.size),
            he_add_s=t1 - t0,
            he_decrypt_s=time.perf_counter() - t1,
        )
        return Aggregate(mean, weight, len(summed))

    def metrics(self) -> dict[str, float]:
        return dict(self._figures)
