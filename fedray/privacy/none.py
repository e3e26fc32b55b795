"""`privacy=none`: updates travel in the clear."""

from __future__ import annotations

from dataclasses import dataclass

from fedray.core.registry import register
from fedray.privacy.base import Mechanism


@dataclass
class NoPrivacyOptions:
    """Options of `privacy=none`."""

    name: str = "none"


@register("privacy", "none", NoPrivacyOptions)
class NoPrivacy(Mechanism):
    """No clipping, masking or noise: the plaintext sample-weighted mean."""

    def __init__(self, options: NoPrivacyOptions) -> None:
        self.options = options
