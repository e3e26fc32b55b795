"""One-run empirical privacy estimation with canary clients (Andrew et al., ICLR 2024).

Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar (2024), "One-shot Empirical Privacy Estimation
for Federated Learning": canary clients whose update is a fixed random unit direction u scaled to
the clip norm C join training like ordinary clients; an equal number of held-out directions never
do. After training, the statistic of a canary is cos(u, S), where S is the final model delta or
(as here) the sum of the per-round released aggregates. Held-out cosines are ~N(0, 1/d)-like;
inserted ones are shifted up. Fitting Gaussians and treating the pair as mu-GDP with

    mu = (mean(cos_inserted) - mean(cos_held_out)) / std(cos_held_out)

gives epsilon(delta) of mu-GDP (Dong, Roth, Su 2022, "Gaussian Differential Privacy", Cor. 2.13:
delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)). mu-GDP is exactly the Gaussian
mechanism with sensitivity 1 and noise 1/mu, so the conversion is dp_accounting's analytic
``get_epsilon_gaussian(1/mu, delta)`` (Balle & Wang 2018); :func:`gdp_delta` is the closed form
for cross-checking.

This is an estimate, not a statistically certified lower bound: it fits Gaussians and puts no
confidence interval on mu. Its use here is a smoke alarm: for a correctly noised mechanism it
should stay below the accountant's epsilon, and a mechanism that adds too little noise drives it
far above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting
import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class AuditResult:
    """Outcome of :func:`simulate_dp_fedavg_audit`."""

    epsilon: float
    mu: float
    cos_inserted: np.ndarray
    cos_held_out: np.ndarray


def _check_rng(rng: np.random.Generator) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator (np.random.default_rng(seed))")


def canary_directions(dim: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n independent uniformly random unit vectors in R^dim, as an (n, dim) float64 array."""
    _check_rng(rng)
    if not (isinstance(dim, int) and dim >= 2 and isinstance(n, int) and n >= 1):
        raise ValueError(f"need int dim >= 2 and int n >= 1, got dim={dim!r}, n={n!r}")
    g = rng.standard_normal((n, dim))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def cosines(directions: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """cos(u_i, v) for each unit row u_i of ``directions`` (0 where v = 0)."""
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if directions.ndim != 2 or directions.shape[1] != v.size:
        raise ValueError(f"directions {directions.shape} and vector of size {v.size} do not match")
    length = float(np.linalg.norm(v))
    if length == 0.0:
        return np.zeros(directions.shape[0])
    return directions @ v / length


def gdp_delta(mu: float, epsilon: float) -> float:
    """delta(eps) of mu-GDP: Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Dong et al.)."""
    if not mu > 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    return float(
        norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2)
    )


def audit_mu(cos_inserted: np.ndarray, cos_held_out: np.ndarray) -> float:
    """(mean_in - mean_out) / std_out (sample std), floored at 0."""
    cin = np.asarray(cos_inserted, dtype=np.float64)
    cout = np.asarray(cos_held_out, dtype=np.float64)
    if cin.ndim != 1 or cout.ndim != 1 or cin.size < 2 or cout.size < 2:
        raise ValueError("need 1-d arrays of at least 2 inserted and 2 held-out cosines")
    if not (np.all(np.isfinite(cin)) and np.all(np.isfinite(cout))):
        raise ValueError("cosines must be finite")
    std_out = float(np.std(cout, ddof=1))
    if std_out == 0.0:
        raise ValueError("held-out cosines have zero spread; use random canary directions")
    return max(0.0, (float(np.mean(cin)) - float(np.mean(cout))) / std_out)


def audit_epsilon(cos_inserted: np.ndarray, cos_held_out: np.ndarray, delta: float) -> float:
    """Empirical epsilon at ``delta`` of the canary cosines (Andrew et al. 2024's estimator)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    mu = audit_mu(cos_inserted, cos_held_out)
    if mu == 0.0:
        return 0.0
    return float(dp_accounting.get_epsilon_gaussian(1.0 / mu, delta))


def simulate_dp_fedavg_audit(
    *,
    dim: int,
    rounds: int,
    clients_per_round: int,
    n_inserted: int,
    n_held_out: int,
    clip: float,
    noise_multiplier: float,
    canary_rate: float,
    delta: float,
    rng: np.random.Generator,
) -> AuditResult:
    """Audit a synthetic DP-FedAvg sum: T rounds of clip, sum, + N(0, (z C)^2 I).

    Each round sums ``clients_per_round`` ordinary clients (a shared drift plus isotropic noise,
    clipped to C) and every inserted canary independently with probability ``canary_rate``
    (C times its direction; Poisson sampling, as the accountant assumes), then adds Gaussian
    noise of std ``noise_multiplier * clip``. The statistic is the cosine of each canary with
    the sum of the released aggregates.
    """
    _check_rng(rng)
    if not (rounds >= 1 and clients_per_round >= 0 and clip > 0 and noise_multiplier >= 0):
        raise ValueError("need rounds >= 1, clients_per_round >= 0, clip > 0, noise >= 0")
    if not 0 < canary_rate <= 1:
        raise ValueError(f"canary_rate must be in (0, 1], got {canary_rate}")
    directions = canary_directions(dim, n_inserted + n_held_out, rng)
    inserted = directions[:n_inserted]
    drift = canary_directions(dim, 1, rng)[0]
    released = np.zeros(dim)
    for _ in range(rounds):
        total = np.zeros(dim)
        if clients_per_round:
            updates = 0.5 * drift + rng.standard_normal((clients_per_round, dim)) / math.sqrt(dim)
            norms = np.linalg.norm(updates, axis=1, keepdims=True)
            total += (updates * np.minimum(1.0, clip / norms)).sum(axis=0)
        joined = rng.random(n_inserted) < canary_rate
        total += clip * inserted[joined].sum(axis=0)
        released += total + rng.normal(0.0, noise_multiplier * clip, dim)
    cos = cosines(directions, released)
    cin, cout = cos[:n_inserted], cos[n_inserted:]
    return AuditResult(audit_epsilon(cin, cout, delta), audit_mu(cin, cout), cin, cout)
