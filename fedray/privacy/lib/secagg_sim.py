"""An in-process reference driver for :mod:`secagg_core`: one round, with simulated dropouts.

It shows the exact order of calls a real driver makes (one Ray round trip per protocol round:
collect from all live clients, then close the round at the server) and is what the tests and
benchmarks run. A client listed in ``drop[r]`` goes silent from protocol round ``r`` on (0:
never advertises, 1: advertises but sends no shares, 2: sends no masked input, 3: sends its
masked input but does not answer the unmasking request). ``observe`` is called with every
message the server receives, to let tests audit what the server learns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from .secagg_core import AggregateResult, ClientSession, SecAggAbort, SecAggConfig, ServerSession


def simulate_round(
    config: SecAggConfig,
    encoded: Mapping[int, np.ndarray],
    *,
    drop: Mapping[int, Iterable[int]] | None = None,
    observe: Callable[[object], None] | None = None,
) -> AggregateResult:
    """Run rounds 0-3 on `encoded` (one ring vector per client); SecAggAbort if it cannot end."""
    drop = {r: set(ids) for r, ids in (drop or {}).items()}
    if set(encoded) != set(config.clients):
        raise ValueError("encoded must hold one vector per client of the round")
    server = ServerSession(config)
    clients = {u: ClientSession(config, u) for u in config.clients}
    live = set(clients)

    def send(deliver: Callable[[object], None], msg: object) -> None:
        if observe is not None:
            observe(msg)
        deliver(msg)

    def step(r: int, make: Callable[[int], object], deliver: Callable[[object], None]) -> None:
        live.difference_update(drop.get(r, ()))
        for u in sorted(live):
            try:
                msg = make(u)
            except SecAggAbort:  # an honest client refusing counts as a dropout
                live.discard(u)
                continue
            send(deliver, msg)

    step(0, lambda u: clients[u].advertise_keys(), server.receive_keys)
    keys = server.broadcast_keys()
    live &= set(keys)
    step(1, lambda u: clients[u].share_keys(keys[u]), server.receive_shares)
    shares = server.deliver_shares()
    live &= set(shares)
    step(2, lambda u: clients[u].masked_input(shares[u], encoded[u]), server.receive_masked_input)
    requests = server.unmask_requests()
    live &= set(requests)
    step(3, lambda u: clients[u].unmask(requests[u]), server.receive_unmask)
    return server.finalize()
