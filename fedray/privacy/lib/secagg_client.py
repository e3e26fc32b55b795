"""Client state machine of secure aggregation (protocol: see :mod:`secagg_core`)."""

from __future__ import annotations

import secrets

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import shamir
from .bitpack import pack_bits
from .masking import KeyPair, mask_vector, pairwise_seed, reduce, ring_dtype
from .secagg_types import (
    NONCE,
    AdvertiseKeys,
    EncryptedShares,
    KeysBroadcast,
    MaskedInput,
    Phase,
    SecAggAbort,
    SecAggConfig,
    SharesDelivery,
    UnmaskRequest,
    UnmaskResponse,
    expect,
    self_mask_commitment,
    share_aad,
    share_key,
)


class ClientSession:
    """One client's side of one round; feed it the server's messages in order."""

    def __init__(self, config: SecAggConfig, client_id: int) -> None:
        if client_id not in config.graph:
            raise ValueError(f"client {client_id} is not among this round's clients")
        self.config = config
        self.client_id = client_id
        self.neighbours = config.graph[client_id]
        self._phase = Phase.KEYS
        self._c = KeyPair.generate()
        self._s = KeyPair.generate()
        self._b: bytes | None = None
        self._peers: dict[int, tuple[bytes, bytes]] = {}
        self._shared: dict[int, bytes] = {}  # neighbour -> X25519(c_sk_u, c_pk_v)
        self._shares: dict[int, tuple[bytes, bytes]] = {}  # sender -> (b share, s_sk share)
        self._masked_with: frozenset[int] = frozenset()

    def _abort(self, what: str) -> SecAggAbort:
        self._phase = Phase.DONE  # an aborted session answers nothing more
        return SecAggAbort(f"client {self.client_id}: {what}")

    def _step(self, expected: Phase, round_id: int, addressee: int) -> None:
        if self._phase is not expected:
            raise SecAggAbort(
                f"client {self.client_id} got a {expected.name} message in phase "
                f"{self._phase.name}; messages must come once each, in order"
            )
        expect(round_id == self.config.round_id, f"message for round {round_id}, not this one")
        expect(addressee == self.client_id, f"message for client {addressee}, not this one")

    def advertise_keys(self) -> AdvertiseKeys:
        """Round 0: the public keys to send to the server."""
        self._step(Phase.KEYS, self.config.round_id, self.client_id)
        self._phase = Phase.SHARES
        return AdvertiseKeys(self.config.round_id, self.client_id, self._c.public, self._s.public)

    def share_keys(self, msg: KeysBroadcast) -> EncryptedShares:
        """Round 1: Shamir-share ``s_sk`` and a fresh self-mask seed among the neighbours."""
        self._step(Phase.SHARES, msg.round_id, msg.recipient)
        cfg, u = self.config, self.client_id
        peers = dict(msg.keys)
        expect(set(peers) <= self.neighbours, "the server sent keys of non-neighbours")
        if len(peers) < cfg.t:
            raise self._abort(f"{len(peers)} neighbours advertised keys, threshold is {cfg.t}")
        own = {self._c.public, self._s.public}
        flat = [k for pair in peers.values() for k in pair]
        expect(len(set(flat)) == len(flat) and not own & set(flat), "public keys must be distinct")
        self._b = secrets.token_bytes(32)
        order = sorted(peers)
        xs = [v + 1 for v in order]
        b_shares = shamir.split(self._b, cfg.t, xs)
        s_shares = shamir.split(self._s.secret, cfg.t, xs)
        ciphertexts = {}
        for v, bs, ss in zip(order, b_shares, s_shares, strict=True):
            shared = self._c.agree(peers[v][0])
            self._shared[v] = shared
            nonce = secrets.token_bytes(NONCE)
            aead = ChaCha20Poly1305(share_key(cfg, shared, u, v))
            ciphertexts[v] = nonce + aead.encrypt(nonce, bs + ss, share_aad(cfg, u, v))
        self._peers = peers
        self._phase = Phase.MASKED
        return EncryptedShares(cfg.round_id, u, ciphertexts, self_mask_commitment(cfg, u, self._b))

    def masked_input(self, msg: SharesDelivery, encoded: np.ndarray) -> MaskedInput:
        """Round 2: decrypt the shares received, then send ``encoded + mask`` (bit-packed)."""
        self._step(Phase.MASKED, msg.round_id, msg.recipient)
        cfg, u = self.config, self.client_id
        x = np.asarray(encoded)
        expect(
            x.shape == (cfg.vector_length,) and x.dtype == ring_dtype(cfg.bits),
            f"encoded input must be a {ring_dtype(cfg.bits).__name__} vector of "
            f"{cfg.vector_length} ring elements (FixedPointCodec.encode)",
        )
        expect(
            not x.size or int(x.max()) >> cfg.bits == 0,
            f"encoded input exceeds 2**{cfg.bits}; encode it with a {cfg.bits}-bit codec",
        )
        senders = set(msg.ciphertexts)
        expect(senders <= set(self._peers), "the server delivered shares from unknown clients")
        if len(senders) < cfg.t:
            raise self._abort(f"shares from {len(senders)} neighbours, need {cfg.t}")
        shares = {}
        for v in sorted(senders):
            blob = msg.ciphertexts[v]
            try:
                aead = ChaCha20Poly1305(share_key(cfg, self._shared[v], v, u))
                plain = aead.decrypt(blob[:NONCE], blob[NONCE:], share_aad(cfg, v, u))
            except (InvalidTag, ValueError):
                raise self._abort(f"the shares from client {v} fail to authenticate") from None
            half = shamir.SHARE_BYTES
            bs, ss = plain[:half], plain[half:]
            try:
                ok = len(plain) == 2 * half and all(
                    shamir.share_index(x) == u + 1 and shamir.share_threshold(x) == cfg.t
                    for x in (bs, ss)
                )
            except ValueError:
                ok = False
            if not ok:
                raise self._abort(f"the shares from client {v} are malformed")
            shares[v] = (bs, ss)
        assert self._b is not None
        seeds = {
            v: pairwise_seed(
                self._s, self._peers[v][1], round_id=cfg.round_id, pair=(u, v), context=cfg.context
            )
            for v in senders
        }
        mask = mask_vector(
            cfg.vector_length, cfg.bits, self_id=u, self_seed=self._b, pairwise_seeds=seeds
        )
        mask += x
        payload = pack_bits(reduce(mask, cfg.bits), cfg.bits)
        # From here on only the received shares are needed: drop every secret of this client.
        self._shares, self._masked_with = shares, frozenset(senders)
        self._b, self._shared, self._peers = None, {}, {}
        del self._c, self._s
        self._phase = Phase.UNMASK
        return MaskedInput(cfg.round_id, u, payload)

    def unmask(self, msg: UnmaskRequest) -> UnmaskResponse:
        """Round 3: reveal b-shares of surviving and key shares of dropped neighbours."""
        self._step(Phase.UNMASK, msg.round_id, msg.recipient)
        cfg, u = self.config, self.client_id
        survivors, dropped = frozenset(msg.survivors), frozenset(msg.dropped)
        self._phase = Phase.DONE  # one answer per round, whatever happens below
        shares, self._shares = self._shares, {}
        if survivors & dropped:
            raise self._abort("the server lists clients as both survived and dropped")
        if u not in survivors:
            raise self._abort("the server does not list this client as a survivor")
        if not self._masked_with <= survivors | dropped:
            raise self._abort("the server leaves some neighbours' status open")
        alive = self._masked_with & survivors
        if len(alive) < cfg.t:
            raise self._abort(f"only {len(alive)} neighbours survived, threshold is {cfg.t}")
        b_out = {v: shares[v][0] for v in sorted(alive)}
        s_out = {v: shares[v][1] for v in sorted(self._masked_with & dropped)}
        return UnmaskResponse(cfg.round_id, u, b_out, s_out)
