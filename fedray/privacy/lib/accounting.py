"""Privacy accounting for client-level DP-FedAvg and per-client DP-SGD on ``dp_accounting``.

One round of DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models") clips each sampled client's update to L2 norm C, sums, and adds N(0, (z C)^2 I): a
Gaussian mechanism with noise multiplier z on a sampled cohort. Per round, this module records the
``dp_accounting`` event

- Poisson sampling with rate q (every client joins independently with probability q):
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under add/remove-one adjacency. Both
  ``PLDAccountant`` and ``RdpAccountant`` (dp_accounting 0.6) support it; the PLD accountant
  (Meiser & Mohammadi 2018; Koskela et al. 2020; Doroshenko et al. 2022, "Connect the Dots") is
  the primary, tighter number, the RDP accountant (Mironov 2017; Mironov, Talwar, Zhang 2019) the
  cross-check.
- fixed-size sampling, a uniformly random cohort of m of the N clients without replacement:
  ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))`` under replace-one adjacency
  (add/remove is not defined for a fixed cohort size). Only ``RdpAccountant`` supports this event
  (Wang, Balle, Kasiviswanathan 2019, Thm 27); ``PLDAccountant`` rejects it, so the primary
  number is RDP and :attr:`DpAccountant.accountant` says so. The halved multiplier works around
  dp_accounting issue google/differential-privacy#378: ``GaussianDpEvent`` defines z = s / C,
  but the RDP sampling-without-replacement formula treats z as noise / L2-sensitivity, and under
  replace-one two clipped updates differ by up to 2C. Passing z unchanged would under-report
  epsilon by 2.2-2.5x (measured: population 1222, cohort 50, 100 rounds, delta 1e-5).
  ``tests/privacy/test_accounting.py`` pins the installed behaviour so that an upgrade that fixes
  the library fails the test instead of silently double-correcting. Replace-one epsilon is not
  comparable to add/remove epsilon: replacing is removing one client and adding another.

The per-client sample-level accountant for DP-SGD inside a client (Abadi et al. 2016) is the same
class with q = batch_size / n_i and one ``step`` of ``steps_per_round`` per round the client
joins (see :meth:`DpAccountant.for_dp_sgd`).

History is kept as runs of (z, count): consecutive steps with the same z merge. Epsilon is always
recomputed from the whole history, so it depends only on the runs, and a reloaded accountant
(or one that never stopped) gives the same float, bit for bit.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

POISSON = "poisson"
FIXED_SIZE = "fixed_size"
SAMPLINGS = (POISSON, FIXED_SIZE)

# dp_accounting's own default: finer is slower (PLD size ~ 1/interval), coarser is looser.
DEFAULT_VALUE_DISCRETIZATION = 1e-4
# Calibration searches z above this: PLDs of tiny noise multipliers grow huge and slow (z = 0.1
# takes ~15 s per evaluation), and client-level DP below z = 0.3 protects next to nothing.
DEFAULT_MIN_NOISE_MULTIPLIER = 0.3

_CONFIG_KEYS = ("sampling", "sampling_rate", "cohort_size", "population")
_STATE_KEYS = {*_CONFIG_KEYS, "value_discretization_interval", "runs"}


def _check_keys(expected: set[str], state: dict[str, Any], owner: str) -> None:
    """Raise KeyError naming the missing and unexpected keys of a state dict."""
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(
            f"{owner}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
        )


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}; typical is 1/population^1.1")


def _check_noise_multiplier(z: float) -> None:
    if not (isinstance(z, numbers.Real) and math.isfinite(z) and z >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {z!r}")


def _check_count(count: int, name: str = "rounds") -> None:
    if not isinstance(count, numbers.Integral) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{name} must be an int >= 1, got {count!r}")


def _sampling_params(
    sampling: str,
    sampling_rate: float | None,
    cohort_size: int | None,
    population: int | None,
) -> tuple[float | None, int | None, int | None]:
    """Validate a sampling description and return (q, m, N) with the unused ones None."""
    if sampling == POISSON:
        if cohort_size is not None or population is not None:
            raise ValueError(
                "poisson sampling takes sampling_rate only; cohort_size/population are for "
                "sampling='fixed_size'"
            )
        if sampling_rate is None or not 0.0 < float(sampling_rate) <= 1.0:
            raise ValueError(
                f"poisson sampling needs sampling_rate q in (0, 1], got {sampling_rate!r}"
            )
        return float(sampling_rate), None, None
    if sampling == FIXED_SIZE:
        if sampling_rate is not None:
            raise ValueError(
                "fixed_size sampling takes cohort_size and population, not sampling_rate"
            )
        ints = (cohort_size, population)
        ok = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in ints)
        if not ok or not 1 <= cohort_size <= population:  # type: ignore[operator]
            raise ValueError(
                "fixed_size sampling needs ints 1 <= cohort_size <= population, got "
                f"cohort_size={cohort_size!r}, population={population!r}"
            )
        return None, int(cohort_size), int(population)  # type: ignore[arg-type]
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def round_event(
    noise_multiplier: float,
    *,
    sampling: str = POISSON,
    sampling_rate: float | None = None,
    cohort_size: int | None = None,
    population: int | None = None,
) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of one round (or one DP-SGD step) with noise multiplier z."""
    _check_noise_multiplier(noise_multiplier)
    q, m, n = _sampling_params(sampling, sampling_rate, cohort_size, population)
    if sampling == POISSON:
        return dp_accounting.PoissonSampledDpEvent(
            q, dp_accounting.GaussianDpEvent(noise_multiplier)
        )
    # Replace-one sensitivity of a sum of C-clipped updates is 2C (see module docstring).
    return dp_accounting.SampledWithoutReplacementDpEvent(
        n, m, dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    )


def history_event(runs: list[tuple[float, int]], **sampling: Any) -> dp_accounting.DpEvent:
    """The event of a history of (z, count) runs, in order; ``sampling`` as in round_event."""
    events = [
        dp_accounting.SelfComposedDpEvent(round_event(z, **sampling), count) for z, count in runs
    ]
    return events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)


class DpAccountant:
    """(epsilon, delta) of a DP-FedAvg run, or of one client's DP-SGD, from its noise history.

    ``sampling='poisson'`` with ``sampling_rate`` q, or ``sampling='fixed_size'`` with
    ``cohort_size`` m and ``population`` N. :attr:`accountant` names the accountant behind
    :meth:`epsilon`: ``"pld"`` for Poisson, ``"rdp"`` for fixed-size (the PLD accountant of
    dp_accounting 0.6 does not support sampling without replacement).
    """

    def __init__(
        self,
        *,
        sampling: str = POISSON,
        sampling_rate: float | None = None,
        cohort_size: int | None = None,
        population: int | None = None,
        value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION,
    ) -> None:
        q, m, n = _sampling_params(sampling, sampling_rate, cohort_size, population)
        if not 0.0 < value_discretization_interval <= 0.1:
            raise ValueError(
                "value_discretization_interval must be in (0, 0.1], got "
                f"{value_discretization_interval}; dp_accounting's default is 1e-4"
            )
        self.sampling = sampling
        self.sampling_rate = q
        self.cohort_size = m
        self.population = n
        self.value_discretization_interval = float(value_discretization_interval)
        self._runs: list[tuple[float, int]] = []
        self._cache: dict[tuple[Any, ...], float] = {}

    @classmethod
    def for_dp_sgd(
        cls,
        batch_size: int,
        dataset_size: int,
        *,
        value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION,
    ) -> DpAccountant:
        """A sample-level accountant for DP-SGD with Poisson batches (opacus ``poisson_sampling``).

        One :meth:`step` per optimiser step, q = batch_size / dataset_size. Keep it in the
        client's persistent state (:meth:`state_dict` is a few floats) and step it only in the
        rounds the client trains.
        """
        if not all(isinstance(v, numbers.Integral) for v in (batch_size, dataset_size)):
            raise ValueError("batch_size and dataset_size must be ints")
        if not 1 <= batch_size <= dataset_size:
            raise ValueError(
                f"need 1 <= batch_size <= dataset_size, got {batch_size} and {dataset_size}"
            )
        return cls(
            sampling=POISSON,
            sampling_rate=batch_size / dataset_size,
            value_discretization_interval=value_discretization_interval,
        )

    @property
    def accountant(self) -> str:
        """Which dp_accounting accountant produces :meth:`epsilon`: ``"pld"`` or ``"rdp"``."""
        return "pld" if self.sampling == POISSON else "rdp"

    @property
    def runs(self) -> list[tuple[float, int]]:
        """The history as (noise multiplier, count) runs, oldest first."""
        return list(self._runs)

    @property
    def steps(self) -> int:
        """How many rounds (or DP-SGD steps) have been recorded."""
        return sum(count for _, count in self._runs)

    def _sampling_kw(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _CONFIG_KEYS}

    @staticmethod
    def _extend(
        runs: list[tuple[float, int]], noise_multiplier: float, count: int
    ) -> list[tuple[float, int]]:
        runs = list(runs)
        if runs and runs[-1][0] == noise_multiplier:
            runs[-1] = (noise_multiplier, runs[-1][1] + int(count))
        else:
            runs.append((float(noise_multiplier), int(count)))
        return runs

    def step(self, noise_multiplier: float, rounds: int = 1) -> None:
        """Record ``rounds`` rounds (or DP-SGD steps) with noise multiplier z = noise_std / C."""
        _check_noise_multiplier(noise_multiplier)
        _check_count(rounds)
        self._runs = self._extend(self._runs, float(noise_multiplier), rounds)

    def event(self) -> dp_accounting.DpEvent:
        """The composed ``dp_accounting`` event of the history (NoOp when empty)."""
        if not self._runs:
            return dp_accounting.NoOpDpEvent()
        return history_event(self._runs, **self._sampling_kw())

    def _fresh(self, kind: str) -> dp_accounting.PrivacyAccountant:
        if kind == "pld":
            return pld.PLDAccountant(
                value_discretization_interval=self.value_discretization_interval
            )
        relation = (
            dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
            if self.sampling == POISSON
            else dp_accounting.NeighboringRelation.REPLACE_ONE
        )
        return rdp.RdpAccountant(neighboring_relation=relation)

    def _epsilon(self, runs: list[tuple[float, int]], delta: float, kind: str) -> float:
        _check_delta(delta)
        if kind == "pld" and self.sampling != POISSON:
            raise ValueError(
                "dp_accounting's PLD accountant does not support fixed-size sampling; "
                "use epsilon_rdp() (epsilon() already does)"
            )
        if not runs:
            return 0.0
        if any(z == 0.0 for z, _ in runs):
            return math.inf  # a round without noise is not private
        key = (tuple(runs), float(delta), kind)
        if key not in self._cache:
            if len(self._cache) >= 16:  # each epsilon is a full PLD build; keep only recent ones
                self._cache.clear()
            event = history_event(runs, **self._sampling_kw())
            self._cache[key] = float(self._fresh(kind).compose(event).get_epsilon(delta))
        return self._cache[key]

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` of the history from the primary accountant (:attr:`accountant`)."""
        return self._epsilon(self._runs, delta, self.accountant)

    def epsilon_rdp(self, delta: float) -> float:
        """Epsilon at ``delta`` from the RDP accountant: the cross-check (an upper bound >= PLD)."""
        return self._epsilon(self._runs, delta, "rdp")

    def epsilon_after(self, delta: float, noise_multiplier: float, rounds: int = 1) -> float:
        """Epsilon the history would have after ``rounds`` more rounds at ``noise_multiplier``."""
        _check_noise_multiplier(noise_multiplier)
        _check_count(rounds)
        runs = self._extend(self._runs, float(noise_multiplier), rounds)
        return self._epsilon(runs, delta, self.accountant)

    def would_exceed(
        self, max_epsilon: float, delta: float, next_noise_multiplier: float, rounds: int = 1
    ) -> bool:
        """True if ``rounds`` more rounds at ``next_noise_multiplier`` would spend over the budget.

        Call it before a round and stop cleanly if True: the released model then satisfies
        (max_epsilon, delta)-DP.
        """
        if not max_epsilon > 0:
            raise ValueError(f"max_epsilon must be > 0, got {max_epsilon}")
        return self.epsilon_after(delta, next_noise_multiplier, rounds) > max_epsilon

    def state_dict(self) -> dict[str, Any]:
        """Sampling configuration and the (z, count) runs: small, picklable, JSON-able."""
        return {
            "sampling": self.sampling,
            "sampling_rate": self.sampling_rate,
            "cohort_size": self.cohort_size,
            "population": self.population,
            "value_discretization_interval": self.value_discretization_interval,
            "runs": [[z, count] for z, count in self._runs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the sampling configuration must match this accountant's."""
        _check_keys(_STATE_KEYS, state, type(self).__name__)
        mine = self.state_dict()
        for key in sorted(_STATE_KEYS - {"runs"}):
            if state[key] != mine[key]:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: checkpoint has {key}="
                    f"{state[key]!r} but this accountant has {mine[key]!r}; epsilon would be "
                    "wrong. Build the accountant with the checkpoint's settings "
                    "(DpAccountant.from_state_dict)"
                )
        runs: list[tuple[float, int]] = []
        for item in state["runs"]:
            if len(item) != 2:
                raise ValueError(f"runs entries must be [noise_multiplier, count], got {item!r}")
            z, count = float(item[0]), item[1]
            _check_noise_multiplier(z)
            _check_count(count, "run count")
            runs = self._extend(runs, z, count)
        self._runs = runs

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DpAccountant:
        """A new accountant with the configuration and history of :meth:`state_dict`."""
        _check_keys(_STATE_KEYS, state, cls.__name__)
        accountant = cls(
            sampling=state["sampling"],
            sampling_rate=state["sampling_rate"],
            cohort_size=state["cohort_size"],
            population=state["population"],
            value_discretization_interval=state["value_discretization_interval"],
        )
        accountant.load_state_dict(state)
        return accountant


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    sampling: str = POISSON,
    sampling_rate: float | None = None,
    cohort_size: int | None = None,
    population: int | None = None,
    accountant: str | None = None,
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION,
    min_noise_multiplier: float = DEFAULT_MIN_NOISE_MULTIPLIER,
    tol: float = 1e-4,
) -> float:
    """Smallest z (within ``tol``) whose ``rounds`` rounds spend at most ``target_epsilon``.

    Uses ``dp_accounting.calibrate_dp_mechanism`` (Brent's method, then a check that the returned
    z is on the private side of the target). ``accountant`` defaults to the one
    :class:`DpAccountant` would use (PLD for Poisson, RDP for fixed-size).
    """
    probe = DpAccountant(
        sampling=sampling,
        sampling_rate=sampling_rate,
        cohort_size=cohort_size,
        population=population,
        value_discretization_interval=value_discretization_interval,
    )
    kind = accountant or probe.accountant
    if kind not in ("pld", "rdp"):
        raise ValueError(f"accountant must be 'pld' or 'rdp', got {kind!r}")
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
    _check_delta(delta)
    _check_count(rounds)
    if not min_noise_multiplier > 0:
        raise ValueError(f"min_noise_multiplier must be > 0, got {min_noise_multiplier}")
    lowest = probe._epsilon([(float(min_noise_multiplier), rounds)], delta, kind)
    if lowest <= target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon} is loose enough that z={min_noise_multiplier} "
            f"already gives epsilon={lowest:.3g} over {rounds} rounds; lower "
            "min_noise_multiplier or pick z directly"
        )
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: probe._fresh(kind),
            lambda z: history_event([(z, rounds)], **probe._sampling_kw()),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(
                min_noise_multiplier, 2 * min_noise_multiplier
            ),
            tol=tol,
        )
    )
