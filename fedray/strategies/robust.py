"""Byzantine-robust aggregators: coordinate-wise median and trimmed mean (Yin et al., 2018),
Krum and Multi-Krum (Blanchard et al., 2017). All ignore sample counts: a weight a client
reports is exactly what an attacker would inflate. Deltas are stacked per key in column chunks
of `_CHUNK_ELEMS` values, so memory stays bounded whatever the client count and tensor size;
the coordinate-wise rules reduce the chunks on several threads (numpy's partition releases the
GIL), each coordinate on its own, so the result does not depend on the thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from fedray.core.registry import register
from fedray.core.statemath import add, deal, reduction_threads, weighted_sum
from fedray.core.types import Contribution, State
from fedray.core.validate import check_like
from fedray.strategies.base import Strategy

_CHUNK_ELEMS = 1 << 22  # values per stacked chunk (16 MiB of float32)


def _layout(
    deltas: list[State], global_state: State
) -> tuple[dict[str, list[np.ndarray]], list[tuple[str, int, int]], int]:
    """Check every delta against the global state; (flat deltas per key, (key, start, stop)
    column chunks of at most _CHUNK_ELEMS // n columns, the widest chunk's width)."""
    for i, d in enumerate(deltas):
        check_like(d, global_state, f"update {i}")
    width = max(1, _CHUNK_ELEMS // len(deltas))
    spans = [
        (key, start, min(start + width, a.size))
        for key, a in global_state.items()
        for start in range(0, a.size, width)
    ]
    flats = {key: [np.ravel(d[key]) for d in deltas] for key in global_state}
    return flats, spans, max((b - a for _, a, b in spans), default=0)


def _fill(block: np.ndarray, flats: list[np.ndarray], start: int) -> np.ndarray:
    """block[i] = flats[i][start:start + width], cast to the block's dtype."""
    for i, flat in enumerate(flats):
        block[i] = flat[start : start + block.shape[1]]
    return block


def _chunks(
    deltas: list[State], global_state: State, dtype: type = np.float32
) -> Iterator[tuple[str, int, np.ndarray]]:
    """(key, start, block): block[i] = deltas[i][key].ravel()[start:start + width], as `dtype`.

    `block` is one reused scratch buffer: overwrite it freely, but finish before the next one.
    """
    flats, spans, width = _layout(deltas, global_state)
    buf = np.empty((len(deltas), width), dtype)
    for key, start, stop in spans:
        yield key, start, _fill(buf[:, : stop - start], flats[key], start)


def _coordinatewise(
    global_state: State, contributions: list[Contribution], reduce: Callable[[np.ndarray], Any]
) -> State:
    """global + reduce(block) per coordinate; `reduce` maps an (n, w) block to w values and may
    overwrite the block. The chunks are dealt to threads (:func:`reduction_threads`), each with
    its own scratch block."""
    if not contributions:
        raise ValueError("no updates to aggregate")
    deltas = [c.delta for c in contributions]
    flats, spans, width = _layout(deltas, global_state)
    out = {k: np.empty(a.shape, np.float32) for k, a in global_state.items()}

    def work(part: list[tuple[str, int, int]]) -> None:
        buf = np.empty((len(deltas), width), np.float32)
        for key, start, stop in part:
            block = _fill(buf[:, : stop - start], flats[key], start)
            out[key].reshape(-1)[start:stop] = reduce(block)  # a view

    deal(work, spans, reduction_threads())
    return {k: np.add(out[k], a, out=out[k]) for k, a in global_state.items()}


class _Robust(Strategy):
    """Common parts: the options, no server state, and the need for individual updates."""

    requires_individual_updates = True

    def __init__(self, options: Any) -> None:
        self.options = options


@dataclass
class MedianOptions:
    """Options of `algorithm=median`: none."""

    name: str = "median"


@register("algorithm", "median", MedianOptions)
class Median(_Robust):
    """new = global + coordinate-wise median of the deltas (mean of the middle two if n is even)."""

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        return _coordinatewise(
            global_state, contributions, lambda b: np.median(b, axis=0, overwrite_input=True)
        )


@dataclass
class TrimmedMeanOptions:
    """Options of `algorithm=trimmed_mean`."""

    name: str = "trimmed_mean"
    beta: float = 0.1  # drops the top and bottom 10% per coordinate: 1 of 10 clients each side

    def check(self) -> None:
        if not 0 <= self.beta < 0.5:
            raise ValueError(f"beta={self.beta} must be in [0, 0.5) (the share cut from each end)")


@register("algorithm", "trimmed_mean", TrimmedMeanOptions)
class TrimmedMean(_Robust):
    """Per coordinate, drop the floor(beta*n) largest and smallest deltas; average the rest."""

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        n = len(contributions)
        cut = math.floor(Fraction(str(self.options.beta)) * n)  # exact: 0.29 * 100 cuts 29
        if n - 2 * cut < 1:
            raise ValueError(f"trimmed_mean: cutting {cut} per end of {n} updates leaves none")

        def reduce(block: np.ndarray) -> np.ndarray:
            if cut:
                block.partition([cut - 1, n - cut], axis=0)
            return block[cut : n - cut].mean(axis=0)

        return _coordinatewise(global_state, contributions, reduce)


def krum_scores(deltas: list[State], global_state: State, f: int) -> np.ndarray:
    """score_i = sum of squared L2 distances from update i to its n - f - 2 nearest others.

    Via a float64 Gram matrix of mean-centred chunks (float32 loses distances ~1 at norms ~1e3);
    an outlier ~1e7 times the honest spread away still blurs the honest scores.
    """
    n = len(deltas)
    if f < 0 or n < 2 * f + 3:
        raise ValueError(
            f"krum with f={f} needs n >= 2f + 3 = {2 * f + 3} updates, got {n}; "
            "lower algorithm.f or raise mode.clients_per_round"
        )
    gram = np.zeros((n, n), np.float64)
    for _, _, block in _chunks(deltas, global_state, np.float64):
        block -= block.mean(axis=0)
        gram += block @ block.T
    sq = np.diag(gram)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0)
    np.fill_diagonal(dist, np.inf)
    return np.sort(dist, axis=1)[:, : n - f - 2].sum(axis=1)


@dataclass
class KrumOptions:
    """Options of `algorithm=krum`."""

    name: str = "krum"
    f: int = 1  # Byzantine clients tolerated; needs >= 2f + 3 = 5 updates (clients_per_round=5)

    def check(self) -> None:
        if self.f < 0:
            raise ValueError(f"f={self.f} must be >= 0 (the assumed number of Byzantine clients)")


@dataclass
class MultiKrumOptions(KrumOptions):
    """Options of `algorithm=multikrum`."""

    name: str = "multikrum"
    m: int | None = None  # null: average the n - f best-scored updates, Blanchard et al.'s choice

    def check(self) -> None:
        super().check()
        if self.m is not None and self.m < 1:
            raise ValueError(f"m={self.m} must be >= 1 or null (null: n - f)")


@register("algorithm", "krum", KrumOptions)
class Krum(_Robust):
    """new = global + the delta with the lowest Krum score (ties: the earliest update)."""

    def __init__(self, options: KrumOptions) -> None:
        super().__init__(options)
        self.last_selected: list[int] = []  # client ids averaged in the last round, best first

    def _count(self, n: int) -> int:  # how many of the best-scored updates to average
        return 1

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        deltas = [c.delta for c in contributions]
        scores = krum_scores(deltas, global_state, self.options.f)
        m = self._count(len(deltas))
        if m > len(deltas):
            raise ValueError(f"{self.options.name}: m={m} exceeds the {len(deltas)} updates")
        chosen = np.argsort(scores, kind="stable")[:m].tolist()
        self.last_selected = [contributions[i].client_id for i in chosen]
        mean = weighted_sum([deltas[i] for i in chosen], [1.0 / m] * m)
        return add(global_state, mean)


@register("algorithm", "multikrum", MultiKrumOptions)
class MultiKrum(Krum):
    """new = global + unweighted mean of the m deltas with the lowest Krum scores."""

    options: MultiKrumOptions

    def _count(self, n: int) -> int:
        return self.options.m if self.options.m is not None else n - self.options.f
