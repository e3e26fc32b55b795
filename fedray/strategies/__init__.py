"""Server-side algorithms, one module each, registered by name in group `algorithm`."""

from fedray.strategies import (  # noqa: F401  (registers)
    fedasync,
    fedavg,
    fedavgm,
    fedbuff,
    fedopt,
    fedprox,
    personal,
    robust,
    scaffold,
)
from fedray.strategies.base import Contribution, Strategy

__all__ = ["Contribution", "Strategy"]
