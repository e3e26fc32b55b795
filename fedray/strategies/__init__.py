"""Server-side algorithms, one module each, registered by name in group `algorithm`."""

from fedray.strategies import fedavg, fedavgm, fedopt, robust  # noqa: F401  (registers)
from fedray.strategies.base import Contribution, Strategy

__all__ = ["Contribution", "Strategy"]
