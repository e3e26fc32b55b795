"""Update codecs, registered by name in group `compression`.

Each stage module registers one name whose factory builds a one-stage
:class:`~fedray.compression.lib.chain.Chain`; `chain` composes a sparsifier and a quantizer.
See :mod:`fedray.compression.lib.chain` for the API and wire format.
"""

from fedray.compression import (  # noqa: F401  (registers)
    cast,
    intq,
    nf4,
    none,
    prune,
    qsgd,
    randk,
    sign,
    topk,
)
from fedray.compression.lib.chain import Chain, build_chain, chain_from_node, downlink_chain
from fedray.compression.lib.spec import StateSpec

__all__ = ["Chain", "StateSpec", "build_chain", "chain_from_node", "downlink_chain"]
