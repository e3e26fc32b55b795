"""Distributed DP over secure aggregation: discrete noise samplers and the modular encoding.

Follows Kairouz, Liu, Steinke (2021), "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation" (ICML), Algorithm 1/2:

client: flatten x (||x||_2 <= c) -> randomized Hadamard rotation H D_s x / sqrt(D) with a seed
shared by the cohort (zero-padded to D = 2^k) -> scale by 1/gamma -> conditional randomized
rounding to Z^D (re-round until ||x~||_2 <= Delta2) -> add integer noise -> reduce mod 2^bits.
server: sum mod 2^bits -> lift to centred integers in [-2^(bits-1), 2^(bits-1)) -> times gamma ->
inverse rotation -> unflatten. The result is the (noisy) sum of the clients' x.

Conditional rounding bound (Kairouz et al., Thm 1 / Prop 22; as in google-research/federated's
``rounded_l2_norm_bound``), with c' = c / gamma:
  Delta2 = min( c' + sqrt(D), sqrt(c'^2 + D/4 + sqrt(2 ln(1/beta)) (c' + sqrt(D)/2)) ).
Each attempt fails with probability <= beta; beta = exp(-1/2) is the paper's choice.

Noise: the discrete Gaussian N_Z(0, sigma^2) by the rejection sampler of Canonne, Kamath, Steinke
(2020), "The Discrete Gaussian for Differential Privacy", Algorithm 3 (discrete Laplace proposal
with t = floor(sigma) + 1, accepted with probability exp(-(|y| - sigma^2/t)^2 / (2 sigma^2))),
vectorised: exact as an algorithm, with its Bernoulli tests in float64 (as in TensorFlow
Federated's implementation) and not hardened against timing side channels. Skellam with variance
sigma^2 is Poisson(sigma^2/2) - Poisson(sigma^2/2) (Agarwal, Kairouz, Liu 2021); a sum of
Skellams is Skellam.

No wrap-around, checked up front: |sum of n rounded vectors|_inf <= n Delta2 always, and the
summed noise stays within t with probability >= 1 - failure_prob over all D coordinates (the sum
of n discrete Gaussians is n sigma^2-subgaussian (CKS 2020) + union bound; Skellam by
Bernstein's inequality with variance n sigma^2 and unit jumps). :class:`DdpEncoding` refuses
``bits`` with n Delta2 + t >= 2^(bits-1) (the silent-overflow bug class of fedbiomed #1210).

Decoding error without noise (deterministic): every rounded coordinate is within 1 of its scaled
value and the rotation is orthonormal, so ||decode(sum) - sum_i x_i||_2 <= gamma n sqrt(D),
plus the float32 cast of the output (<= 2^-24 relative per coordinate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

State = dict[str, np.ndarray]
Spec = tuple[tuple[str, tuple[int, ...], str], ...]

DISCRETE_GAUSSIAN = "discrete_gaussian"
SKELLAM = "skellam"
NOISES = (DISCRETE_GAUSSIAN, SKELLAM)
DEFAULT_BETA = math.exp(-0.5)  # Kairouz et al. (2021) experiments
DEFAULT_FAILURE_PROB = 1e-9  # per round, chance that noise alone wraps some coordinate
_NORM_SLACK = 1e-9  # relative: tolerates clip_to_norm's float rounding of ||x|| <= c


def _check_rng(rng: np.random.Generator) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator (np.random.default_rng(seed))")


def sample_discrete_gaussian(
    sigma: float, size: int | tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """IID samples of N_Z(0, sigma^2) as int64 (Canonne, Kamath, Steinke 2020, Algorithm 3)."""
    _check_rng(rng)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    out = np.zeros(size, dtype=np.int64)
    if sigma == 0 or out.size == 0:
        return out
    flat = out.reshape(-1)
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # geometric success probability: DLap(t) = G1 - G2
    todo = np.arange(flat.size)
    while todo.size:
        k = todo.size
        y = rng.geometric(p, k) - rng.geometric(p, k)
        accept = rng.random(k) < np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2))
        flat[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out


def sample_skellam(
    variance: float, size: int | tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """IID symmetric Skellam samples with the given variance: Poisson(v/2) - Poisson(v/2)."""
    _check_rng(rng)
    if not (math.isfinite(variance) and variance >= 0):
        raise ValueError(f"variance must be finite and >= 0, got {variance}")
    lam = variance / 2
    return rng.poisson(lam, size).astype(np.int64) - rng.poisson(lam, size).astype(np.int64)


def discrete_gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """P[N_Z(0, sigma^2) = x] for integers x (normaliser summed over +-(12 sigma + 12))."""
    half = int(12 * sigma) + 12
    grid = np.arange(-half, half + 1, dtype=np.float64)
    norm = np.exp(-(grid**2) / (2 * sigma**2)).sum()
    return np.exp(-(np.asarray(support, dtype=np.float64) ** 2) / (2 * sigma**2)) / norm


def discrete_gaussian_variance(sigma: float) -> float:
    """Var N_Z(0, sigma^2), slightly below sigma^2 (CKS 2020)."""
    half = int(12 * sigma) + 12
    grid = np.arange(-half, half + 1, dtype=np.float64)
    return float(np.sum(grid**2 * discrete_gaussian_pmf(sigma, grid)))


def state_spec(state: State) -> Spec:
    """Keys (sorted), shapes and dtypes: the layout every client and the server must share."""
    return tuple((k, tuple(state[k].shape), state[k].dtype.str) for k in sorted(state))


def flatten(state: State) -> tuple[np.ndarray, Spec]:
    """One float64 vector of all keys in sorted-key order, and the spec to undo it."""
    spec = state_spec(state)
    if not spec:
        raise ValueError("cannot encode an empty state")
    vec = np.concatenate([state[k].astype(np.float64).reshape(-1) for k, _, _ in spec])
    if not np.all(np.isfinite(vec)):
        raise ValueError("state has NaN or inf")
    return vec, spec


def unflatten(vec: np.ndarray, spec: Spec) -> State:
    """Inverse of :func:`flatten` (values cast to each key's dtype)."""
    total = sum(math.prod(shape) for _, shape, _ in spec)
    if vec.shape != (total,):
        raise ValueError(f"vector has shape {vec.shape}, the spec needs ({total},)")
    out, start = {}, 0
    for key, shape, dtype in spec:
        size = math.prod(shape)
        out[key] = vec[start : start + size].reshape(shape).astype(np.dtype(dtype))
        start += size
    return out


def padded_dim(dim: int) -> int:
    """Smallest power of two >= dim."""
    return 1 << max(0, (dim - 1).bit_length())


def fwht(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh-Hadamard transform H x / sqrt(n) (its own inverse), n = 2^k."""
    n = x.shape[-1]
    if x.ndim != 1 or n & (n - 1) or n == 0:
        raise ValueError(f"fwht needs a 1-d array whose length is a power of two, got {x.shape}")
    y = np.array(x, dtype=np.float64)
    h = 1
    while h < n:
        y = y.reshape(-1, 2, h)
        y = np.stack((y[:, 0] + y[:, 1], y[:, 0] - y[:, 1]), axis=1)
        h *= 2
    return y.reshape(n) / math.sqrt(n)


def _signs(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=n).astype(np.float64) * 2 - 1


def rotate(vec: np.ndarray, seed: int) -> np.ndarray:
    """Randomized Hadamard rotation H D_s x / sqrt(D) of x zero-padded to D = 2^k."""
    n = padded_dim(vec.size)
    padded = np.zeros(n)
    padded[: vec.size] = vec
    return fwht(_signs(seed, n) * padded)


def unrotate(rotated: np.ndarray, seed: int, dim: int) -> np.ndarray:
    """Inverse of :func:`rotate`: D_s H y / sqrt(D), cut back to ``dim``."""
    return (_signs(seed, rotated.size) * fwht(rotated))[:dim]


def rounded_norm_bound(scaled_norm: float, dim: int, beta: float) -> float:
    """Delta2: norm bound after conditional randomized rounding (Kairouz et al. 2021)."""
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    bound = scaled_norm + math.sqrt(dim)
    if beta > 0:
        s = math.sqrt(2 * math.log(1 / beta))
        bound = min(
            bound, math.sqrt(scaled_norm**2 + dim / 4 + s * (scaled_norm + math.sqrt(dim) / 2))
        )
    return bound


def conditional_round(
    x: np.ndarray, bound: float, rng: np.random.Generator, max_retries: int = 1000
) -> np.ndarray:
    """Unbiased randomized rounding to int64, redrawn until ||result||_2 <= bound."""
    _check_rng(rng)
    low = np.floor(x)
    frac = x - low
    low = low.astype(np.int64)
    for _ in range(max_retries):
        r = low + (rng.random(x.shape) < frac)
        if np.linalg.norm(r.astype(np.float64)) <= bound:
            return r
    raise ValueError(
        f"conditional rounding failed {max_retries} times to get within norm {bound:.6g} of "
        f"a vector of norm {np.linalg.norm(x):.6g}: the input exceeds the clip norm or beta is "
        "too small"
    )


def noise_tail_bound(
    noise: str, local_std: float, n_clients: int, dim: int, failure_prob: float
) -> float:
    """t with P(max_j |sum of n clients' noise_j| >= t) <= failure_prob (see module docstring)."""
    if local_std == 0:
        return 0.0
    log_term = math.log(2 * dim / failure_prob)
    variance = n_clients * local_std**2
    if noise == DISCRETE_GAUSSIAN:
        return math.sqrt(2 * variance * log_term)
    if noise == SKELLAM:
        return log_term / 3 + math.sqrt(log_term**2 / 9 + 2 * log_term * variance)
    raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")


@dataclass(frozen=True)
class DdpEncoding:
    """Parameters of the pipeline shared by the cohort and the server; checks bits up front.

    ``dim``: flat size of the update; ``clip``: L2 bound c of the (already clipped) update;
    ``gamma``: granularity (rounding grid step, in update units); ``bits``: modulus 2^bits of
    secure aggregation; ``n_clients``: the most clients whose encodings are summed (sizes the
    wrap-around check) and the number of noise shares; ``local_std``: per-client noise scale in
    integer units (discrete Gaussian sigma, or Skellam standard deviation; 0 = no noise).
    """

    dim: int
    clip: float
    gamma: float
    bits: int
    n_clients: int
    noise: str = DISCRETE_GAUSSIAN
    local_std: float = 0.0
    beta: float = DEFAULT_BETA
    failure_prob: float = DEFAULT_FAILURE_PROB
    max_retries: int = 1000
    l2_sensitivity: float = field(init=False)

    def __post_init__(self) -> None:
        for name in ("dim", "bits", "n_clients", "max_retries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 2 <= self.bits <= 64:
            raise ValueError(f"bits must be in [2, 64], got {self.bits}")
        for name in ("clip", "gamma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {self.noise!r}")
        if not (math.isfinite(self.local_std) and self.local_std >= 0):
            raise ValueError(f"local_std must be finite and >= 0, got {self.local_std}")
        if not 0 < self.failure_prob < 1:
            raise ValueError(f"failure_prob must be in (0, 1), got {self.failure_prob}")
        scaled = self.clip * (1 + _NORM_SLACK) / self.gamma
        if scaled > 2.0**50:
            raise ValueError(f"clip / gamma = {scaled:.3g} is beyond float64's integer range")
        object.__setattr__(
            self, "l2_sensitivity", rounded_norm_bound(scaled, self.padded_dim, self.beta)
        )
        signal = self.n_clients * self.l2_sensitivity
        tail = noise_tail_bound(
            self.noise, self.local_std, self.n_clients, self.padded_dim, self.failure_prob
        )
        need = min_bits(signal + tail)
        if self.bits < need:
            raise ValueError(
                f"bits={self.bits} can wrap around: {self.n_clients} clients x norm bound "
                f"{self.l2_sensitivity:.6g} + noise tail {tail:.6g} = {signal + tail:.6g} >= "
                f"2^{self.bits - 1}; use bits >= {need}, a larger gamma or fewer clients"
            )

    @property
    def padded_dim(self) -> int:
        """D: dim rounded up to a power of two (the accounting dimension)."""
        return padded_dim(self.dim)

    @property
    def l1_sensitivity(self) -> float:
        """L1 bound of one rounded vector: min(sqrt(D) Delta2, Delta2^2)."""
        return self.l2_sensitivity * min(math.sqrt(self.padded_dim), self.l2_sensitivity)

    @property
    def dtype(self) -> np.dtype:
        """uint32 up to 32 bits, else uint64."""
        return np.dtype(np.uint32 if self.bits <= 32 else np.uint64)

    def rounding_error_bound(self, n_summed: int) -> float:
        """gamma n sqrt(D): bound on ||decode(sum) - sum of inputs||_2 without noise (float64)."""
        return self.gamma * n_summed * math.sqrt(self.padded_dim)

    def encode(self, state: State, *, rotation_seed: int, rng: np.random.Generator) -> np.ndarray:
        """One client's update as D integers mod 2^bits (``rng`` is the client's private one)."""
        vec, _ = flatten(state)
        if vec.size != self.dim:
            raise ValueError(f"state has {vec.size} values, this encoding is for dim={self.dim}")
        norm = float(np.linalg.norm(vec))
        if norm > self.clip * (1 + _NORM_SLACK):
            raise ValueError(
                f"update norm {norm:.6g} exceeds clip {self.clip:.6g}: clip it first "
                "(clipping.clip_to_norm)"
            )
        scaled = rotate(vec, rotation_seed) / self.gamma
        ints = conditional_round(scaled, self.l2_sensitivity, rng, self.max_retries)
        if self.local_std > 0:
            if self.noise == DISCRETE_GAUSSIAN:
                ints = ints + sample_discrete_gaussian(self.local_std, ints.size, rng)
            else:
                ints = ints + sample_skellam(self.local_std**2, ints.size, rng)
        mask = np.uint64((1 << self.bits) - 1)
        return (ints.view(np.uint64) & mask).astype(self.dtype)  # two's complement mod 2^64

    def aggregate(self, encodings: list[np.ndarray]) -> np.ndarray:
        """Sum of encodings mod 2^bits (what secure aggregation reveals), as uint64."""
        if not encodings:
            raise ValueError("aggregate needs at least one encoding")
        if len(encodings) > self.n_clients:
            raise ValueError(
                f"{len(encodings)} encodings but the wrap-around check was for n_clients="
                f"{self.n_clients}; build the encoding with the largest cohort"
            )
        total = np.zeros(self.padded_dim, dtype=np.uint64)
        for enc in encodings:
            if enc.shape != (self.padded_dim,) or enc.dtype != self.dtype:
                raise ValueError(
                    f"encoding has shape {enc.shape} and dtype {enc.dtype}, expected "
                    f"({self.padded_dim},) {self.dtype}"
                )
            total += enc.astype(np.uint64)  # wraps mod 2^64, a multiple of 2^bits
        return total & np.uint64((1 << self.bits) - 1)

    def decode(self, summed: np.ndarray, spec: Spec, *, rotation_seed: int) -> State:
        """The float sum of the clients' updates from :meth:`aggregate`'s output."""
        if summed.shape != (self.padded_dim,):
            raise ValueError(f"summed has shape {summed.shape}, expected ({self.padded_dim},)")
        values = np.asarray(summed, dtype=np.uint64) & np.uint64((1 << self.bits) - 1)
        if self.bits == 64:
            centred = values.view(np.int64)
        else:
            centred = values.astype(np.int64)
            centred = np.where(centred >= 1 << (self.bits - 1), centred - (1 << self.bits), centred)
        vec = unrotate(centred.astype(np.float64) * self.gamma, rotation_seed, self.dim)
        return unflatten(vec, spec)


def min_bits(max_abs: float) -> int:
    """Smallest bits with max_abs < 2^(bits-1): centred values in [-2^(bits-1), 2^(bits-1))."""
    return max(2, math.floor(math.log2(max_abs)) + 2) if max_abs >= 1 else 2
