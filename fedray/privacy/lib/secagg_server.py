"""Server state machine of secure aggregation (protocol: see :mod:`secagg_core`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from . import shamir
from .bitpack import packed_size, unpack_bits
from .masking import KeyPair, pairwise_seed, prg, reduce, ring_dtype
from .secagg_types import (
    AdvertiseKeys,
    AggregateResult,
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
)


class ServerSession:
    """The server's side of one round: routes messages, sums masked inputs, unmasks the sum."""

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self._phase = Phase.KEYS
        self._keys: dict[int, AdvertiseKeys] = {}
        self._shares: dict[int, EncryptedShares] = {}  # until delivered
        self._commitments: dict[int, bytes] = {}  # u -> H(b_u), kept to check reconstructions
        self._masked_with: dict[int, frozenset[int]] = {}  # u -> N(u) & U2
        self._total = np.zeros(config.vector_length, dtype=ring_dtype(config.bits))
        self._survivors: set[int] = set()
        self._dropped: frozenset[int] = frozenset()
        self._responses: dict[int, UnmaskResponse] = {}

    def _in_phase(self, phase: Phase) -> None:
        if self._phase is not phase:
            raise SecAggAbort(f"a {phase.name} step came in phase {self._phase.name}")

    def _abort(self, what: str) -> SecAggAbort:
        self._phase = Phase.DONE  # an aborted round accepts nothing more; rerun it afresh
        return SecAggAbort(what)

    def _accept(self, phase: Phase, round_id: int, sender: int, seen: Mapping[int, object]) -> None:
        self._in_phase(phase)
        expect(round_id == self.config.round_id, f"message for round {round_id}, not this one")
        expect(sender in self.config.graph, f"client {sender} is not in this round")
        expect(sender not in seen, f"client {sender} sent this message twice")

    def _enough(self, alive: Collection[int], step: str) -> None:
        if len(alive) < self.config.min_clients:
            raise self._abort(
                f"{step}: {len(alive)} clients left, the round needs {self.config.min_clients}"
            )

    def receive_keys(self, msg: AdvertiseKeys) -> None:
        """Round 0: collect one client's public keys."""
        self._accept(Phase.KEYS, msg.round_id, msg.sender, self._keys)
        expect(len(msg.c_pk) == 32 and len(msg.s_pk) == 32, "public keys must be 32 bytes")
        self._keys[msg.sender] = msg

    def broadcast_keys(self) -> dict[int, KeysBroadcast]:
        """Close round 0: each client that advertised gets its advertising neighbours' keys."""
        self._in_phase(Phase.KEYS)
        self._enough(self._keys.keys(), "advertise keys")
        self._phase = Phase.SHARES
        g, k = self.config.graph, self._keys
        return {
            u: KeysBroadcast(
                self.config.round_id, u, {v: (k[v].c_pk, k[v].s_pk) for v in g[u] if v in k}
            )
            for u in k
        }

    def receive_shares(self, msg: EncryptedShares) -> None:
        """Round 1: collect one client's encrypted shares (one per advertising neighbour)."""
        self._accept(Phase.SHARES, msg.round_id, msg.sender, self._shares)
        expect(msg.sender in self._keys, f"client {msg.sender} did not advertise keys")
        want = {v for v in self.config.graph[msg.sender] if v in self._keys}
        expect(set(msg.ciphertexts) == want, "shares must go to exactly the advertised neighbours")
        expect(len(msg.self_mask_commitment) == 32, "the commitment must be 32 bytes")
        self._shares[msg.sender] = msg

    def deliver_shares(self) -> dict[int, SharesDelivery]:
        """Close round 1: route to each client the ciphertexts addressed to it."""
        self._in_phase(Phase.SHARES)
        self._enough(self._shares.keys(), "share keys")
        self._phase = Phase.MASKED
        out = {}
        for u in self._shares:
            senders = frozenset(v for v in self.config.graph[u] if v in self._shares)
            self._masked_with[u] = senders
            cts = {v: self._shares[v].ciphertexts[u] for v in sorted(senders)}
            out[u] = SharesDelivery(self.config.round_id, u, cts)
        self._commitments = {u: m.self_mask_commitment for u, m in self._shares.items()}
        self._shares = {}  # routed: the server keeps no ciphertext
        return out

    def receive_masked_input(self, msg: MaskedInput) -> None:
        """Round 2: add one masked input to the running sum (the vector itself is not kept)."""
        self._accept(Phase.MASKED, msg.round_id, msg.sender, dict.fromkeys(self._survivors))
        cfg = self.config
        expect(msg.sender in self._masked_with, f"client {msg.sender} did not share keys")
        size = packed_size(cfg.vector_length, cfg.bits)
        expect(len(msg.payload) == size, f"a masked input must be {size} bytes")
        self._total += unpack_bits(msg.payload, cfg.bits, cfg.vector_length).astype(
            self._total.dtype, copy=False
        )
        reduce(self._total, cfg.bits)
        self._survivors.add(msg.sender)

    def unmask_requests(self) -> dict[int, UnmaskRequest]:
        """Close round 2: tell the survivors who survived and who dropped."""
        self._in_phase(Phase.MASKED)
        cfg, alive = self.config, frozenset(self._survivors)
        self._enough(alive, "masked input")
        self._dropped = frozenset(self._masked_with) - alive
        # Refuse a doomed round before any share is revealed.
        for u in alive:
            self._check_recoverable(u, self._masked_with[u] & alive, "self-mask seed")
        for v in self._dropped:
            if self._masked_with[v] & alive:
                self._check_recoverable(v, self._masked_with[v] & alive, "mask key")
        self._phase = Phase.UNMASK
        return {u: UnmaskRequest(cfg.round_id, u, alive, self._dropped) for u in sorted(alive)}

    def _check_recoverable(self, owner: int, holders: frozenset[int], what: str) -> None:
        if len(holders) < self.config.t:
            raise self._abort(
                f"client {owner}'s {what}: {len(holders)} share holders left, "
                f"{self.config.t} needed; the round cannot be unmasked"
            )

    def receive_unmask(self, msg: UnmaskResponse) -> None:
        """Round 3: collect one survivor's shares."""
        self._accept(Phase.UNMASK, msg.round_id, msg.sender, self._responses)
        expect(msg.sender in self._survivors, f"client {msg.sender} sent no masked input")
        held = self._masked_with[msg.sender]
        expect(
            set(msg.self_mask_shares) <= held & self._survivors
            and set(msg.key_shares) <= held & self._dropped,
            "unmask shares must be for the sender's surviving/dropped neighbours respectively",
        )
        self._responses[msg.sender] = msg

    def finalize(self) -> AggregateResult:
        """Close round 3: reconstruct the needed secrets and return the unmasked sum."""
        self._in_phase(Phase.UNMASK)
        cfg, alive = self.config, frozenset(self._survivors)
        self._phase = Phase.DONE
        b_shares: dict[int, list[bytes]] = {}
        s_shares: dict[int, list[bytes]] = {}
        for r in self._responses.values():
            for v, share in r.self_mask_shares.items():
                b_shares.setdefault(v, []).append(share)
            for v, share in r.key_shares.items():
                s_shares.setdefault(v, []).append(share)
        total, length = self._total, cfg.vector_length
        for u in sorted(alive):
            seed = self._reconstruct(u, b_shares.get(u, []), "self-mask seed")
            if self_mask_commitment(cfg, u, seed) != self._commitments[u]:
                raise self._abort(f"client {u}'s self-mask seed: a share was altered")
            total -= prg(seed, length, cfg.bits)
        for v in sorted(self._dropped):
            partners = self._masked_with[v] & alive
            if not partners:
                continue
            keys = KeyPair.from_secret(self._reconstruct(v, s_shares.get(v, []), "mask key"))
            if keys.public != self._keys[v].s_pk:
                raise self._abort(f"client {v}'s mask key: a share was altered")
            for u in sorted(partners):
                seed = pairwise_seed(
                    keys,
                    self._keys[u].s_pk,
                    round_id=cfg.round_id,
                    pair=(u, v),
                    context=cfg.context,
                )
                if u < v:  # u added +PRG(s_uv) to its mask, else subtracted it
                    total -= prg(seed, length, cfg.bits)
                else:
                    total += prg(seed, length, cfg.bits)
        reduce(total, cfg.bits)
        self._total = np.zeros(0, dtype=total.dtype)
        return AggregateResult(cfg.round_id, total, alive, self._dropped)

    def _reconstruct(self, owner: int, shares: list[bytes], what: str) -> bytes:
        if len(shares) < self.config.t:
            raise self._abort(
                f"client {owner}'s {what}: {len(shares)} shares arrived, {self.config.t} "
                "needed; the round cannot be unmasked"
            )
        try:
            return shamir.combine(shares[: self.config.t], verify=False)
        except ValueError:
            raise self._abort(f"client {owner}'s {what}: the shares are inconsistent") from None
