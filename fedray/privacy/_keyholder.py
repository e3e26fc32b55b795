"""The CKKS key holder of `privacy=he`: a Ray actor of its own, the only process with the secret
key. It publishes the public context and decrypts sums, never a single client's ciphertext."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class KeyHolder:
    """Owns a :class:`~fedray.privacy.lib.ckks.CkksKeyHolder`; wrapped by ``ray.remote``."""

    def __init__(self, params: dict[str, Any], min_summands: int) -> None:
        from fedray.privacy.lib.ckks import CkksKeyHolder, CkksParams

        self._holder = CkksKeyHolder(CkksParams(**params))
        self.min_summands = min_summands

    def pid(self) -> int:
        """This process's id (the driver's must differ)."""
        return os.getpid()

    def public_context(self) -> bytes:
        """The public context (public key only): what clients encrypt with."""
        return self._holder.public_context()

    def decrypt_sum(self, blob: bytes) -> np.ndarray:
        """Decrypt an encrypted sum of at least `min_summands` client ciphertexts.

        The summand count is the ciphertext header's, set by the server's accumulator: a check
        against an honest-but-curious server's mistakes, not against a malicious one.
        """
        from fedray.privacy.lib.ckks_format import unpack

        head, _ = unpack(blob)
        if head.summands < self.min_summands:
            raise ValueError(
                f"the key holder decrypts sums of at least {self.min_summands} ciphertexts, "
                f"not {head.summands}; it never decrypts one client's update"
            )
        return self._holder.decrypt(blob)
