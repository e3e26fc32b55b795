"""The secure sum that `privacy=secagg` and `privacy=ddp` share: SecAgg / SecAgg+ (Bonawitz et
al. CCS 2017; Bell et al. CCS 2020, state machines in :mod:`fedray.privacy.lib.secagg_core`)
run through the round protocol's seams.

=====================  =====================================  ==================================
stage                  server (driver process)                client (its actor, `session`)
=====================  =====================================  ==================================
``before_round``       ``exchange(ADVERTISE, config)``        new ``ClientSession`` -> public keys
                       ``exchange(SHARE, keys of N(u))``      Shamir shares, encrypted per peer
``client_message``     the shares addressed to the client     (travel with its job)
``client_transform``                                          ring vector + masks -> bit-packed
``reduce``             sum the masked vectors,                shares of b_v (v survived) or of
                       ``exchange(UNMASK, who survived)``     s_sk_v (v dropped), never both
                       -> the ring sum of the survivors
=====================  =====================================  ==================================

A mechanism owns a :class:`SecureSum` (server half) and calls :func:`client_phase` and
:func:`mask` (client half); what it sums (fixed-point weighted updates, or rotated, rounded and
noised ones) is its own business. The driver only ever holds the public configuration, public
keys, encrypted shares, masked vectors, the shares the protocol asks for and the unmasked sum;
each client's secrets (``c_sk``, ``s_sk``, ``b_u``) live in its session, in its actor's memory,
and die with the round (a client whose actor dies is a dropout).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.context import RoundContext
from fedray.core.errors import QuorumError
from fedray.core.types import Update
from fedray.privacy._transcript import Transcript
from fedray.privacy.base import CohortIO
from fedray.privacy.lib.secagg_core import (
    AdvertiseKeys,
    AggregateResult,
    ClientSession,
    EncryptedShares,
    MaskedInput,
    SecAggAbort,
    SecAggConfig,
    ServerSession,
    SharesDelivery,
    UnmaskResponse,
)

ADVERTISE, SHARE, UNMASK = "secagg/advertise", "secagg/share", "secagg/unmask"
SESSION_KEY = "secagg"  # the client's ClientSession in its round session


@dataclass
class SecureSumOptions:
    """Options every secure-sum mechanism has (secagg, ddp)."""

    name: str = ""
    degree: int | None = None  # null: complete graph (Bonawitz); even k: SecAgg+ neighbours
    threshold: int | None = None  # shares to rebuild a secret; null: a strict majority of k
    dropout: float = 0.0  # simulated: this fraction of masked inputs never reaches the server
    max_clients: int | None = None  # the most clients summed (ring size); null: cohort size
    transcript: str | None = None  # directory: record all the server receives (audits)

    def check_secure(self) -> None:
        """One-line errors about the fields above."""
        if self.degree is not None and (self.degree < 2 or self.degree % 2):
            raise ValueError(f"degree={self.degree} must be an even number >= 2 or null")
        if self.threshold is not None and self.threshold < 1:
            raise ValueError(f"threshold={self.threshold} must be >= 1 or null")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.max_clients is not None and self.max_clients < 2:
            raise ValueError(f"max_clients={self.max_clients} must be >= 2 or null")

    def summands(self, clients_per_round: int) -> int:
        """The most clients whose vectors are summed (sizes the ring)."""
        return self.max_clients if self.max_clients is not None else clients_per_round

    def graph_problem(self, n: int) -> str | None:
        """Why the graph options cannot serve a cohort of `n`, or None."""
        if n < 2:
            return f"max_clients: secure aggregation needs at least 2 clients per round, not {n}"
        if self.degree is not None and self.degree >= n - 1:
            return f"degree={self.degree} must be below {n - 1} for {n} clients; or null"
        k = n - 1 if self.degree is None else self.degree
        if self.threshold is not None and self.threshold > k:
            return f"threshold={self.threshold} exceeds the {k} neighbours of a client"
        return None

    def dropped_after_masking(self, n: int) -> int:
        """How many of `n` masked inputs the simulated dropout removes (rounded half up)."""
        return int(self.dropout * n + 0.5)


# -- client half (in the client's actor) -------------------------------------------------------


def client_phase(phase: str, *, client_id: int, message: Any, session: dict[str, Any]) -> Any:
    """One secure-aggregation round trip of one client; its session keeps its secrets."""
    if phase == ADVERTISE:
        if not isinstance(message, SecAggConfig):
            raise ValueError("the advertise message must be the round's SecAggConfig")
        session[SESSION_KEY] = ClientSession(message, client_id)
        return session[SESSION_KEY].advertise_keys()
    mine = session.get(SESSION_KEY)
    if mine is None:  # e.g. its actor was replaced since the key exchange: a dropout
        raise SecAggAbort(f"client {client_id} has no secure-aggregation session this round")
    if phase == SHARE:
        return mine.share_keys(message)
    if phase == UNMASK:
        return mine.unmask(message)
    raise ValueError(f"unknown secure-aggregation phase {phase!r}")


def mask(ring: np.ndarray, *, client_id: int, delivery: Any, session: dict[str, Any]) -> np.ndarray:
    """The masked, bit-packed ring vector (the payload that travels), as a uint8 array."""
    mine = session.get(SESSION_KEY)
    if mine is None or not isinstance(delivery, SharesDelivery):
        raise SecAggAbort(
            f"client {client_id} missed this round's key exchange (it dropped out before "
            "masking); it cannot join the secure sum"
        )
    return np.frombuffer(mine.masked_input(delivery, ring).payload, dtype=np.uint8)


# -- server half (in the driver) ---------------------------------------------------------------


class SecureSum:
    """The server's side of one secure sum per round: key exchange, then unmasking."""

    def __init__(self, options: SecureSumOptions, seed: int) -> None:
        self.options = options
        self.seed = seed
        self.context = secrets.token_bytes(16)  # binds this run's keys and ciphertexts
        self.transcript = Transcript(options.transcript)
        self._server: ServerSession | None = None
        self._deliveries: dict[int, SharesDelivery] = {}
        self._figures: dict[str, float] = {}
        self._rejected = 0  # client messages the server session refused this round
        self.last_survivors: frozenset[int] = frozenset()  # whose inputs the last sum holds

    def open(
        self,
        ctx: RoundContext,
        io: CohortIO,
        *,
        vector_length: int,
        bits: int,
        min_survivors: int | None = None,
    ) -> None:
        """Rounds 0 and 1 of the protocol (advertise keys, share keys) with the cohort."""
        t0 = time.perf_counter()
        o, cohort = self.options, tuple(int(c) for c in ctx.cohort)
        config = SecAggConfig(
            round_id=ctx.round,
            clients=cohort,
            vector_length=vector_length,
            bits=bits,
            degree=o.degree,
            threshold=o.threshold,
            min_survivors=min_survivors,
            graph_seed=hashlib.sha256(f"fedray/graph/{self.seed}".encode()).digest(),
            context=self.context,
        )
        self.transcript.start(ctx.round, config)
        server = ServerSession(config)
        self._server, self._deliveries = server, {}
        up = down = 0
        self._rejected = 0
        try:
            keys = io.exchange(ADVERTISE, dict.fromkeys(cohort, config))
            up += self._feed(ADVERTISE, keys, AdvertiseKeys, server.receive_keys)
            broadcast = server.broadcast_keys()
            down += len(cohort) * _config_nbytes(config)
            down += sum(m.nbytes for m in broadcast.values())
            shares = io.exchange(SHARE, broadcast)
            up += self._feed(SHARE, shares, EncryptedShares, server.receive_shares)
            self._deliveries = server.deliver_shares()
        except SecAggAbort as exc:
            self._server = None
            self.transcript.flush()
            raise QuorumError(
                f"round {ctx.round}: secure aggregation cannot start: {exc}; lower "
                "privacy.threshold or check why clients fail (their actors died?)"
            ) from None
        down += sum(m.nbytes for m in self._deliveries.values())
        self._figures = {
            "privacy_keyed_clients": float(len(self._deliveries)),
            "privacy_bytes_up": float(up),
            "privacy_bytes_down": float(down),
            "privacy_setup_s": time.perf_counter() - t0,
        }

    def message(self, client_id: int) -> SharesDelivery | None:
        """The encrypted shares client `client_id` needs to mask its input (None: it dropped)."""
        return self._deliveries.get(client_id)

    def close(self, updates: list[Update], ctx: RoundContext, io: CohortIO) -> AggregateResult:
        """Rounds 2 and 3: sum the masked vectors that arrived, unmask with the survivors.

        The simulated dropout (`options.dropout`) removes a seeded share of the masked vectors
        before the server reads them: those clients count as dropped after masking. Raises
        ValueError (one line) when the round cannot be unmasked.
        """
        server, t0 = self._server, time.perf_counter()
        if server is None:
            raise ValueError("secure aggregation: no key exchange ran this round")
        self._server, self._deliveries = None, {}
        arrived = sorted(u.client_id for u in updates)
        rng = np.random.default_rng([self.seed, ctx.round, 0x5EC466])
        k = self.options.dropped_after_masking(len(arrived))
        simulated = {int(c) for c in rng.choice(arrived, size=k, replace=False)} if k else set()
        up = down = 0
        try:
            for u in sorted(updates, key=lambda u: u.client_id):
                payload = np.asarray(u.payload, dtype=np.uint8).tobytes()
                self.transcript.record("masked", u.client_id, payload)
                if u.client_id not in simulated:
                    masked = MaskedInput(ctx.round, u.client_id, payload)
                    self._rejected += not _accept(server.receive_masked_input, masked)
            requests = server.unmask_requests()
            down += sum(m.nbytes for m in requests.values())
            replies = io.exchange(UNMASK, requests)
            up += self._feed(UNMASK, replies, UnmaskResponse, server.receive_unmask)
            result = server.finalize()
        except SecAggAbort as exc:
            self.transcript.flush()
            raise ValueError(
                f"secure aggregation aborted the round: {exc}; a lower privacy.threshold "
                "tolerates more dropouts (and fewer colluders)"
            ) from None
        self.last_survivors = frozenset(result.survivors)
        self.transcript.record("sum", None, result)
        self.transcript.flush()
        self._figures.update(
            privacy_bytes_up=self._figures.get("privacy_bytes_up", 0.0) + up,
            privacy_bytes_down=self._figures.get("privacy_bytes_down", 0.0) + down,
            privacy_clients_summed=float(len(result.survivors)),
            privacy_dropped=float(len(result.dropped)),
            privacy_dropped_simulated=float(len(simulated)),
            privacy_unmask_s=time.perf_counter() - t0,
            privacy_rejected_messages=float(self._rejected),
        )
        return result

    def _feed(self, phase: str, replies: dict[int, Any], kind: type, receive: Any) -> int:
        """Record and feed the cohort's replies of one phase; the bytes of those accepted."""
        total = 0
        for cid, reply in sorted(replies.items()):
            self.transcript.record(phase, cid, reply)
            if isinstance(reply, kind) and reply.sender == cid and _accept(receive, reply):
                total += reply.nbytes
            else:
                self._rejected += 1
        return total

    def metrics(self) -> dict[str, float]:
        """The last round's figures: clients keyed and summed, protocol bytes and seconds."""
        return dict(self._figures)


def _accept(receive: Any, message: Any) -> bool:
    """Feed one client's message to the server session; False if it refused it (malformed or
    out of turn: that client is a dropout; the session is unchanged by a refused message)."""
    try:
        receive(message)
    except ValueError:
        return False
    return True


def _config_nbytes(config: SecAggConfig) -> int:
    """Wire size of the public round configuration: ids, sizes, graph seed and context."""
    return 8 * 6 + 4 * len(config.clients) + len(config.graph_seed) + len(config.context)
