"""All randomness flows from one seed: (seed, round, client id) -> a per-client seed."""

from __future__ import annotations

import numpy as np


def client_seed(
    seed: int, round: int, client_id: int, scheme: str = "linear", stride: int = 1000
) -> int:
    """The torch seed for one client's local training in one round.

    `linear` is `seed * 1_000_000 + round * stride + client_id` (the benchmark workloads use it;
    it is collision-free while client ids stay below `stride`). `hash` mixes the three through
    numpy's SeedSequence and is collision-resistant for any number of clients.
    """
    if scheme == "linear":
        if client_id >= stride:
            raise ValueError(
                f"client id {client_id} >= client.round_stride={stride}: seeds would collide; "
                "raise client.round_stride or use client.seed_scheme=hash"
            )
        return seed * 1_000_000 + round * stride + client_id
    if scheme == "hash":
        return int(np.random.SeedSequence([seed, round, client_id]).generate_state(1)[0])
    raise ValueError(f"client.seed_scheme={scheme!r}: use linear or hash")
