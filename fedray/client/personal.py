"""Personalized client rules: FedPer (local layers) and Ditto (a personal model per client).

Both evaluate the client's personalized model on a seeded hold-out of the client's own samples
right after local training and report the task's metrics as ``personal_<metric>`` with the
evaluation sums behind them; the driver pools the sums over the round's clients and logs the
task's metrics of the pool (``eval_personal_accuracy``, ``eval_personal_rmse``, ...: over all
held-out samples, not a mean of per-client figures, which for RMSE over one rating per client
would be the mean absolute error). The hold-out exists only
under these rules, so the partition, the test set and the data fingerprint do not change. When
the data declares each client's own test samples (:class:`fedray.data.base.ClientBatch`
``own_test``, e.g. MovieLens' leave-one-out rating per user), those are the hold-out instead and
the client trains on all of its training samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedray.client.rules import LocalJob, LocalResult, as_tensors, proximal_loss
from fedray.client.trainer import Recipe, Trainer
from fedray.core.registry import register
from fedray.core.statemath import split_local
from fedray.data.base import ClientBatch
from fedray.models import trainable_parameters
from fedray.tasks.base import PERSONAL_SUM, add_sums, num_rows


def holdout_rows(
    n: int, fraction: float, seed: int, client_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows) of a client with `n` samples, both in ascending order.

    ``round(fraction * n)`` rows, chosen by a generator seeded with (seed, client_id), are held
    out, but always at least one row stays for training (a client with one sample holds out
    nothing). The same client gets the same split in every round.
    """
    held = min(math.floor(fraction * n + 0.5), max(n - 1, 0))
    perm = np.random.default_rng([seed, client_id]).permutation(n)
    return np.sort(perm[held:]), np.sort(perm[:held])


def select_rows(batch: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The given rows of every array of a batch."""
    return {k: v[rows] for k, v in batch.items()}


@dataclass
class _Holdout:
    """The seeded per-client hold-out and the personalized evaluation on it."""

    fraction: float
    seed: int

    def split(self, job: LocalJob) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        if isinstance(job.batch, ClientBatch) and job.batch.own_test is not None:
            own = job.batch.own_test  # the data declares each client's test rows (maybe none)
            return dict(job.batch), (own if num_rows(own) else None)
        train, held = holdout_rows(num_rows(job.batch), self.fraction, self.seed, job.client_id)
        return select_rows(job.batch, train), (select_rows(job.batch, held) if len(held) else None)

    @staticmethod
    def evaluate(trainer: Trainer, held: dict[str, np.ndarray] | None) -> dict[str, float]:
        """The personal model's metrics on the hold-out (``personal_<metric>``) and the task's
        sums behind them (``personal_sum_<sum>``), which the driver pools over the round's
        clients."""
        if held is None:
            return {}
        sums = add_sums([trainer.eval_sums(held, batch_size=64)])
        return {
            **{f"personal_{k}": v for k, v in trainer.task.metrics(sums).items()},
            **{f"{PERSONAL_SUM}{k}": v for k, v in sums.items()},
        }


@dataclass
class FedPerOptions:
    """Options of the `fedper` rule (set by `algorithm=fedper`)."""

    name: str = "fedper"
    local_keys: list[str] = field(default_factory=lambda: ["classifier"])
    holdout: float = 0.2


@register("rule", "fedper", FedPerOptions)
class FedPerRule:
    """FedPer (Arivazhagan et al., 2019): keys matching `local_keys` stay on the client.

    The client trains the shared part received from the server together with its own local
    part (from the client-state store; on a first visit, the values the model was loaded
    with). Only the shared part goes up; the local part goes back to the store.
    """

    def __init__(self, options: FedPerOptions, *, trainer: Trainer, seed: int, **_: Any) -> None:
        self.patterns = list(options.local_keys)
        _, self.initial_local = split_local(trainer.get_state(), self.patterns)
        self.holdout = _Holdout(options.holdout, seed)

    def run(self, trainer: Trainer, job: LocalJob, recipe: Recipe) -> LocalResult:
        local = job.client_state if job.client_state is not None else self.initial_local
        if set(local) != set(self.initial_local):
            raise ValueError("fedper: the stored local state does not match local_keys")
        trainer.set_state({**job.global_state, **local})
        train, held = self.holdout.split(job)
        metrics = trainer.fit(train, seed=job.seed, recipe=recipe)
        metrics.update(self.holdout.evaluate(trainer, held))
        trained = trainer.get_state()
        shared, new_local = split_local(trained, self.patterns)
        return LocalResult(shared, num_rows(train), metrics, client_state=new_local)


@dataclass
class DittoOptions:
    """Options of the `ditto` rule (set by `algorithm=ditto`)."""

    name: str = "ditto"
    lam: float = 0.1
    holdout: float = 0.2


@register("rule", "ditto", DittoOptions)
class DittoRule:
    """Ditto (Li et al., 2021): a global update as FedAvg, plus a personal model v_i.

    Each round the client (1) trains the global model from ``w`` with the plain recipe and
    sends that update, and (2) trains its personal model ``v_i`` (first visit: ``w``) with the
    same recipe and seed on ``F_i(v) + lam / 2 * ||v - w||²``, ``w`` the received global.
    """

    def __init__(self, options: DittoOptions, *, seed: int, **_: Any) -> None:
        self.lam = options.lam
        self.holdout = _Holdout(options.holdout, seed)

    def run(self, trainer: Trainer, job: LocalJob, recipe: Recipe) -> LocalResult:
        w = job.global_state
        train, held = self.holdout.split(job)
        trainer.set_state(w)
        metrics = trainer.fit(train, seed=job.seed, recipe=recipe)
        trained = trainer.get_state()
        trainer.set_state(job.client_state if job.client_state is not None else w)
        params = trainable_parameters(trainer.model)
        personal = trainer.fit(
            train,
            seed=job.seed,
            recipe=recipe,
            extra_loss=proximal_loss(params, as_tensors(w, params), self.lam),
        )
        metrics["personal_train_loss"] = personal["loss"]
        metrics["compute_s"] += personal["compute_s"]
        metrics.update(self.holdout.evaluate(trainer, held))
        return LocalResult(trained, num_rows(train), metrics, client_state=trainer.get_state())
