"""Accounting for distributed DP: a secure sum of n clients' vectors, each with discrete noise.

Each client adds integer noise of per-client scale sigma (in the integer units of
:mod:`.discrete`, after scaling by 1/gamma and rounding) and the server only sees the modular sum.
The L2 sensitivity Delta2 is the norm bound of one client's rounded vector (add/remove of a
client), Delta1 <= min(sqrt(D) Delta2, Delta2^2) for integer vectors in dimension D.

dp_accounting 0.6 has no event for a sum of discrete Gaussians or for Skellam noise (its PLD
``from_discrete_gaussian_mechanism`` is one-dimensional and its accountants accept no discrete
Gaussian event). What it does have is ``ZCDpEvent(rho, xi)``, i.e. RDP eps(alpha) <= xi + rho
alpha, supported by ``RdpAccountant`` (not by ``PLDAccountant``). Both papers' RDP bounds are
minima of such lines, each line a valid bound on its own, so each round is recorded as the
tightest single line at the target delta and the library composes the rounds and converts to
(epsilon, delta):

- distributed discrete Gaussian (Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian
  Mechanism for Federated Learning with Secure Aggregation", Thm 1 + Prop 14), with
  sigma_c = sqrt(n) sigma and tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1)):
  eps(alpha) <= min( alpha/2 (D2/sc)^2 + tau D,
                     alpha/2 ((D2/sc)^2 + 2 (D1/sc) tau + tau^2 D),
                     alpha/2 (D2/sc + sqrt(D) tau)^2 ).
  Needs sigma >= 1/2. For sigma >= 2, tau < 1e-16 (n < 10^17): then it is the RDP of a continuous
  Gaussian with noise multiplier sigma_c / Delta2.
- Skellam (Agarwal, Kairouz, Liu 2021, "The Skellam Mechanism for Differentially Private
  Federated Learning", NeurIPS; the RDP bound as in google-research/federated's
  distributed_dp/accounting_utils.py).
  Skellam is closed under summation, so the aggregate noise is Skellam with variance
  V = n sigma^2 exactly:
  eps(alpha) <= alpha D2^2 / (2V) + min( ((2 alpha - 1) D2^2 + 6 D1) / (4 V^2), 3 D1 / (2V) ).

Both bounds are evaluated at integer orders only (the papers' implementations do the same).

Limitation, by design: no amplification by sampling. dp_accounting's ``PoissonSampledDpEvent``
accepts only Gaussian (PLD: or Laplace) sub-events, and the generic subsampled-RDP bound the papers
use (Zhu & Wang 2019) is not in the library, so :meth:`DistributedDpAccountant.epsilon` composes
the rounds as if every client joined every round: a valid, conservative bound. For comparison
only, :meth:`DistributedDpAccountant.approx_epsilon_poisson` reports the PLD epsilon of the
continuous Gaussian with the same noise multiplier under Poisson sampling; it is NOT a proven
bound for discrete noise.

``n_clients`` must be the number of noise shares guaranteed to be in the sum (after dropouts):
fewer shares mean less noise than accounted.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

DISCRETE_GAUSSIAN = "discrete_gaussian"
SKELLAM = "skellam"
NOISES = (DISCRETE_GAUSSIAN, SKELLAM)
# Integer orders only: both papers state and implement their RDP bounds for integer alpha.
INTEGER_ORDERS = (*range(2, 65), 128, 256, 512, 1024)

_STATE_KEYS = {"noise", "dim", "l2_sensitivity", "l1_sensitivity", "runs"}


def _check_keys(expected: set[str], state: dict[str, Any], owner: str) -> None:
    """Raise KeyError naming the missing and unexpected keys of a state dict."""
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(
            f"{owner}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
        )


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def _check_int(value: int, name: str, low: int = 1) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def ddg_tau(local_std: float, n_clients: int) -> float:
    """Kairouz et al. (2021) Thm 1: tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1))."""
    k = range(1, n_clients)
    return 10.0 * math.fsum(math.exp(-2 * math.pi**2 * local_std**2 * i / (i + 1)) for i in k)


def default_l1_sensitivity(l2_sensitivity: float, dim: int) -> float:
    """L1 bound of an integer vector of L2 norm <= Delta2: min(sqrt(D) Delta2, Delta2^2)."""
    return l2_sensitivity * min(math.sqrt(dim), l2_sensitivity)


def zcdp_lines(
    noise: str,
    local_std: float,
    n_clients: int,
    *,
    dim: int,
    l2_sensitivity: float,
    l1_sensitivity: float,
) -> list[tuple[float, float]]:
    """(rho, xi) lines whose minimum bounds the per-round RDP: eps(alpha) <= xi + rho alpha."""
    d2, d1 = l2_sensitivity, l1_sensitivity
    if noise == DISCRETE_GAUSSIAN:
        sc = math.sqrt(n_clients) * local_std
        tau = ddg_tau(local_std, n_clients)
        a = d2 / sc
        return [
            (a**2 / 2, tau * dim),
            ((a**2 + 2 * (d1 / sc) * tau + tau**2 * dim) / 2, 0.0),
            ((a + math.sqrt(dim) * tau) ** 2 / 2, 0.0),
        ]
    if noise == SKELLAM:
        v = n_clients * local_std**2
        return [
            # ((2a - 1) D2^2 + 6 D1) / (4V^2) = a D2^2/(2V^2) + (6 D1 - D2^2)/(4V^2); xi >= 0
            # only makes the line larger (the library rejects xi < 0).
            (d2**2 / (2 * v) + d2**2 / (2 * v**2), max(0.0, (6 * d1 - d2**2) / (4 * v**2))),
            (d2**2 / (2 * v), 3 * d1 / (2 * v)),
        ]
    raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")


def _rdp_epsilon(events: list[dp_accounting.DpEvent], delta: float) -> float:
    accountant = rdp.RdpAccountant(orders=INTEGER_ORDERS)
    for event in events:
        accountant.compose(event)
    return float(accountant.get_epsilon(delta))


class DistributedDpAccountant:
    """(epsilon, delta) of a distributed-DP run from its history of (sigma, n, count) runs."""

    def __init__(
        self,
        *,
        noise: str,
        dim: int,
        l2_sensitivity: float,
        l1_sensitivity: float | None = None,
    ) -> None:
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        _check_int(dim, "dim")
        if not (math.isfinite(l2_sensitivity) and l2_sensitivity > 0):
            raise ValueError(f"l2_sensitivity must be finite and > 0, got {l2_sensitivity}")
        if l1_sensitivity is None:
            l1_sensitivity = default_l1_sensitivity(l2_sensitivity, dim)
        if not (math.isfinite(l1_sensitivity) and l1_sensitivity > 0):
            raise ValueError(f"l1_sensitivity must be finite and > 0, got {l1_sensitivity}")
        self.noise = noise
        self.dim = int(dim)
        self.l2_sensitivity = float(l2_sensitivity)
        self.l1_sensitivity = float(l1_sensitivity)
        self._runs: list[tuple[float, int, int]] = []

    @property
    def accountant(self) -> str:
        """The dp_accounting accountant behind :meth:`epsilon` (always ``"rdp"``: zCDP events)."""
        return "rdp"

    @property
    def runs(self) -> list[tuple[float, int, int]]:
        """The history as (local_std, n_clients, count) runs, oldest first."""
        return list(self._runs)

    def _check_std(self, local_std: float) -> None:
        low = 0.5 if self.noise == DISCRETE_GAUSSIAN else 0.0  # Kairouz et al. Thm 1 needs >= 1/2
        if not (isinstance(local_std, numbers.Real) and math.isfinite(local_std)):
            raise ValueError(f"local_std must be a finite number, got {local_std!r}")
        if local_std < low or local_std <= 0:
            raise ValueError(
                f"local_std must be > 0{' and >= 0.5 for the discrete Gaussian' * (low > 0)}"
                f", got {local_std}"
            )

    def step(self, local_std: float, n_clients: int, rounds: int = 1) -> None:
        """Record ``rounds`` rounds where ``n_clients`` noise shares of scale sigma were summed."""
        self._check_std(local_std)
        _check_int(n_clients, "n_clients")
        _check_int(rounds, "rounds")
        run = (float(local_std), int(n_clients))
        if self._runs and self._runs[-1][:2] == run:
            self._runs[-1] = (*run, self._runs[-1][2] + int(rounds))
        else:
            self._runs.append((*run, int(rounds)))

    def lines(self, local_std: float, n_clients: int) -> list[tuple[float, float]]:
        """The per-round (rho, xi) lines for this configuration (see module docstring)."""
        return zcdp_lines(
            self.noise,
            local_std,
            n_clients,
            dim=self.dim,
            l2_sensitivity=self.l2_sensitivity,
            l1_sensitivity=self.l1_sensitivity,
        )

    def _run_event(
        self, local_std: float, n_clients: int, count: int, delta: float
    ) -> dp_accounting.DpEvent:
        """The run as the library event of its tightest line at ``delta``."""
        events = [
            dp_accounting.SelfComposedDpEvent(dp_accounting.ZCDpEvent(rho=rho, xi=xi), count)
            for rho, xi in self.lines(local_std, n_clients)
        ]
        return min(events, key=lambda e: _rdp_epsilon([e], delta))

    def events(self, delta: float) -> list[dp_accounting.DpEvent]:
        """The library events :meth:`epsilon` composes (one per run, chosen at ``delta``)."""
        return [self._run_event(s, n, c, delta) for s, n, c in self._runs]

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta``: a proven bound, rounds composed without sampling amplification."""
        _check_delta(delta)
        if not self._runs:
            return 0.0
        return _rdp_epsilon(self.events(delta), delta)

    def gaussian_equivalent_noise_multiplier(self, local_std: float, n_clients: int) -> float:
        """sqrt(n) sigma / Delta2: the continuous-Gaussian multiplier with the same leading RDP."""
        return math.sqrt(n_clients) * local_std / self.l2_sensitivity

    def approx_epsilon_poisson(self, delta: float, sampling_rate: float) -> float:
        """APPROXIMATION, not a bound: PLD epsilon of a continuous Gaussian, Poisson-sampled.

        Treats each round as ``PoissonSampledDpEvent(q, GaussianDpEvent(sqrt(n) sigma /
        Delta2))``. It ignores the tau term, the Skellam correction and the discreteness of the
        noise, and assumes the cohort is secret from the adversary. Report it only beside
        :meth:`epsilon`, never instead of it.
        """
        _check_delta(delta)
        if not 0 < sampling_rate <= 1:
            raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
        if not self._runs:
            return 0.0
        events = [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    sampling_rate,
                    dp_accounting.GaussianDpEvent(self.gaussian_equivalent_noise_multiplier(s, n)),
                ),
                count,
            )
            for s, n, count in self._runs
        ]
        event = events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)
        return float(pld.PLDAccountant().compose(event).get_epsilon(delta))

    def state_dict(self) -> dict[str, Any]:
        """Configuration and the (local_std, n_clients, count) runs."""
        return {
            "noise": self.noise,
            "dim": self.dim,
            "l2_sensitivity": self.l2_sensitivity,
            "l1_sensitivity": self.l1_sensitivity,
            "runs": [list(run) for run in self._runs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the configuration must match this accountant's."""
        _check_keys(_STATE_KEYS, state, type(self).__name__)
        mine = self.state_dict()
        for key in sorted(_STATE_KEYS - {"runs"}):
            if state[key] != mine[key]:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: checkpoint has {key}="
                    f"{state[key]!r} but this accountant has {mine[key]!r}; build it with "
                    "DistributedDpAccountant.from_state_dict"
                )
        self._runs = []
        for item in state["runs"]:
            if len(item) != 3:
                raise ValueError(f"runs entries must be [local_std, n_clients, count], got {item}")
            self.step(float(item[0]), item[1], item[2])

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DistributedDpAccountant:
        """A new accountant with the configuration and history of :meth:`state_dict`."""
        _check_keys(_STATE_KEYS, state, cls.__name__)
        accountant = cls(
            noise=state["noise"],
            dim=state["dim"],
            l2_sensitivity=state["l2_sensitivity"],
            l1_sensitivity=state["l1_sensitivity"],
        )
        accountant.load_state_dict(state)
        return accountant


def calibrate_local_noise(
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    noise: str,
    n_clients: int,
    dim: int,
    l2_sensitivity: float,
    l1_sensitivity: float | None = None,
    tol: float = 1e-3,
) -> float:
    """Smallest per-client sigma (integer units, within ``tol``) meeting the target epsilon.

    Uses ``dp_accounting.calibrate_dp_mechanism`` with ``RdpAccountant`` over the same events as
    :meth:`DistributedDpAccountant.epsilon` (no sampling amplification).
    """
    probe = DistributedDpAccountant(
        noise=noise, dim=dim, l2_sensitivity=l2_sensitivity, l1_sensitivity=l1_sensitivity
    )
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
    _check_delta(delta)
    _check_int(rounds, "rounds")
    _check_int(n_clients, "n_clients")
    # sigma_c = Delta2 (z = 1) is a natural first guess; the search doubles it as needed.
    guess = max(l2_sensitivity / math.sqrt(n_clients), 1.0)
    lower = 0.5 if noise == DISCRETE_GAUSSIAN else guess * 1e-3
    if lower >= guess:
        guess = 2 * lower
    if _rdp_epsilon([probe._run_event(lower, n_clients, rounds, delta)], delta) <= target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon} is already met at local_std={lower}, the smallest "
            "scale this accountant supports; use that or a smaller target"
        )
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: rdp.RdpAccountant(orders=INTEGER_ORDERS),
            lambda s: probe._run_event(s, n_clients, rounds, delta),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(lower, guess),
            tol=tol,
        )
    )
