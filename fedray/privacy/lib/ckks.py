"""Additively homomorphic aggregation of model updates with CKKS (TenSEAL / Microsoft SEAL).

Scheme: Cheon, Kim, Kim, Song, "Homomorphic Encryption for Arithmetic of Approximate Numbers",
ASIACRYPT 2017 (CKKS), as implemented by Microsoft SEAL and exposed by TenSEAL (Benaissa et al.
2021). Clients encrypt their flattened update under a public key; the server adds ciphertexts
without any key; one key holder decrypts only the sum.

Threat model: the server is honest-but-curious and holds the public context only (no secret key:
TenSEAL refuses to decrypt with it). The key holder (a designated party that never sees
individual ciphertexts: the server sends it only the sum) must not collude with the server,
otherwise individual updates are exposed; combine with :mod:`secagg_core` or use threshold CKKS
if that is not acceptable. CKKS decryptions are approximate and, published exactly next to the
ciphertexts, leak information about the secret key (Li and Micciancio, EUROCRYPT 2021): the key
holder should add noise flooding (or the DP noise it adds anyway) before the sum goes back to
the server, and the keys should be rotated (a new key holder context) every run.

Packing and size (the figure that matters on the wire). A ciphertext at the top level is two
polynomials of ``N`` coefficients modulo each data prime ``q_i`` (all coefficient-modulus primes
but the last, "special" one, which only appears in keys). CKKS packs ``N/2`` *complex* slots per
ciphertext; TenSEAL's CKKSVector uses only their real parts. Here each slot carries two update
values (real and imaginary part: slot-wise addition adds both independently), so one ciphertext
holds ``N`` values, and the coefficients are bit-packed at ``bit_length(q_i)`` bits instead of
SEAL's 64-bit words (zstd-compressed by TenSEAL, which cannot shrink uniformly random residues
much). Expansion over float32 is therefore ``2 * sum(bits(q_i)) / 32`` (+ the last chunk's padding
and a small header), independent of ``N``: 3.125 for the default single 50-bit data prime. The
whole State is flattened and chunked across layer boundaries, so no layer overflows a ciphertext
(NVFlare #2687) and only the last chunk has unused slots.

Defaults (:class:`CkksParams`): ``N = 4096``, coefficient modulus ``(50, 59)`` bits (109 bits in
all: the 128-bit-security limit for N=4096 in the HE standard, enforced by SEAL), scale
``2**38``. Headroom: a sum of ``n`` values in ``[-B, B]`` decrypts correctly while
``n * B * sqrt(2) * scale <= q / 4`` (1024 for the defaults: e.g. 100 clients with ``B = 7``);
:class:`CkksParams` refuses parameters that break it. Precision: the error of one slot of a sum of
``n`` fresh ciphertexts is at most ``n * (B_clean + N/2) / scale`` with the CKKS paper's fresh
encryption bound ``B_clean = 8 sqrt(2) sigma N + 6 sigma sqrt(N) + 16 sigma sqrt(h N)``,
``sigma = 3.2``, ``h <= N`` (Lemma 1 of the paper; ``N/2`` bounds the encoding's rounding);
that is 1.3e-6 per client for the defaults, measured errors are ~100x smaller.

Persistence: only :class:`CkksKeyHolder` has state worth checkpointing (its secret context,
:meth:`CkksKeyHolder.to_bytes`, to be stored encrypted at rest); clients and the server rebuild
everything from the public context bytes.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import struct
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from .bitpack import packed_size
from .ckks_format import CT_HEAD, CkksAccumulator, Header, add_encrypted, pack, unpack

__all__ = [
    "CkksAccumulator",
    "CkksKeyHolder",
    "CkksParams",
    "CkksPublic",
    "add_encrypted",
    "encrypted_size",
    "flatten_state",
    "unflatten_state",
]

State = dict[str, np.ndarray]
Layout = tuple[tuple[str, tuple[int, ...]], ...]

_SIGMA = 3.2  # SEAL's noise standard deviation
_CTX_MAGIC = b"FRCKCTX1"


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters plus the value range they must carry; checked on construction."""

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (50, 59)
    """Data primes, then the special (key-switching) prime; only data primes are transmitted."""
    scale_bits: int = 38
    bound: float = 1.0
    """Clients clip every value to ``[-bound, bound]`` before encrypting."""
    max_summands: int = 100
    """The most ciphertexts that will be added (clients per round)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(self.coeff_mod_bit_sizes))
        n = self.poly_modulus_degree
        if n not in (2048, 4096, 8192, 16384, 32768):
            raise ValueError(f"poly_modulus_degree={n} must be a power of two in 2048..32768")
        if len(self.coeff_mod_bit_sizes) < 2:
            raise ValueError("coeff_mod_bit_sizes needs a data prime and a special prime")
        if not 10 <= self.scale_bits < min(self.coeff_mod_bit_sizes[:-1]) + 1:
            raise ValueError(
                f"scale_bits={self.scale_bits} must be >= 10 and below the data primes' size"
            )
        if not (math.isfinite(self.bound) and self.bound > 0 and self.max_summands >= 1):
            raise ValueError("bound must be finite and > 0, max_summands >= 1")
        room = 2.0 ** (sum(self.coeff_mod_bit_sizes[:-1]) - 2 - self.scale_bits)
        need = self.max_summands * self.bound * math.sqrt(2)
        if need > room:
            raise ValueError(
                f"a sum of {self.max_summands} values in [-{self.bound}, {self.bound}] overflows "
                f"(needs {need:.3g}, headroom {room:.3g}): lower scale_bits, bound or clients, "
                "or enlarge the first coefficient-modulus prime"
            )

    @property
    def values_per_ciphertext(self) -> int:
        """Update values per ciphertext: two per complex slot."""
        return self.poly_modulus_degree

    def error_bound(self, summands: int) -> float:
        """Worst-case absolute error of one decrypted value of a sum of `summands` ciphertexts."""
        n, s = self.poly_modulus_degree, _SIGMA
        fresh = 8 * math.sqrt(2) * s * n + 6 * s * math.sqrt(n) + 16 * s * math.sqrt(n * n)
        return summands * (fresh + n / 2) / 2.0**self.scale_bits

    def expansion(self, length: int) -> float:
        """Ciphertext bytes / float32 bytes for a vector of `length` values (header included)."""
        return encrypted_size(self, length) / (4 * length)


def encrypted_size(params: CkksParams, length: int) -> int:
    """Bytes of an encrypted vector of `length` values."""
    bits = params.coeff_mod_bit_sizes[:-1]
    chunks = max(1, -(-length // params.values_per_ciphertext))
    coeffs = 2 * chunks * params.poly_modulus_degree
    return CT_HEAD.size + 8 * len(bits) + sum(packed_size(coeffs, b) for b in bits)


# ---------------------------------------------------------------------------------------------
# Contexts


def _new_context(params: CkksParams) -> ts.Context:
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
    except ValueError as err:
        raise ValueError(
            f"SEAL rejects {params}: {err}; keep the total coefficient modulus within the "
            "128-bit-security limit (e.g. 109 bits for N=4096, 218 for N=8192)"
        ) from None
    ctx.global_scale = 2.0**params.scale_bits
    return ctx


def _envelope(key_id: bytes, params: CkksParams, ctx_bytes: bytes) -> bytes:
    head = json.dumps(asdict(params)).encode()
    return _CTX_MAGIC + key_id + struct.pack("<I", len(head)) + head + ctx_bytes


def _open_envelope(data: bytes) -> tuple[bytes, CkksParams, ts.Context]:
    if not isinstance(data, bytes) or data[:8] != _CTX_MAGIC:
        raise ValueError("not a CKKS context made by CkksKeyHolder (bad magic)")
    key_id = data[8:24]
    (size,) = struct.unpack("<I", data[24:28])
    params = CkksParams(**json.loads(data[28 : 28 + size]))
    ctx = ts.context_from(data[28 + size :])
    ctx.global_scale = 2.0**params.scale_bits
    return key_id, params, ctx


class _Seal:
    """SEAL objects of one context: its parameters, data-level primes, encoder."""

    def __init__(self, ctx: ts.Context, params: CkksParams) -> None:
        self.sc = ctx.seal_context().data
        self.parms_id = self.sc.first_parms_id()
        moduli = self.sc.first_context_data().parms().coeff_modulus()
        self.moduli = [m.value() for m in moduli]
        self.encoder = seal.CKKSEncoder(self.sc)
        self.params = params
        self.n = params.poly_modulus_degree
        if [m.bit_count() for m in moduli] != list(params.coeff_mod_bit_sizes[:-1]):
            raise ValueError("the context's data primes do not match its parameters")


class CkksPublic:
    """The public side (clients and server): encrypts; cannot decrypt."""

    def __init__(self, public_context: bytes) -> None:
        self.key_id, self.params, self.context = _open_envelope(public_context)
        self._seal = _Seal(self.context, self.params)
        self._encryptor = seal.Encryptor(self._seal.sc, self.context.public_key().data)

    def encrypt(self, flat: np.ndarray) -> bytes:
        """Clip `flat` to ``[-bound, bound]`` and encrypt it, packed two values per slot."""
        x = np.asarray(flat, dtype=np.float64).reshape(-1)
        if not np.isfinite(x).all():
            raise ValueError("the vector to encrypt has NaN or infinite entries; fix the update")
        p, s = self.params, self._seal
        x = np.clip(x, -p.bound, p.bound)
        per = p.values_per_ciphertext
        chunks = max(1, -(-x.size // per))
        padded = np.zeros(chunks * per)
        padded[: x.size] = x
        coeffs = np.empty((chunks, 2, len(s.moduli), s.n), dtype=np.uint64)
        scale = 2.0**p.scale_bits
        for c in range(chunks):
            part = padded[c * per : (c + 1) * per]
            plain, ct = seal.Plaintext(), seal.Ciphertext()
            s.encoder.encode((part[0::2] + 1j * part[1::2]).tolist(), s.parms_id, scale, plain)
            self._encryptor.encrypt(plain, ct)
            data = ct.dyn_array()
            coeffs[c] = np.fromiter(
                map(data.at, range(data.size())), np.uint64, data.size()
            ).reshape(2, len(s.moduli), s.n)
        head = Header(self.key_id, s.n, p.scale_bits, 1, x.size, chunks, tuple(s.moduli))
        return pack(head, coeffs)


# ---------------------------------------------------------------------------------------------
# Key holder


class CkksKeyHolder:
    """Owns the secret key: publishes the public context, decrypts sums."""

    def __init__(self, params: CkksParams | None = None, *, _restore: bytes | None = None) -> None:
        if _restore is not None:
            self.key_id, self.params, self._ctx = _open_envelope(_restore)
            if not self._ctx.is_private():
                raise ValueError("this context has no secret key: it is a public context")
        else:
            self.params = params or CkksParams()
            self._ctx = _new_context(self.params)
            self.key_id = secrets.token_bytes(16)
        self._seal = _Seal(self._ctx, self.params)
        self._decryptor = seal.Decryptor(self._seal.sc, self._ctx.secret_key().data)
        self._seal_version = self._probe_version()

    def public_context(self) -> bytes:
        """Serialized public context (public key only: no secret, relinearization or Galois key)."""
        raw = self._ctx.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return _envelope(self.key_id, self.params, raw)

    def to_bytes(self) -> bytes:
        """The secret context for a checkpoint (contains the secret key: store it encrypted)."""
        raw = self._ctx.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return _envelope(self.key_id, self.params, raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> CkksKeyHolder:
        """Restore :meth:`to_bytes`."""
        return cls(_restore=data)

    def _probe_version(self) -> bytes:
        """SEAL's serialization version bytes, read from a real save of this build."""
        ct = seal.Ciphertext()
        encryptor = seal.Encryptor(self._seal.sc, self._ctx.public_key().data)
        encryptor.encrypt_zero(self._seal.parms_id, ct)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "probe")
            ct.save(path)
            with open(path, "rb") as f:
                head = f.read(16)
        return head[3:5]

    def _load(self, coeffs: np.ndarray, path: str) -> seal.Ciphertext:
        """A SEAL ciphertext with raw coefficients (uncompressed SEAL serialization, loaded)."""
        s, version = self._seal, self._seal_version

        def header(size: int) -> bytes:  # SEALHeader: magic, size, version, compression none
            return struct.pack("<HB2sBHQ", 0xA15E, 16, version, 0, 0, size)

        data = struct.pack("<Q", coeffs.size) + coeffs.astype("<u8").tobytes()
        members = (
            struct.pack("<4Q", *s.parms_id)
            + b"\x01"  # NTT form
            + struct.pack("<QQQdQ", 2, s.n, len(s.moduli), 2.0**self.params.scale_bits, 1)
            + header(16 + len(data))
            + data
        )
        with open(path, "wb") as f:
            f.write(header(16 + len(members)) + members)
        ct = seal.Ciphertext()
        ct.load(s.sc, path)
        return ct

    def decrypt(self, blob: bytes) -> np.ndarray:
        """Decrypt an encrypted vector (normally the server's sum) to float64 values."""
        head, coeffs = unpack(blob)
        s = self._seal
        if head.key_id != self.key_id:
            raise ValueError("the ciphertext was made under another key (key id mismatch)")
        if (head.n, head.moduli, head.scale_bits) != (s.n, tuple(s.moduli), self.params.scale_bits):
            raise ValueError("the ciphertext's parameters differ from this key holder's")
        if head.summands > self.params.max_summands:
            raise ValueError(
                f"a sum of {head.summands} ciphertexts exceeds max_summands="
                f"{self.params.max_summands} and may have overflowed; raise max_summands"
            )
        out = np.empty(head.chunks * s.n)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ct")
            for c in range(head.chunks):
                plain = seal.Plaintext()
                self._decryptor.decrypt(self._load(coeffs[c], path), plain)
                z = np.asarray(s.encoder.decode_complex(plain))
                out[c * s.n : (c + 1) * s.n : 2] = z.real
                out[c * s.n + 1 : (c + 1) * s.n : 2] = z.imag
        return out[: head.length]


# ---------------------------------------------------------------------------------------------
# State <-> flat vector


def flatten_state(state: State) -> tuple[np.ndarray, Layout]:
    """Concatenate a State (keys sorted) into one float64 vector, with its layout."""
    names = sorted(state)
    layout = tuple((k, tuple(np.shape(state[k]))) for k in names)
    if not names:
        return np.zeros(0), layout
    return np.concatenate(
        [np.asarray(state[k], dtype=np.float64).reshape(-1) for k in names]
    ), layout


def unflatten_state(flat: np.ndarray, layout: Layout) -> State:
    """Inverse of :func:`flatten_state`, as float32 arrays."""
    total = sum(math.prod(shape) for _, shape in layout)
    if np.size(flat) != total:
        raise ValueError(f"the vector has {np.size(flat)} values, the layout needs {total}")
    out, off = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = np.asarray(flat[off : off + size], dtype=np.float32).reshape(shape)
        off += size
    return out
