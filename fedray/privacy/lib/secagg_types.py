"""Secure aggregation: round configuration, the SecAgg+ neighbour graph and the protocol messages.

The state machines that produce and consume these messages are in :mod:`secagg_core`, which
documents the protocol (Bonawitz et al. CCS 2017; Bell et al. CCS 2020). Everything in this
module is public information: a message never carries a secret in the clear.

Neighbour graph (SecAgg+, Bell et al. Sec. 3): with ``degree=None`` every client is every other
client's neighbour (the complete graph of Bonawitz et al.). With an even ``degree = k`` the
clients are placed on a ring in a pseudorandom order derived from public data (context, round,
``graph_seed``) and each is joined to the ``k/2`` nearest on either side: a random Harary graph
``H(k, n)``, k-regular and k-connected. ``k = O(log n)`` (:func:`sparse_degree`) keeps a
client's work and traffic logarithmic in the number of clients.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .masking import check_bits, derive_key

MAX_CLIENT_ID = 2**32 - 2  # share index = client id + 1 must fit the 4-byte share index


class SecAggAbort(RuntimeError):
    """The round cannot finish safely (too few clients or shares, an inconsistent message)."""


def sparse_degree(n: int, factor: float = 3.0) -> int | None:
    """An even SecAgg+ degree ~ ``factor * log2(n)``, or None (complete) when that reaches n-1."""
    if n < 2:
        raise ValueError(f"n={n}: secure aggregation needs at least 2 clients")
    k = 2 * math.ceil(factor * math.log2(n) / 2)
    return None if k >= n - 1 else k


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one secure-aggregation round, identical at the server and clients."""

    round_id: int
    clients: tuple[int, ...]
    """The clients sampled for this round (distinct ids in ``0..2**32-2``)."""
    vector_length: int
    """Ring elements per client (the encoded update, plus one for a weight coordinate)."""
    bits: int
    """Ring ``Z_{2**bits}``: as from :class:`masking.FixedPointCodec`."""
    degree: int | None = None
    """Neighbours per client: None for the complete graph, an even k for SecAgg+."""
    threshold: int | None = None
    """Shares needed to reconstruct a client's secrets; default a strict majority of k."""
    min_survivors: int | None = None
    """Fewest masked inputs the server may unmask; default ``max(2, threshold)``."""
    graph_seed: bytes = b""
    """Public randomness for the SecAgg+ graph (fixed before the server sees any key)."""
    context: bytes = b""
    """Run identifier bound into every derived key and ciphertext (e.g. the run id)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "clients", tuple(sorted(self.clients)))
        ids = self.clients
        if not isinstance(self.round_id, int) or not 0 <= self.round_id < 2**63:
            raise ValueError(f"round_id={self.round_id!r} must be an integer in 0..2**63-1")
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise ValueError("clients must list at least 2 distinct client ids")
        if any(not isinstance(c, int | np.integer) or not 0 <= c <= MAX_CLIENT_ID for c in ids):
            raise ValueError(f"client ids must be integers in 0..{MAX_CLIENT_ID}")
        if not isinstance(self.vector_length, int) or self.vector_length < 1:
            raise ValueError(f"vector_length={self.vector_length!r} must be an integer >= 1")
        check_bits(self.bits)
        n = len(ids)
        if self.degree is not None and (self.degree < 2 or self.degree % 2 or self.degree >= n - 1):
            raise ValueError(
                f"degree={self.degree} must be even and in 2..{n - 2} for {n} clients; "
                "use None for the complete graph"
            )
        k = self.k
        if self.threshold is not None and not 1 <= self.threshold <= k:
            raise ValueError(f"threshold={self.threshold} must be in 1..{k} (the degree)")
        if self.min_survivors is not None and not 2 <= self.min_survivors <= n:
            raise ValueError(f"min_survivors={self.min_survivors} must be in 2..{n}")
        if len(self.context) > 1024 or len(self.graph_seed) > 1024:
            raise ValueError("context and graph_seed must be at most 1024 bytes")

    @property
    def k(self) -> int:
        """Neighbours per client."""
        return len(self.clients) - 1 if self.degree is None else self.degree

    @property
    def t(self) -> int:
        """Shares needed to reconstruct one secret."""
        return self.threshold if self.threshold is not None else self.k // 2 + 1

    @property
    def min_clients(self) -> int:
        """Fewest clients that may be left at any step before the server aborts."""
        return self.min_survivors if self.min_survivors is not None else max(2, self.t)

    @cached_property
    def graph(self) -> Mapping[int, frozenset[int]]:
        """Each client's neighbours (symmetric, no self-loops)."""
        ids = self.clients
        if self.degree is None:
            everyone = frozenset(ids)
            return {c: everyone - {c} for c in ids}
        key = hashlib.sha256(
            b"fedray/secagg/graph/v1"
            + len(self.context).to_bytes(4, "big")
            + self.context
            + self.round_id.to_bytes(8, "big", signed=True)
            + self.graph_seed
        ).digest()
        ring = sorted(ids, key=lambda c: hashlib.sha256(key + int(c).to_bytes(4, "big")).digest())
        n, half = len(ring), self.degree // 2
        return {
            c: frozenset(ring[(i + d) % n] for d in range(-half, half + 1) if d)
            for i, c in enumerate(ring)
        }


def _bytes_of(mapping: Mapping[int, bytes | tuple[bytes, ...]]) -> int:
    total = 0
    for value in mapping.values():
        total += 4 + (len(value) if isinstance(value, bytes) else sum(len(v) for v in value))
    return total


_HEADER = 16  # round id (8) + client id (4) + message type and length (4), for nbytes


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, client -> server: the two public keys of a client."""

    round_id: int
    sender: int
    c_pk: bytes
    """Key-agreement key for encrypting shares."""
    s_pk: bytes
    """Key-agreement key for the pairwise masks."""

    @property
    def nbytes(self) -> int:
        """Wire size."""
        return _HEADER + len(self.c_pk) + len(self.s_pk)


@dataclass(frozen=True)
class KeysBroadcast:
    """Round 0, server -> client: the public keys of the recipient's neighbours that advertised."""

    round_id: int
    recipient: int
    keys: Mapping[int, tuple[bytes, bytes]]
    """Neighbour id -> (c_pk, s_pk)."""

    @property
    def nbytes(self) -> int:
        """Wire size."""
        return _HEADER + _bytes_of(self.keys)


@dataclass(frozen=True)
class EncryptedShares:
    """Round 1, client -> server: one AEAD ciphertext of shares per neighbour."""

    round_id: int
    sender: int
    ciphertexts: Mapping[int, bytes]
    """Recipient id -> nonce | ChaCha20-Poly1305(shares of b_u and s_sk_u)."""
    self_mask_commitment: bytes
    """SHA-256 commitment to b_u, checked by the server after reconstruction."""

    @property
    def nbytes(self) -> int:
        """Wire size."""
        return _HEADER + _bytes_of(self.ciphertexts) + len(self.self_mask_commitment)


@dataclass(frozen=True)
class SharesDelivery:
    """Round 1, server -> client: the ciphertexts addressed to the recipient."""

    round_id: int
    recipient: int
    ciphertexts: Mapping[int, bytes]
    """Sender id -> ciphertext."""

    @property
    def nbytes(self) -> int:
        """Wire size."""
        return _HEADER + _bytes_of(self.ciphertexts)


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, client -> server: ``y_u = x_u + mask_u mod 2**bits``, bit-packed."""

    round_id: int
    sender: int
    payload: bytes

    @property
    def nbytes(self) -> int:
        """Wire size."""
        return _HEADER + len(self.payload)


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 3, server -> client: who sent a masked input (survivors) and who did not (dropped)."""

    round_id: int
    recipient: int
    survivors: frozenset[int]
    dropped: frozenset[int]

    @property
    def nbytes(self) -> int:
        """Wire size."""
        return _HEADER + 4 * (len(self.survivors) + len(self.dropped))


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 3, client -> server: b_v shares (v survived) and s_sk_v shares (v dropped)."""

    round_id: int
    sender: int
    self_mask_shares: Mapping[int, bytes] = field(default_factory=dict)
    key_shares: Mapping[int, bytes] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Wire size."""
        return _HEADER + _bytes_of(self.self_mask_shares) + _bytes_of(self.key_shares)


@dataclass(frozen=True)
class AggregateResult:
    """The server's output: the ring sum of the survivors' encoded inputs."""

    round_id: int
    total: np.ndarray
    """``sum_{u in survivors} x_u mod 2**bits`` (decode with the codec that encoded them)."""
    survivors: frozenset[int]
    """Clients whose inputs are in the sum."""
    dropped: frozenset[int]
    """Clients that shared keys but sent no masked input (not in the sum)."""


# Derivations and checks shared by the two state machines.

NONCE = 12
_SHARE_KEY_LABEL = b"fedray/secagg/share-key/v1"
_AAD_LABEL = b"fedray/secagg/shares/v1"


class Phase(enum.Enum):
    """Where a session is: the next protocol round it accepts."""

    KEYS = 0
    SHARES = 1
    MASKED = 2
    UNMASK = 3
    DONE = 4


def _ids(*values: int) -> bytes:
    return b"".join(int(v).to_bytes(8, "big", signed=True) for v in values)


def share_aad(config: SecAggConfig, sender: int, recipient: int) -> bytes:
    """AEAD associated data binding a share ciphertext to (context, round, sender, recipient)."""
    ctx = config.context
    return _AAD_LABEL + len(ctx).to_bytes(4, "big") + ctx + _ids(config.round_id, sender, recipient)


def self_mask_commitment(config: SecAggConfig, owner: int, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed, bound to (context, round, owner)."""
    ctx = config.context
    return hashlib.sha256(
        b"fedray/secagg/b-commit/v1"
        + len(ctx).to_bytes(4, "big")
        + ctx
        + _ids(config.round_id, owner)
        + seed
    ).digest()


def share_key(config: SecAggConfig, shared: bytes, sender: int, recipient: int) -> bytes:
    """Directional ChaCha20-Poly1305 key for shares from `sender` to `recipient`."""
    return derive_key(shared, _SHARE_KEY_LABEL, config.context, config.round_id, sender, recipient)


def expect(ok: bool, what: str) -> None:
    """ValueError(`what`) unless `ok`: a malformed message or argument."""
    if not ok:
        raise ValueError(what)
