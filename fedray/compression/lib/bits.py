"""Bit-level helpers: fixed-width packing, nibbles, bfloat16, and a bounds-checked reader.

All multi-byte fields are little-endian; bit fields are packed LSB-first (value `i`'s bit `j` is
bit `i*width + j` of the stream, byte `t` holding stream bits `8t .. 8t+7`, least significant
first), the final byte zero-padded.
"""

from __future__ import annotations

import numpy as np

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def packed_nbytes(count: int, width: int) -> int:
    """Bytes of `count` fields of `width` bits: `ceil(count * width / 8)`."""
    return -(-count * width // 8)


def pack_uint(values: np.ndarray, width: int) -> bytes:
    """Pack unsigned integers `< 2**width` into a little-endian LSB-first bit stream."""
    n = values.size
    if width == 8:
        return values.astype(np.uint8).tobytes()
    if width == 4:
        return pack_nibbles(values.astype(np.uint8))
    if width == 1:
        return np.packbits(values.astype(np.uint8), bitorder="little").tobytes()
    nb = packed_nbytes(1, width)
    dtype = _UINT[1 << (nb - 1).bit_length()]
    shifts = np.arange(width, dtype=dtype)
    bits = ((values.astype(dtype).reshape(n, 1) >> shifts) & dtype(1)).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack_uint(buf: bytes | memoryview, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`: `count` values (the smallest unsigned dtype that fits)."""
    raw = np.frombuffer(buf, np.uint8, packed_nbytes(count, width))
    if width == 8:
        return raw.copy()
    if width == 4:
        return unpack_nibbles(buf, count)
    if width == 1:
        return np.unpackbits(raw, count=count, bitorder="little")
    bits = np.unpackbits(raw, count=count * width, bitorder="little").reshape(count, width)
    nb = packed_nbytes(1, width)
    size = 1 << (nb - 1).bit_length()
    rows = np.packbits(bits, axis=1, bitorder="little")  # (count, nb), little-endian bytes
    if size != nb:
        rows = np.concatenate([rows, np.zeros((count, size - nb), np.uint8)], axis=1)
    return np.ascontiguousarray(rows).view(np.dtype(_UINT[size]).newbyteorder("<")).reshape(count)


def pack_nibbles(codes: np.ndarray) -> bytes:
    """Two 4-bit codes per byte: value `2i` in the low nibble, `2i+1` in the high nibble."""
    codes = codes.astype(np.uint8, copy=False)
    if codes.size % 2:
        codes = np.concatenate([codes, np.zeros(1, np.uint8)])
    return (codes[0::2] | (codes[1::2] << np.uint8(4))).tobytes()


def unpack_nibbles(buf: bytes | memoryview, count: int) -> np.ndarray:
    """Inverse of :func:`pack_nibbles`: `count` uint8 codes in `[0, 16)`."""
    raw = np.frombuffer(buf, np.uint8, packed_nbytes(count, 4))
    out = np.empty(2 * raw.size, np.uint8)
    out[0::2] = raw & np.uint8(15)
    out[1::2] = raw >> np.uint8(4)
    return out[:count]


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest, ties to even; NaN stays a quiet NaN,
    finite values beyond the largest finite bfloat16 saturate to it.

    bfloat16 is the upper half of an IEEE float32; rounding adds `0x7FFF + lsb` to the 32-bit
    pattern before truncation (the usual RNE trick), which only overflows for NaN patterns.
    """
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    lsb = (u >> np.uint32(16)) & np.uint32(1)
    with np.errstate(over="ignore"):
        h = ((u + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        h[nan] = ((u[nan] >> np.uint32(16)) & np.uint32(0x8000)).astype(np.uint16) | 0x7FC0
    overflow = ((h & np.uint16(0x7FFF)) == 0x7F80) & np.isfinite(x)
    if overflow.any():  # saturate: a finite value never becomes inf
        h[overflow] = (h[overflow] & np.uint16(0x8000)) | np.uint16(0x7F7F)
    return h


def bf16_ceil(x: np.ndarray) -> np.ndarray:
    """Non-negative float32 -> the smallest bfloat16 >= x (uint16 bits), so a scale stored this
    way never clips its block. Finite values are capped at the largest finite bfloat16; NaN and
    inf stay NaN and inf (a non-finite block decodes non-finite, it is not laundered)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    h = (u >> np.uint32(16)) + ((u & np.uint32(0xFFFF)) != 0)
    finite = np.isfinite(x)
    return np.where(finite, np.minimum(h, np.uint32(0x7F7F)), u >> np.uint32(16)).astype(np.uint16)


def bf16_to_f32(h: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32 (exact)."""
    return (h.astype(np.uint32) << np.uint32(16)).view(np.float32)


class Reader:
    """Sequential, bounds-checked reads from a payload; :meth:`done` insists nothing is left."""

    def __init__(self, payload: bytes | memoryview) -> None:
        self.buf = memoryview(payload).cast("B")
        self.pos = 0

    def take(self, n: int) -> memoryview:
        """The next `n` bytes."""
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(
                f"payload truncated: needs {self.pos + n} bytes, has {len(self.buf)}; "
                "was it made by another codec chain or state spec?"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def array(self, dtype: str, count: int) -> np.ndarray:
        """The next `count` values of little-endian `dtype` (e.g. '<f4'), as a fresh array."""
        dt = np.dtype(dtype)
        return np.frombuffer(self.take(count * dt.itemsize), dt, count).astype(dt.newbyteorder("="))

    def rest(self) -> int:
        """Bytes not yet read."""
        return len(self.buf) - self.pos

    def done(self) -> None:
        """Raise unless the whole payload was consumed."""
        if self.rest():
            raise ValueError(
                f"payload has {self.rest()} trailing bytes; was it made by another codec chain "
                "or state spec?"
            )
