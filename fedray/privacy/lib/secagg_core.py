"""Secure aggregation (SecAgg / SecAgg+) as two pure state machines, one client and one server.

Protocol: Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017 (the honest-but-curious variant, rounds 0-2 and 4 of its Fig. 4; the
signature-based consistency round of the active variant is not implemented), with the sparse
neighbour graph of Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020 (SecAgg+): each client only shares keys and masks with its ``k`` neighbours
(:class:`~secagg_types.SecAggConfig`), and thresholds are relative to that neighbourhood.

Message flow (``N(u)``: u's neighbours; ``t``: threshold)::

    0 AdvertiseKeys   client -> server   (c_pk, s_pk)                          U1 = senders
                      server -> client   KeysBroadcast: keys of N(u) & U1
    1 ShareKeys       client -> server   EncryptedShares: for v in N(u) & U1,
                                         AEAD_{k_uv}(Shamir_t(b_u)_v | Shamir_t(s_sk_u)_v)
                                         + commitment H(b_u)                   U2 = senders
                      server -> client   SharesDelivery: ciphertexts to u from N(u) & U2
    2 MaskedInput     client -> server   y_u = x_u + PRG(b_u) + sum_{v in N(u) & U2} +-PRG(s_uv)
                                                                               U3 = senders
    3 Unmasking       server -> client   UnmaskRequest(survivors=U3, dropped=U2 - U3)
                      client -> server   shares of b_v (v survived) or s_sk_v (v dropped), never
                                         both for one v                        U4 = senders
      finalize        server: sum_{U3} y_u - PRG(b_u) - (pairwise masks of dropped clients)
                              = sum_{u in U3} x_u  mod 2**bits

``k_uv = HKDF(X25519(c_sk_u, c_pk_v))`` bound to (context, round, sender, recipient); the AEAD's
associated data binds the same, so a ciphertext cannot be replayed to another pair or round.
``s_uv = HKDF(X25519(s_sk_u, s_pk_v))`` bound to (context, round, sorted pair). Keys are fresh
every round (a new :class:`ClientSession` per round), so nothing revealed in one round's
unmasking (a dropped client's ``s_sk``) helps in another.

Threat model: honest-but-curious server, and clients that follow the protocol. The server plus
fewer than ``t`` colluding neighbours of a client hold fewer than ``t`` shares of each of its
secrets and the server asks for only one of the two, so that client's input stays masked by a PRG
stream nobody in the coalition can compute; only the sum is revealed. The server sees only public
keys, ciphertexts it cannot open, masked inputs (uniform in ``Z_{2**bits}``), the shares it asks
for and the sum. A client refuses an unmasking request that would reveal both masks of one
neighbour (survivors and dropped overlapping, or a neighbour in neither, or itself in dropped) and
one that leaves fewer than ``t`` of its neighbours surviving. Inputs (a client's update after
encoding) never leave the client unmasked; with fewer than ``min_clients`` survivors the server
aborts instead of unmasking a small sum. Not covered: a malicious server that sends different
survivor sets to different clients (needs the signed consistency round), and the sum itself (add DP
noise on top for that).

Cost knobs (all in :class:`~secagg_types.SecAggConfig`): ``degree`` (None: complete graph,
O(n) key agreements, PRG expansions and shares per client; an even k, e.g.
:func:`~secagg_types.sparse_degree` = 2 ceil(1.5 log2 n): O(k)), ``threshold`` (dropout tolerance
vs collusion resistance; default a strict majority of k), ``bits`` (upload size: take it from
:meth:`masking.FixedPointCodec.tight`) and ``vector_length``. A masked input costs exactly
``ceil(vector_length * bits / 8)`` bytes plus a 16-byte header; key and share messages are
O(k) and independent of the vector length.

Design note for the driver (what to keep where). :mod:`secagg_sim` is an in-process reference
driver showing the call order (collect a message from every live client, then close the round
at the server).

* The **client** keeps its :class:`ClientSession` in memory from round 0 to round 3 of one
  federated round: between rounds 0 and 2 it holds ``c_sk``, ``s_sk``, ``b_u``, its neighbours'
  public keys and the per-neighbour share keys; after round 2 it drops all of these and holds
  only the shares it received (decrypted) and the set of neighbours it masked with. Never ship a
  ClientSession to the server, never checkpoint it: if a client restarts mid-round it is a
  dropout, and the next round starts a fresh session with fresh keys.
* The **server** keeps one :class:`ServerSession` per round. It holds no secret before round 3
  and nothing that must survive a checkpoint: a round interrupted by a server restart is rerun
  from round 0 with fresh sessions. Only :class:`AggregateResult` leaves the round.
* Both sides build the same :class:`SecAggConfig` from public data (sampled client ids, round,
  vector length, bits, graph degree and seed, run id).
"""

from __future__ import annotations

from .secagg_client import ClientSession
from .secagg_server import ServerSession
from .secagg_types import (
    AdvertiseKeys,
    AggregateResult,
    EncryptedShares,
    KeysBroadcast,
    MaskedInput,
    SecAggAbort,
    SecAggConfig,
    SharesDelivery,
    UnmaskRequest,
    UnmaskResponse,
    sparse_degree,
)

__all__ = [
    "AdvertiseKeys",
    "AggregateResult",
    "ClientSession",
    "EncryptedShares",
    "KeysBroadcast",
    "MaskedInput",
    "SecAggAbort",
    "SecAggConfig",
    "ServerSession",
    "SharesDelivery",
    "UnmaskRequest",
    "UnmaskResponse",
    "sparse_degree",
]
