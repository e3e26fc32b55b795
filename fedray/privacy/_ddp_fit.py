"""Sizing `privacy=ddp`'s encoding: the granularity gamma and the per-client noise std sigma.

The ring must hold ``n Delta2(gamma) + noise tail(sigma)`` (the wrap-around check of
:class:`~fedray.privacy.lib.discrete.DdpEncoding`); a finer gamma means less rounding error but
a larger Delta2 (in rounded units) and, for a fixed noise multiplier ``z = sqrt(m) sigma /
Delta2`` (m noise shares), more noise in rounded units. With `granularity` null, the finest gamma
whose encoding fits is found by bisection on log(gamma). With `target_epsilon`, sigma is
calibrated by the accountant at that gamma (epsilon depends on z almost alone, so two or three
passes of "fit gamma for z, calibrate sigma, update z" settle).
"""

from __future__ import annotations

import math
from typing import Any

from fedray.privacy.lib.ddp_accounting import calibrate_local_noise
from fedray.privacy.lib.discrete import DdpEncoding

_SEARCH_STEPS = 60


def _encoding(o: Any, dim: int, n: int, gamma: float, local_std: float) -> DdpEncoding:
    return DdpEncoding(
        dim=dim,
        clip=o.clip_norm,
        gamma=gamma,
        bits=o.bits,
        n_clients=n,
        noise=o.noise,
        local_std=local_std,
    )


def _with_multiplier(o: Any, dim: int, n: int, shares: int, gamma: float, z: float) -> DdpEncoding:
    """The encoding at `gamma` whose noise has multiplier `z` for `shares` shares (or raise)."""
    bare = _encoding(o, dim, n, gamma, 0.0)
    return _encoding(o, dim, n, gamma, z * bare.l2_sensitivity / math.sqrt(shares))


def _finest(o: Any, dim: int, n: int, shares: int, z: float) -> float:
    """The smallest gamma (within 1%) whose encoding with multiplier `z` fits `o.bits`."""

    def fits(gamma: float) -> bool:
        try:
            _with_multiplier(o, dim, n, shares, gamma, z)
        except ValueError:
            return False
        return True

    hi = o.clip_norm * 4.0  # coarser than this, Delta2 is the rounding's sqrt(D) / 2 alone
    if not fits(hi):
        raise ValueError(
            f"bits={o.bits} cannot hold {n} clients' updates of dimension {dim} with noise "
            f"multiplier {z:.3g} at any granularity; raise privacy.bits"
        )
    lo = o.clip_norm * 2.0 ** -(o.bits + 20)
    for _ in range(_SEARCH_STEPS):  # invariant: fits(hi), not fits(lo)
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
        if hi / lo < 1.01:
            break
    return hi


def fit_encoding(o: Any, *, dim: int, n: int, shares: int, rounds: int) -> DdpEncoding:
    """The encoding and noise of a `privacy=ddp` run (ValueError: one line, how to fix it).

    `o` holds clip_norm, bits, noise, granularity, noise_multiplier or target_epsilon, delta.
    """
    if o.noise_multiplier is not None:
        z = float(o.noise_multiplier)
        gamma = o.granularity if o.granularity is not None else _finest(o, dim, n, shares, z)
        return _with_multiplier(o, dim, n, shares, gamma, z)
    z = 1.0
    for _ in range(8):
        gamma = o.granularity if o.granularity is not None else _finest(o, dim, n, shares, z)
        bare = _encoding(o, dim, n, gamma, 0.0)
        sigma = calibrate_local_noise(
            o.target_epsilon,
            o.delta,
            rounds,
            noise=o.noise,
            n_clients=shares,
            dim=bare.padded_dim,
            l2_sensitivity=bare.l2_sensitivity,
        )
        needed = sigma * math.sqrt(shares) / bare.l2_sensitivity
        if o.granularity is not None or needed <= z:
            return _encoding(o, dim, n, gamma, sigma)
        z = needed * 1.02
    raise ValueError(
        f"could not size the noise for target_epsilon={o.target_epsilon}; set "
        "privacy.granularity explicitly"
    )
