"""Wire format of CKKS-encrypted vectors and their key-free addition (the server's half).

An encrypted vector is a header and, for each data prime ``q_i``, the coefficients of all its
ciphertexts (chunks x 2 polynomials x N, NTT form, as SEAL stores them) bit-packed at
``bit_length(q_i)`` bits. Adding ciphertexts of the same key, parameters and scale is
coefficient-wise addition modulo each ``q_i`` (what SEAL's ``Evaluator.add`` does), so the
server needs neither a key nor TenSEAL: it checks headers and adds with numpy.

Header (little-endian): magic ``FRCKCT01`` (8), key id (16), N (u32), number of data primes
(u8), scale bits (u8), summands (u32), vector length (u64), chunks (u32), then the primes (u64).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .bitpack import pack_bits, packed_size, unpack_bits

CT_MAGIC = b"FRCKCT01"
CT_HEAD = struct.Struct("<8s16sIBBIQI")


@dataclass(frozen=True)
class Header:
    """The public metadata of an encrypted vector."""

    key_id: bytes
    n: int
    scale_bits: int
    summands: int
    length: int
    chunks: int
    moduli: tuple[int, ...]


def body_size(n: int, chunks: int, moduli: tuple[int, ...]) -> int:
    """Bytes after the header: the primes and the packed coefficients."""
    return 8 * len(moduli) + sum(packed_size(chunks * 2 * n, q.bit_length()) for q in moduli)


def pack(h: Header, coeffs: np.ndarray) -> bytes:
    """Serialize ciphertext coefficients, shape (chunks, 2, primes, N), under header `h`."""
    moduli = h.moduli
    head = CT_HEAD.pack(
        CT_MAGIC, h.key_id, h.n, len(moduli), h.scale_bits, h.summands, h.length, h.chunks
    )
    body = [struct.pack(f"<{len(moduli)}Q", *moduli)]
    for i, q in enumerate(moduli):
        body.append(pack_bits(np.ascontiguousarray(coeffs[:, :, i, :]), q.bit_length()))
    return head + b"".join(body)


def unpack(blob: bytes) -> tuple[Header, np.ndarray]:
    """Parse and check an encrypted vector; ValueError if it is malformed."""
    bad = ValueError("not an encrypted vector made by CkksPublic.encrypt, or truncated/corrupt")
    if not isinstance(blob, bytes) or blob[:8] != CT_MAGIC or len(blob) < CT_HEAD.size:
        raise bad
    _, key_id, n, nmod, scale_bits, summands, length, chunks = CT_HEAD.unpack_from(blob)
    off = CT_HEAD.size
    if not 1 <= nmod <= 16 or len(blob) < off + 8 * nmod or n & (n - 1) or not 1024 <= n <= 32768:
        raise bad
    moduli = struct.unpack_from(f"<{nmod}Q", blob, off)
    off += 8 * nmod
    if any(not 2 <= q.bit_length() <= 60 for q in moduli) or not length <= chunks * n:
        raise bad
    if len(blob) != CT_HEAD.size + body_size(n, chunks, moduli):  # before allocating anything
        raise bad
    count = chunks * 2 * n
    coeffs = np.empty((chunks, 2, nmod, n), dtype=np.uint64)
    for i, q in enumerate(moduli):
        size = packed_size(count, q.bit_length())
        coeffs[:, :, i, :] = unpack_bits(blob[off : off + size], q.bit_length(), count).reshape(
            chunks, 2, n
        )
        off += size
        if int(coeffs[:, :, i].max(initial=0)) >= q:
            raise bad
    return Header(key_id, n, scale_bits, summands, length, chunks, tuple(moduli)), coeffs


class CkksAccumulator:
    """Server side: adds encrypted vectors one at a time (coefficient-wise, mod each prime)."""

    def __init__(self) -> None:
        self._head: Header | None = None
        self._sum: np.ndarray | None = None

    def add(self, blob: bytes) -> None:
        """Add one client's encrypted vector; ValueError if it does not match the others."""
        head, coeffs = unpack(blob)
        if self._head is None:
            self._head, self._sum = head, coeffs
            return
        ref = self._head
        if dataclasses.replace(head, summands=ref.summands) != ref:
            raise ValueError("encrypted vectors differ in key, parameters or length: mixed rounds")
        assert self._sum is not None
        for i, q in enumerate(head.moduli):
            part = self._sum[:, :, i, :]
            part += coeffs[:, :, i, :]  # both < q <= 2**60: no uint64 overflow
            np.remainder(part, np.uint64(q), out=part)
        self._head = dataclasses.replace(ref, summands=ref.summands + head.summands)

    @property
    def summands(self) -> int:
        """How many client ciphertexts are in the sum."""
        return 0 if self._head is None else self._head.summands

    def result(self) -> bytes:
        """The encrypted sum, in the same format as a client's ciphertext."""
        if self._head is None or self._sum is None:
            raise ValueError("nothing was added; the sum of no ciphertexts is undefined")
        return pack(self._head, self._sum)


def add_encrypted(blobs: Iterable[bytes]) -> bytes:
    """Server side: the encrypted sum of encrypted vectors (no key needed)."""
    acc = CkksAccumulator()
    for blob in blobs:
        acc.add(blob)
    return acc.result()
