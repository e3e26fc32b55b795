"""Key agreement, PRG, fixed-point encoding and masks for secure aggregation.

Building blocks of Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS 2017) and Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead" (CCS 2020, SecAgg+); the protocol itself is in :mod:`secagg_core`.

* Key agreement: X25519 (RFC 7748). Two clients derive a shared mask seed
  ``s_uv = HKDF-SHA256(X25519(sk_u, pk_v))`` whose ``info`` binds a domain label, a caller
  context (e.g. the run id), the round and the sorted pair, so seeds never repeat across rounds,
  runs or pairs.
* PRG: the ChaCha20 keystream (RFC 8439) under the 32-byte seed, zero nonce (each seed expands
  exactly one mask), read as little-endian words and reduced modulo ``2**bits``. Because
  ``2**bits`` divides ``2**32``/``2**64`` the reduction is exact: each value is uniform.
* Ring: ``Z_{2**bits}``, ``16 <= bits <= 62``, stored as uint32 when ``bits <= 32`` else uint64.
  Additions wrap at the word size and are then masked, which is exact for a power-of-two modulus.
* Fixed point: values are clipped to ``[-R, R]``, multiplied by ``scale`` and rounded to an
  integer level ``q`` in ``[-Q, Q]``, ``Q = ceil(R * scale)``, stored in two's complement mod
  ``2**bits``. Rounding is **stochastic** by default (``floor(v) + Bernoulli(frac(v))``: unbiased,
  so the averaged update has no rounding bias however coarse the scale) and can be made
  deterministic (round half to even). The **bit-length check**: the sum of ``n`` levels lies in
  ``[-nQ, nQ]``, which decodes without wrapping iff ``nQ <= 2**(bits-1) - 1``; a codec whose
  ``bits`` cannot hold that is refused with a ValueError at construction.
* Weighted averaging (the server must divide the secure sum of ``w_i x_i`` by the secure sum of
  ``w_i``, not by a count): a client with weight ``w`` (``0 <= w <= W``, e.g. its sample count
  and a public cap) sends ``[(w/W) clip(x), (w/W) R]``, every coordinate in ``[-R, R]``; the
  secure sum gives ``sum(w_i x_i) / W`` and ``R sum(w_i) / W``, from which
  :func:`decode_weighted` recovers both sums and the weighted mean.
* Mask of client u: ``PRG(b_u) + sum_v sign(u, v) PRG(s_uv)`` mod ``2**bits``, ``sign = +1`` if
  ``u < v`` else ``-1``, so pairwise terms cancel in the sum over all clients.

Threat model: seeds and secret keys are secret (never logged, never in exception messages);
everything else here is public. Security of a masked vector rests on ChaCha20 being a PRF.
"""

from __future__ import annotations

import math
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_BITS = 16
MAX_BITS = 62
KEY_BYTES = 32
_ZERO_NONCE = bytes(16)
_PRG_CHUNK = 1 << 22  # keystream bytes per update_into call


# ---------------------------------------------------------------------------------------------
# X25519 and HKDF


class KeyPair:
    """An X25519 key pair; the secret stays out of the repr and of exception messages."""

    __slots__ = ("_key", "public")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self.public: bytes = key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair from the OS randomness."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyPair:
        """The key pair of a raw 32-byte secret key (e.g. one reconstructed from shares)."""
        _check_key(secret, "secret key")
        return cls(X25519PrivateKey.from_private_bytes(bytes(secret)))

    @property
    def secret(self) -> bytes:
        """The raw 32-byte secret key (to be secret-shared; never log it)."""
        return self._key.private_bytes_raw()

    def agree(self, peer_public: bytes) -> bytes:
        """Raw X25519 shared secret with `peer_public`; ValueError for an invalid peer key."""
        _check_key(peer_public, "public key")
        try:
            return self._key.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
        except ValueError:
            raise ValueError(
                "the peer public key is invalid (low-order point); reject it"
            ) from None

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()[:16]}..., secret=<hidden>)"


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ValueError(f"an X25519 {what} must be {KEY_BYTES} raw bytes")


def derive_key(shared: bytes, label: bytes, *fields: int | bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 of `shared` with ``info = label | each field (length-prefixed)``."""
    info = bytearray(label)
    for f in fields:
        raw = f if isinstance(f, bytes) else f.to_bytes(8, "big", signed=True)
        info += struct.pack(">H", len(raw)) + raw
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=bytes(info)).derive(
        shared
    )


def pairwise_seed(
    keys: KeyPair, peer_public: bytes, *, round_id: int, pair: tuple[int, int], context: bytes = b""
) -> bytes:
    """Mask seed shared by the two clients of `pair` in round `round_id` (symmetric in the pair)."""
    lo, hi = sorted(pair)
    label = b"fedray/secagg/mask-seed/v1"
    return derive_key(keys.agree(peer_public), label, context, round_id, lo, hi)


# ---------------------------------------------------------------------------------------------
# PRG and ring arithmetic


def check_bits(bits: int) -> None:
    """ValueError unless `bits` is a supported ring size."""
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits={bits!r} is unsupported; use an integer in {MIN_BITS}..{MAX_BITS}")


def ring_dtype(bits: int) -> type[np.unsignedinteger]:
    """Storage type of ``Z_{2**bits}``: uint32 up to 32 bits, uint64 above."""
    check_bits(bits)
    return np.uint32 if bits <= 32 else np.uint64


def reduce(values: np.ndarray, bits: int) -> np.ndarray:
    """`values` modulo ``2**bits`` in place (in the ring's dtype)."""
    values &= ring_dtype(bits)((1 << bits) - 1)
    return values


def prg(seed: bytes, length: int, bits: int) -> np.ndarray:
    """`length` uniform values of ``Z_{2**bits}`` from the ChaCha20 keystream under `seed`."""
    if not isinstance(seed, bytes | bytearray) or len(seed) != 32:
        raise ValueError("a PRG seed must be 32 bytes")
    if length < 0:
        raise ValueError(f"length={length} must be >= 0")
    dtype = ring_dtype(bits)
    out = np.empty(length, dtype=np.dtype(dtype).newbyteorder("<"))
    raw = memoryview(out).cast("B")
    stream = Cipher(algorithms.ChaCha20(bytes(seed), _ZERO_NONCE), mode=None).encryptor()
    zeros = memoryview(bytes(min(raw.nbytes, _PRG_CHUNK)))
    for start in range(0, raw.nbytes, _PRG_CHUNK):
        stop = min(start + _PRG_CHUNK, raw.nbytes)
        stream.update_into(zeros[: stop - start], raw[start:stop])
    return reduce(out.astype(dtype, copy=False), bits)


def mask_vector(
    length: int,
    bits: int,
    *,
    self_id: int,
    self_seed: bytes,
    pairwise_seeds: Mapping[int, bytes],
) -> np.ndarray:
    """``PRG(b_u) + sum_v sign(u, v) PRG(s_uv)`` mod ``2**bits`` for client ``u = self_id``."""
    mask = prg(self_seed, length, bits)
    for v, seed in pairwise_seeds.items():
        if v == self_id:
            raise ValueError(f"client {self_id} cannot share a pairwise mask with itself")
        if self_id < v:
            mask += prg(seed, length, bits)
        else:
            mask -= prg(seed, length, bits)
    return reduce(mask, bits)


# ---------------------------------------------------------------------------------------------
# Fixed point


def required_bits(bound: float, scale: float, summands: int) -> int:
    """Smallest ring size whose signed range holds a sum of `summands` levels of ``[-Q, Q]``."""
    if not (math.isfinite(bound) and bound > 0 and math.isfinite(scale) and scale > 0):
        raise ValueError(f"bound={bound} and scale={scale} must be finite and > 0")
    if not isinstance(summands, int) or summands < 1:
        raise ValueError(f"summands={summands!r} must be an integer >= 1")
    level = math.ceil(bound * scale)
    return (summands * level).bit_length() + 1


@dataclass(frozen=True)
class FixedPointCodec:
    """Float vectors to ``Z_{2**bits}`` and back; refuses a ring too small for `max_summands`."""

    bound: float
    """R: values are clipped to ``[-R, R]`` before scaling."""
    scale: float
    """Levels per unit: resolution is ``1/scale``."""
    bits: int
    """Ring size; must satisfy :func:`required_bits`."""
    max_summands: int
    """The most encodings that will ever be summed (the number of clients in a round)."""
    stochastic: bool = True
    """Stochastic (unbiased) rounding if True, round-half-to-even if False."""

    def __post_init__(self) -> None:
        check_bits(self.bits)
        need = required_bits(self.bound, self.scale, self.max_summands)
        if need > self.bits:
            raise ValueError(
                f"bits={self.bits} overflows a sum of {self.max_summands} values in "
                f"[-{self.bound}, {self.bound}] at scale {self.scale}: need bits >= {need}; "
                "raise bits, or lower scale, bound or the number of clients"
            )

    @classmethod
    def tight(
        cls, bound: float, scale: float, max_summands: int, *, stochastic: bool = True
    ) -> FixedPointCodec:
        """The codec with the fewest bits (at least 16) that holds `max_summands` values."""
        need = max(MIN_BITS, required_bits(bound, scale, max_summands))
        if need > MAX_BITS:
            raise ValueError(
                f"a sum of {max_summands} values in [-{bound}, {bound}] at scale {scale} needs "
                f"{need} bits, more than {MAX_BITS}; lower scale or bound"
            )
        return cls(bound, scale, need, max_summands, stochastic)

    @property
    def max_level(self) -> int:
        """Q: the largest absolute level of one encoded value."""
        return math.ceil(self.bound * self.scale)

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """Storage type of encoded vectors."""
        return ring_dtype(self.bits)

    def quantize(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Signed integer levels (int64) of `x` after clipping, scaling and rounding."""
        v = np.asarray(x, dtype=np.float64).reshape(-1)
        if not np.isfinite(v).all():
            raise ValueError("the vector to encode has NaN or infinite entries; fix the update")
        v = np.clip(v, -self.bound, self.bound) * self.scale
        if self.stochastic:
            rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
            low = np.floor(v)
            v = low + (rng.random(v.size) < (v - low))
        else:
            v = np.rint(v)
        return np.clip(v, -self.max_level, self.max_level).astype(np.int64)

    def to_ring(self, levels: np.ndarray) -> np.ndarray:
        """Signed levels to ``Z_{2**bits}`` (two's complement)."""
        return (np.asarray(levels, dtype=np.int64) & ((1 << self.bits) - 1)).astype(self.dtype)

    def encode(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Clip, scale, round and map `x` to ``Z_{2**bits}``."""
        return self.to_ring(self.quantize(x, rng))

    def to_signed(self, total: np.ndarray) -> np.ndarray:
        """Ring elements to signed int64 in ``[-2**(bits-1), 2**(bits-1))``."""
        t = np.asarray(total).astype(np.int64) & ((1 << self.bits) - 1)
        t[t >= (1 << (self.bits - 1))] -= 1 << self.bits
        return t

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """A ring sum of at most `max_summands` encodings back to floats (float64)."""
        return self.to_signed(total) / self.scale


def encode_weighted(
    codec: FixedPointCodec,
    x: np.ndarray,
    weight: float,
    max_weight: float,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Encode ``[(w/W) clip(x), (w/W) R]``: one more coordinate carrying the client's weight."""
    if not (math.isfinite(max_weight) and max_weight > 0):
        raise ValueError(f"max_weight={max_weight} must be finite and > 0")
    if not (math.isfinite(weight) and 0 <= weight <= max_weight):
        raise ValueError(f"weight={weight} must be in [0, max_weight={max_weight}]")
    w = weight / max_weight
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise ValueError("the vector to encode has NaN or infinite entries; fix the update")
    body = w * np.clip(v, -codec.bound, codec.bound)
    return codec.encode(np.append(body, w * codec.bound), rng)


@dataclass(frozen=True)
class WeightedSum:
    """What a secure sum of :func:`encode_weighted` vectors reveals."""

    weighted_sum: np.ndarray
    """``sum_i w_i x_i`` (float64)."""
    total_weight: float
    """``sum_i w_i``."""

    @property
    def mean(self) -> np.ndarray:
        """The weighted mean ``sum_i w_i x_i / sum_i w_i``; ValueError if no weight arrived."""
        if self.total_weight <= 0:
            raise ValueError("the total weight is 0: no client with a positive weight survived")
        return self.weighted_sum / self.total_weight


def decode_weighted(codec: FixedPointCodec, total: np.ndarray, max_weight: float) -> WeightedSum:
    """Split a ring sum of :func:`encode_weighted` vectors into ``sum w x`` and ``sum w``."""
    flat = codec.decode_sum(total)
    if flat.size < 1:
        raise ValueError("the sum is empty; it must end with the weight coordinate")
    return WeightedSum(flat[:-1] * max_weight, float(flat[-1]) / codec.bound * max_weight)
