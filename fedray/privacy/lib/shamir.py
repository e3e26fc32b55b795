"""Shamir t-of-n secret sharing of short secrets (X25519 private keys, PRG seeds).

Shamir, "How to share a secret", CACM 1979. A secret of up to 64 bytes is read as an integer
``s < 2**512`` and hidden as the constant term of a random polynomial of degree ``t - 1`` over the
prime field ``GF(p)``, ``p = 2**521 - 1`` (a Mersenne prime, larger than any secret, so no
chunking). Share ``i`` is the point ``(x_i, f(x_i))`` for a public, non-zero index ``x_i``.

Threat model: any ``t - 1`` shares are independent of the secret (information-theoretic
hiding): for every candidate secret there is exactly one polynomial through those shares and it.
``t`` or more shares determine it by Lagrange interpolation at 0.

Integrity: plain Shamir has none; a changed share silently yields another value. Two cheap
checks catch accidents but are not authentication: the secret occupies at most 512 of the
field's 521 bits, so a share overwritten with random data makes the reconstruction leave
``[0, 2**(8 * len))`` except with probability ``<= 2**-9`` (``2**-265`` for 32-byte secrets), and
:func:`combine` rejects it; given more than ``t`` shares, :func:`combine` checks every extra
share against the interpolated polynomial, which catches any change to a minority of them. An
adversary who alters one of exactly ``t`` shares by a chosen small amount shifts the secret by a
small amount, undetected: callers must check the result against a commitment (the public key of
a shared private key, a hash of a seed), as :mod:`secagg_core` does.

Share layout (bytes): ``version (1) | threshold (2) | index (4) | secret length (1) | y (66)``.
Randomness comes from :mod:`secrets`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

PRIME = 2**521 - 1
"""The field modulus, a Mersenne prime above every secret this module accepts."""

MAX_SECRET_BYTES = 64
SHARE_BYTES = 1 + 2 + 4 + 1 + 66
_VERSION = 1
_Y_BYTES = 66
_MAX_INDEX = 2**32 - 1
_MAX_THRESHOLD = 2**16 - 1


def _encode(threshold: int, index: int, secret_len: int, y: int) -> bytes:
    return (
        bytes([_VERSION])
        + threshold.to_bytes(2, "big")
        + index.to_bytes(4, "big")
        + bytes([secret_len])
        + y.to_bytes(_Y_BYTES, "big")
    )


def _decode(share: bytes) -> tuple[int, int, int, int]:
    if not isinstance(share, bytes | bytearray) or len(share) != SHARE_BYTES:
        raise ValueError(f"a share must be {SHARE_BYTES} bytes as made by shamir.split")
    if share[0] != _VERSION:
        raise ValueError(f"share version {share[0]} is not supported (expected {_VERSION})")
    threshold = int.from_bytes(share[1:3], "big")
    index = int.from_bytes(share[3:7], "big")
    secret_len = share[7]
    y = int.from_bytes(share[8:], "big")
    if threshold < 1 or index < 1 or not 1 <= secret_len <= MAX_SECRET_BYTES or y >= PRIME:
        raise ValueError("malformed share: threshold, index, length or value out of range")
    return threshold, index, secret_len, y


def share_index(share: bytes) -> int:
    """The public x-coordinate of a share."""
    return _decode(share)[1]


def share_threshold(share: bytes) -> int:
    """The threshold a share was made for."""
    return _decode(share)[0]


def split(secret: bytes, threshold: int, indices: Sequence[int]) -> list[bytes]:
    """Split `secret` into one share per index in `indices`; any `threshold` of them recover it."""
    if not isinstance(secret, bytes | bytearray) or not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(f"the secret must be 1..{MAX_SECRET_BYTES} bytes")
    xs = list(indices)
    if len(set(xs)) != len(xs) or any(not 1 <= x <= _MAX_INDEX for x in xs):
        raise ValueError(f"share indices must be distinct integers in 1..{_MAX_INDEX}")
    if not 1 <= threshold <= min(len(xs), _MAX_THRESHOLD):
        raise ValueError(
            f"threshold={threshold} must be between 1 and the number of shares ({len(xs)})"
        )
    coeffs = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(_encode(threshold, x, len(secret), y))
    return shares


def _lagrange_at(points: Sequence[tuple[int, int]], at: int) -> int:
    """Value at `at` of the unique polynomial of degree < len(points) through `points`."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num = num * (at - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(shares: Iterable[bytes], *, verify: bool = True) -> bytes:
    """Recover the secret from at least `threshold` shares; ValueError if too few or inconsistent.

    With ``verify`` (the default) every share beyond the first `threshold` is checked against the
    interpolated polynomial; with ``verify=False`` only the first `threshold` shares are used
    (faster when the caller checks the result against a commitment).
    """
    decoded = [_decode(s) for s in shares]
    if not decoded:
        raise ValueError("no shares given; need at least `threshold` shares")
    threshold, _, secret_len, _ = decoded[0]
    if any(d[0] != threshold or d[2] != secret_len for d in decoded):
        raise ValueError("the shares disagree on threshold or secret length: mixed secrets")
    points: dict[int, int] = {}
    for _, x, _, y in decoded:
        if points.setdefault(x, y) != y:
            raise ValueError(f"two different shares carry index {x}; drop one")
    if len(points) < threshold:
        raise ValueError(
            f"{len(points)} distinct shares given, at least {threshold} are needed to reconstruct"
        )
    items = list(points.items())
    base = items[:threshold]
    secret = _lagrange_at(base, 0)
    if secret >> (8 * secret_len):
        raise ValueError(
            "the shares are inconsistent: one was altered or belongs to another secret"
        )
    if verify:
        for x, y in items[threshold:]:
            if _lagrange_at(base, x) != y:
                raise ValueError(
                    "the shares are inconsistent: one was altered or belongs to another secret"
                )
    return secret.to_bytes(secret_len, "big")
