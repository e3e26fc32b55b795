"""Client selection: which virtual clients train in a round. Registered in group `selection`.

A selector has ``select(round, k)``, ``observe(round, losses)`` (the driver reports each round's
local training losses, client id -> loss, after aggregation), state_dict/load_state_dict, and
``sampling``: how a cohort is drawn (``fixed`` size, ``poisson``, or ``by_loss``), which a
privacy accountant needs to know (:class:`fedray.core.context.RunContext`).

A selector's options may carry ``weights``: ``samples`` (the default when absent: each update is
weighted by its client's samples, FedAvg) or ``equal`` (every update weighs 1, for a selector
that already draws clients in proportion to their size). The client actors read it when they
set an update's aggregation weight.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.checkpoint import check_state_keys
from fedray.core.registry import register


@dataclass
class UniformOptions:
    """Options of `selection=uniform`."""

    name: str = "uniform"


@register("selection", "uniform", UniformOptions)
class UniformSampler:
    """`sorted(rng.sample(range(num_clients), k))` per round from one `random.Random(seed)`.

    Rounds draw in order from one stream, so the schedule is a function of the seed alone.
    """

    sampling = "fixed"

    def __init__(
        self,
        options: UniformOptions,
        *,
        num_clients: int,
        seed: int,
        client_sizes: Sequence[int] | None = None,
    ) -> None:
        self.options = options
        self.num_clients = num_clients
        self.rng = random.Random(seed)

    def select(self, round: int, k: int) -> list[int]:
        return sorted(self.rng.sample(range(self.num_clients), k))

    def observe(self, round: int, losses: dict[int, float]) -> None:
        """Ignored: uniform sampling uses no feedback."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"rng"}, state, "UniformSampler")
        self.rng.setstate(state["rng"])


# algorithms whose clients do not train the broadcast state as it is (personal layers,
# truncated ranks, merged adapters): a fresh loss of the broadcast would not be theirs
_HOLDS_OTHER_STATE = ("fedper", "hetlora", "flora")


@dataclass
class PowerOfChoiceOptions:
    """Options of `selection=power_of_choice`."""

    name: str = "power_of_choice"
    d: int = 20  # candidates per round; d = k is uniform-by-size, larger d = more loss-greedy
    # equal: average the chosen clients' updates with equal weights, as Cho et al. do (the
    # candidates are already drawn in proportion to size); samples: FedAvg's sample weights
    weights: str = "equal"
    # stale: rank by the loss each candidate reported the last time it trained (rpow-d's cached
    # loss, no extra traffic); fresh: the candidates first evaluate the current global model on
    # their own samples (pow-d proper: one more round trip, the model sent to all d candidates)
    loss: str = "stale"

    def check(self) -> None:
        if self.d < 1:
            raise ValueError(f"d={self.d} must be >= 1 (candidates sampled per round)")
        if self.weights not in ("equal", "samples"):
            raise ValueError(f"weights={self.weights!r} is unknown; use equal or samples")
        if self.loss not in ("stale", "fresh"):
            raise ValueError(f"loss={self.loss!r} is unknown; use stale or fresh")

    def check_against(self, spec: Any) -> str | None:
        """d candidates must cover a round's cohort; fresh losses need the sync loop and no
        privacy mechanism (the probe reveals every candidate's exact loss to the server)."""
        k = spec.mode.clients_per_round
        if self.d < k:
            return (
                f"d={self.d} is below mode.clients_per_round={k}; raise selection.d "
                "(candidates per round)"
            )
        if self.loss == "fresh" and spec.algorithm.name in _HOLDS_OTHER_STATE:
            return (
                f"loss=fresh scores the broadcast model as it is, but algorithm="
                f"{spec.algorithm.name}'s clients train a different one; use selection.loss=stale"
            )
        if self.loss == "fresh" and spec.mode.name != "sync":
            return "loss=fresh probes the candidates before each round: it needs mode=sync"
        if self.loss == "fresh" and spec.privacy.name != "none":
            return (
                f"loss=fresh reveals each candidate's loss to the server, which "
                f"privacy={spec.privacy.name} does not account for; use selection.loss=stale"
            )
        return None


@register("selection", "power_of_choice", PowerOfChoiceOptions)
class PowerOfChoice:
    """Power-of-choice (Cho et al., 2022).

    Per round: sample ``d`` distinct candidates with probability proportional to their data
    size (Efraimidis-Spirakis keys ``u ** (1 / n_i)`` from one ``random.Random(seed)``), then
    keep the ``k`` with the highest local loss; ties go to the lower client id. Which loss:
    ``loss=stale`` (the default) the last one each candidate reported after training, fed by
    :meth:`observe` (never-seen clients rank highest); ``loss=fresh`` (pow-d proper) the loss
    of the current global model on each candidate's samples, which the round protocol measures
    first (:attr:`probes`, :meth:`choose`). The chosen clients' updates are averaged with
    equal weights (``weights=equal``, the paper's rule). The cohort has a fixed size but is
    not uniform: it depends on the clients' losses (``sampling = "by_loss"``).
    """

    sampling = "by_loss"

    def __init__(
        self,
        options: PowerOfChoiceOptions,
        *,
        num_clients: int,
        seed: int,
        client_sizes: Sequence[int] | None = None,
    ) -> None:
        if client_sizes is None or len(client_sizes) != num_clients:
            raise ValueError("selection=power_of_choice needs the size of every client")
        if options.d > num_clients:
            raise ValueError(
                f"selection.d={options.d} exceeds the {num_clients} clients the partition "
                "produced; lower it"
            )
        self.options = options
        self.num_clients = num_clients
        self.sizes = [int(n) for n in client_sizes]
        self.rng = random.Random(seed)
        self.losses: dict[int, float] = {}

    def candidates(self) -> list[int]:
        """``d`` distinct clients drawn with probability proportional to size (one draw each)."""
        keys = [
            (self.rng.random() ** (1.0 / n) if n > 0 else 0.0, cid)
            for cid, n in enumerate(self.sizes)
        ]
        keys.sort(key=lambda t: (-t[0], t[1]))
        return [cid for _, cid in keys[: self.options.d]]

    @property
    def probes(self) -> bool:
        """Whether the protocol must measure the candidates' losses (:meth:`choose`)."""
        return self.options.loss == "fresh"

    def select(self, round: int, k: int) -> list[int]:
        if self.probes:
            raise RuntimeError("selection.loss=fresh: call candidates(), probe, then choose()")
        return self.choose(self.candidates(), self.losses, k)

    @staticmethod
    def choose(candidates: list[int], losses: dict[int, float], k: int) -> list[int]:
        """The `k` candidates with the highest loss (a candidate without one ranks highest;
        ties go to the lower id), in ascending order."""
        ranked = sorted(candidates, key=lambda cid: (-losses.get(cid, float("inf")), cid))
        return sorted(ranked[:k])

    def observe(self, round: int, losses: dict[int, float]) -> None:
        """Remember each reporting client's latest local loss."""
        self.losses.update({int(c): float(v) for c, v in losses.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "losses": dict(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"rng", "losses"}, state, "PowerOfChoice")
        self.rng.setstate(state["rng"])
        self.losses = {int(c): float(v) for c, v in state["losses"].items()}


@dataclass
class PoissonOptions:
    """Options of `selection=poisson`: none (the rate is mode.clients_per_round / clients)."""

    name: str = "poisson"


@register("selection", "poisson", PoissonOptions)
class PoissonSampler:
    """Poisson sampling: every client joins round r independently with probability
    q = k / num_clients (k = mode.clients_per_round, the expected cohort size).

    This is the sampling that the privacy accountants amplify with (each client's participation
    is an independent coin of bias q per round). Round r's coins come from a generator seeded with
    (seed, r), so the cohort is a function of the seed and the round alone: nothing to carry in a
    checkpoint, and a resumed run draws the same cohorts. The cohort size varies (binomial, mean
    k); it can be empty (probability (1 - q)^num_clients <= e^-k): the round protocol then
    applies the quorum rule (`mode.on_quorum_loss`: stop, or skip the round, counted in
    `round_skipped`), except under a mechanism that aggregates any cohort (`privacy=dp_fedavg`
    releases a noise-only round, since skipping it would reveal that nobody was sampled).
    """

    sampling = "poisson"
    _STREAM = 0x504F4953  # "POIS": keeps these coins apart from other (seed, round) streams

    def __init__(
        self,
        options: PoissonOptions,
        *,
        num_clients: int,
        seed: int,
        client_sizes: Sequence[int] | None = None,
    ) -> None:
        if num_clients < 1:
            raise ValueError("selection=poisson needs at least one client")
        self.options = options
        self.num_clients = num_clients
        self.seed = seed

    def rate(self, k: int) -> float:
        """q = k / num_clients, the probability that one client joins a round."""
        if not 1 <= k <= self.num_clients:
            raise ValueError(
                f"selection=poisson: expected cohort {k} must be in [1, {self.num_clients}] "
                "(the number of clients); lower mode.clients_per_round"
            )
        return k / self.num_clients

    def select(self, round: int, k: int) -> list[int]:
        q = self.rate(k)
        coins = np.random.default_rng([self.seed, round, self._STREAM]).random(self.num_clients)
        return [int(c) for c in np.flatnonzero(coins < q)]

    def observe(self, round: int, losses: dict[int, float]) -> None:
        """Ignored: Poisson sampling uses no feedback."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(set(), state, "PoissonSampler")
