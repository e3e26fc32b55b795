"""Server-side algorithms, one module each, registered by name in group `algorithm`."""

from fedray.strategies.base import AsyncStrategy, Strategy

__all__ = ["AsyncStrategy", "Strategy"]
