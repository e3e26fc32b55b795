"""Tight bit-packing of unsigned integer vectors (masked SecAgg inputs, CKKS ciphertext words).

A vector of values below ``2**bits`` is sent as ``ceil(len * bits / 8)`` bytes instead of 4 or 8
bytes per value, so a masked vector costs exactly its ring size on the wire. Values are laid out
little-endian, value ``i`` at bit offset ``i * bits``. The packer works on groups of 64 values
(``bits`` 64-bit words per group) with one vectorised shift per position in the group, so it is
linear in the length and needs no Python loop over values.
"""

from __future__ import annotations

import numpy as np

_GROUP = 64  # 64 values of `bits` bits fill exactly `bits` 64-bit words


def packed_size(length: int, bits: int) -> int:
    """Bytes that :func:`pack_bits` returns for `length` values of `bits` bits."""
    return (length * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 64:
        raise ValueError(f"bits={bits} is out of range; use 1..64 bits per value")


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers below ``2**bits`` into ``ceil(len * bits / 8)`` bytes."""
    _check_bits(bits)
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.dtype.kind != "u":
        raise ValueError(f"pack_bits needs an unsigned integer array, got {flat.dtype}")
    v = flat.astype(np.uint64, copy=False)
    length = v.size
    if bits < 64 and length and int(v.max()) >> bits:
        raise ValueError(f"a value does not fit in {bits} bits; reduce it modulo 2**{bits} first")
    groups = -(-length // _GROUP)
    padded = np.zeros(groups * _GROUP, dtype=np.uint64)
    padded[:length] = v
    grid = padded.reshape(groups, _GROUP)
    words = np.zeros((groups, bits + 1), dtype=np.uint64)  # one spare column for the last spill
    for j in range(_GROUP):
        offset = j * bits
        w, s = divmod(offset, 64)
        words[:, w] |= grid[:, j] << np.uint64(s)
        if s + bits > 64:
            words[:, w + 1] |= grid[:, j] >> np.uint64(64 - s)
    out = words[:, :bits].astype("<u8", copy=False).tobytes()
    return out[: packed_size(length, bits)]


def unpack_bits(data: bytes, bits: int, length: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: `length` values as uint64."""
    _check_bits(bits)
    if len(data) != packed_size(length, bits):
        raise ValueError(
            f"packed data has {len(data)} bytes, expected {packed_size(length, bits)} for "
            f"{length} values of {bits} bits; the payload is truncated or from another layout"
        )
    groups = -(-length // _GROUP)
    buf = np.zeros(groups * bits * 8, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    words = np.zeros((groups, bits + 1), dtype=np.uint64)
    words[:, :bits] = buf.view("<u8").reshape(groups, bits)
    grid = np.empty((groups, _GROUP), dtype=np.uint64)
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    for j in range(_GROUP):
        offset = j * bits
        w, s = divmod(offset, 64)
        col = words[:, w] >> np.uint64(s)
        if s + bits > 64:
            col |= words[:, w + 1] << np.uint64(64 - s)
        grid[:, j] = col & mask
    return grid.reshape(-1)[:length].copy()
