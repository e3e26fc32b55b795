"""L2 clipping of model updates and adaptive clipping to a target quantile.

- :func:`clip_to_norm` scales every key of a :data:`State` by the same factor min(1, C / ||x||)
  (global, not per-key, clipping: the sensitivity bound of DP-FedAvg is on the whole update), and
  guarantees ``global_norm(output) <= C`` after the float32 cast.
- :class:`AdaptiveClip` is the geometric quantile tracker of Andrew, Thakkar, McMahan, Ramaswamy
  (2021), "Differentially Private Learning with Adaptive Clipping" (NeurIPS):
  C <- C exp(-eta (b_bar - gamma)), where b_bar estimates the fraction of clients whose update
  norm is <= C. Each client reports b_i - 1/2 with b_i = 1[||update_i|| <= C]; the server sums,
  adds N(0, sigma_b^2) and divides by the expected cohort size m. Centring the bits makes the
  add/remove sensitivity of the sum 1/2 (as in tensorflow_privacy's QuantileEstimatorQuery), which
  is what the paper's noise split assumes: releasing the count with noise sigma_b and the update
  sum with multiplier z_Delta is, by Gaussian composition (1/z^2 = 1/z_Delta^2 + (1/2)^2/sigma_b^2),
  one Gaussian mechanism with multiplier z, so z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)
  (:func:`split_noise_multiplier`). Account with z, noise the update with z_Delta. Optional
  bounds ``min_clip`` / ``max_clip`` clamp C after each geometric step (post-processing of the
  released count, so they cost no privacy): under heavy noise the tracked quantile can run away,
  and the noise std grows with C. They are settings, not state: ``state_dict`` leaves them out
  and ``load_state_dict`` keeps the tracker's own.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

State = dict[str, np.ndarray]

# Andrew et al. (2021): the median with eta = 0.2 worked across their tasks, and sigma_b = m / 20
# costs the update noise little (z_Delta ~ 1.005 z for z = 1, m = 100).
DEFAULT_TARGET_QUANTILE = 0.5
DEFAULT_LEARNING_RATE = 0.2
DEFAULT_COUNT_NOISE_FRACTION = 1 / 20
_MAX_SHRINK_STEPS = 64

_ADAPTIVE_KEYS = {
    "clip",
    "target_quantile",
    "learning_rate",
    "count_noise_std",
    "expected_cohort_size",
    "rounds",
}


def _check_keys(expected: set[str], state: dict[str, Any], owner: str) -> None:
    """Raise KeyError naming the missing and unexpected keys of a state dict."""
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(
            f"{owner}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
        )


def _check_state(state: State) -> None:
    for key, value in state.items():
        if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
            raise ValueError(
                f"state[{key!r}] must be a floating numpy array, got "
                f"{getattr(value, 'dtype', type(value).__name__)}"
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"state[{key!r}] has NaN or inf; the update cannot be clipped")


def global_norm(state: State) -> float:
    """L2 norm of all keys together, accumulated in float64 (float32 squares overflow at 2e19)."""
    _check_state(state)
    # Scale by the largest magnitude so float64 squares cannot overflow either.
    peak = max((float(np.max(np.abs(v))) for v in state.values() if v.size), default=0.0)
    if peak == 0.0:
        return 0.0
    total = math.fsum(float(np.sum(np.square(v.astype(np.float64) / peak))) for v in state.values())
    return peak * math.sqrt(total)


def clip_to_norm(state: State, clip: float) -> tuple[State, float]:
    """Scale all keys by min(1, C / ||state||); return (clipped copy, norm before clipping).

    The output keeps each key's dtype and satisfies ``global_norm(output) <= clip`` exactly: if
    rounding to the output dtype lands above C, the factor shrinks until it does not.
    """
    if not (isinstance(clip, numbers.Real) and math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip norm must be a finite number > 0, got {clip!r}")
    norm = global_norm(state)
    if norm <= clip:
        return {k: v.copy() for k, v in state.items()}, norm
    factor, step = clip / norm, 2.0**-24
    for _ in range(_MAX_SHRINK_STEPS):
        out = {k: (v.astype(np.float64) * factor).astype(v.dtype) for k, v in state.items()}
        if global_norm(out) <= clip:
            return out, norm
        # Rounding up to the output dtype overshot C: shrink, by a doubling step (relative
        # rounding needs one 2^-24 step; subnormal outputs round in absolute steps and need more).
        factor *= 1 - step
        step = min(2 * step, 0.5)
    # Only for C below the dtype's smallest subnormal: zero is the only output within C.
    return {k: np.zeros_like(v) for k, v in state.items()}, norm


def split_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """Andrew et al. (2021): z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) for the update sum."""
    z, sigma_b = noise_multiplier, count_noise_std
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"noise_multiplier must be finite and > 0, got {z}")
    if not sigma_b > z / 2:
        raise ValueError(
            f"count_noise_std={sigma_b} must exceed noise_multiplier / 2 = {z / 2} or the count "
            "alone spends the whole budget; the paper uses sigma_b = expected_cohort_size / 20"
        )
    return (z**-2 - (2 * sigma_b) ** -2) ** -0.5


class AdaptiveClip:
    """Geometric tracking of the ``target_quantile`` of client update norms (Andrew et al. 2021)."""

    def __init__(
        self,
        initial_clip: float,
        expected_cohort_size: float,
        *,
        target_quantile: float = DEFAULT_TARGET_QUANTILE,
        learning_rate: float = DEFAULT_LEARNING_RATE,
        count_noise_std: float | None = None,
        min_clip: float | None = None,
        max_clip: float | None = None,
    ) -> None:
        if not (math.isfinite(initial_clip) and initial_clip > 0):
            raise ValueError(f"initial_clip must be finite and > 0, got {initial_clip}")
        for name, bound in (("min_clip", min_clip), ("max_clip", max_clip)):
            if bound is not None and not (math.isfinite(bound) and bound > 0):
                raise ValueError(f"{name} must be finite and > 0 (None: no bound), got {bound}")
        low = 0.0 if min_clip is None else float(min_clip)
        high = math.inf if max_clip is None else float(max_clip)
        if not low <= initial_clip <= high:
            raise ValueError(
                f"initial_clip={initial_clip} must lie in [min_clip, max_clip] = [{low}, {high}]"
            )
        if not expected_cohort_size > 0:
            raise ValueError(f"expected_cohort_size must be > 0, got {expected_cohort_size}")
        if not 0.0 < target_quantile < 1.0:
            raise ValueError(f"target_quantile must be in (0, 1), got {target_quantile}")
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate}")
        if count_noise_std is None:
            count_noise_std = DEFAULT_COUNT_NOISE_FRACTION * expected_cohort_size
        if not (math.isfinite(count_noise_std) and count_noise_std >= 0):
            raise ValueError(
                f"count_noise_std must be finite and >= 0 (0 = non-private), got {count_noise_std}"
            )
        self.clip = float(initial_clip)
        self.expected_cohort_size = float(expected_cohort_size)
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)
        self.count_noise_std = float(count_noise_std)
        self.min_clip = None if min_clip is None else float(min_clip)
        self.max_clip = None if max_clip is None else float(max_clip)
        self.rounds = 0

    def client_bit(self, norm: float) -> float:
        """What a client reports: 1[norm <= C] - 1/2 (sensitivity 1/2)."""
        return float(norm <= self.clip) - 0.5

    def update_from_bits(self, bits: np.ndarray, rng: np.random.Generator) -> float:
        """New clip from the clients' centred bits (each -1/2 or +1/2); returns it."""
        bits = np.asarray(bits, dtype=np.float64)
        if bits.ndim != 1 or not np.all(np.isin(bits, (-0.5, 0.5))):
            raise ValueError("bits must be a 1-d array of client_bit() values (-0.5 or +0.5)")
        return self.update_from_sum(float(bits.sum()), rng)

    def update_from_sum(self, centred_bit_sum: float, rng: np.random.Generator) -> float:
        """New clip from sum_i (b_i - 1/2), e.g. as released by secure aggregation; returns it."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError("rng must be a numpy.random.Generator (np.random.default_rng(seed))")
        noise = rng.normal(0.0, self.count_noise_std) if self.count_noise_std > 0 else 0.0
        noisy = centred_bit_sum + noise
        # Sum of (b_i - 1/2) over an expected m clients, back to a fraction: noisy / m + 1/2.
        b_bar = noisy / self.expected_cohort_size + 0.5
        self.clip *= math.exp(-self.learning_rate * (b_bar - self.target_quantile))
        if self.max_clip is not None:
            self.clip = min(self.clip, self.max_clip)
        if self.min_clip is not None:
            self.clip = max(self.clip, self.min_clip)
        self.rounds += 1
        return self.clip

    def update(self, norms: np.ndarray, rng: np.random.Generator) -> float:
        """New clip from this round's client update norms (before clipping); returns it."""
        norms = np.asarray(norms, dtype=np.float64)
        if norms.ndim != 1 or not np.all(np.isfinite(norms)) or np.any(norms < 0):
            raise ValueError("norms must be a 1-d array of finite non-negative update norms")
        return self.update_from_sum(float(np.sum(norms <= self.clip)) - 0.5 * len(norms), rng)

    def state_dict(self) -> dict[str, Any]:
        """Current clip, hyper-parameters and the number of updates so far (not the bounds)."""
        return {
            "clip": self.clip,
            "target_quantile": self.target_quantile,
            "learning_rate": self.learning_rate,
            "count_noise_std": self.count_noise_std,
            "expected_cohort_size": self.expected_cohort_size,
            "rounds": self.rounds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the bounds stay this tracker's, and a clip outside them
        (a checkpoint of other settings) is refused."""
        _check_keys(_ADAPTIVE_KEYS, state, type(self).__name__)
        clip, low, high = state["clip"], self.min_clip or 0.0, self.max_clip or math.inf
        if isinstance(clip, numbers.Real) and not low <= clip <= high:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the saved clip {clip} lies outside "
                f"[min_clip, max_clip] = [{low}, {high}]; restore it with the settings it ran with"
            )
        restored = AdaptiveClip(
            state["clip"],
            state["expected_cohort_size"],
            target_quantile=state["target_quantile"],
            learning_rate=state["learning_rate"],
            count_noise_std=state["count_noise_std"],
            min_clip=self.min_clip,
            max_clip=self.max_clip,
        )
        if not isinstance(state["rounds"], int) or state["rounds"] < 0:
            raise ValueError(f"rounds must be an int >= 0, got {state['rounds']!r}")
        restored.rounds = state["rounds"]
        self.__dict__.update(restored.__dict__)
