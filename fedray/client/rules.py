"""Client update rules: how one virtual client turns the global state into its local update.

The actor hands every round's job to a rule instead of calling ``Trainer.fit`` itself. An
algorithm names its rule with :meth:`fedray.strategies.Strategy.client_rule` (a config node of
the `rule` registry group); algorithms without one get ``local``, the plain W1 recipe. Rules
are small and composable: the loss terms below are plain functions handed to ``Trainer.fit``
as ``extra_loss``, and the trainer's factories (optimizer, batches, wrap) let a rule change how
training runs without copying the loop.

Personalized rules live in :mod:`fedray.client.personal`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from fedray.client.trainer import ExtraLoss, Recipe, Trainer
from fedray.core.extra import tagged, untagged
from fedray.core.registry import register
from fedray.core.types import State
from fedray.models import groups, trainable_parameters
from fedray.models.lora import attach_merged_deltas, freeze_lora_a
from fedray.tasks.base import num_rows


@dataclass
class LocalJob:
    """One client's work for one round, as the actor received it."""

    client_id: int
    seed: int
    batch: dict[str, np.ndarray]
    global_state: State  # what the server sent (the strategy's shared part of the global state)
    client_state: State | None = None  # the rule's part of the client's stored state
    server_extra: State | None = None  # extra state the strategy broadcast (e.g. SCAFFOLD's c)


@dataclass
class LocalResult:
    """What a rule produced: the trained state to send up (keys of `global_state`), and more."""

    trained: State
    num_samples: int  # the aggregation weight: samples trained on
    metrics: dict[str, float]
    client_state: State | None = None  # stored by the driver under the client id
    extra: State | None = None  # extra state sent up beside the update (e.g. SCAFFOLD's delta c)


class ClientRule(Protocol):
    """Local training of one client; stateless across clients (state travels in the job)."""

    def run(self, trainer: Trainer, job: LocalJob, recipe: Recipe) -> LocalResult:
        """Train from ``job.global_state``; return the update and any client state."""
        ...


@dataclass
class LocalOptions:
    """Options of the `local` rule: none."""

    name: str = "local"


@register("rule", "local", LocalOptions)
class LocalRule:
    """The default: load the global state, run ``Trainer.fit`` once, send the result.

    The client state passes through unchanged, as before rules existed.
    """

    def __init__(self, options: LocalOptions | None = None, **_: Any) -> None:
        self.options = options or LocalOptions()

    def run(self, trainer: Trainer, job: LocalJob, recipe: Recipe) -> LocalResult:
        trainer.set_state(job.global_state)
        metrics = trainer.fit(job.batch, seed=job.seed, recipe=recipe)
        return LocalResult(
            trainer.get_state(), num_rows(job.batch), metrics, client_state=job.client_state
        )


def as_tensors(state: State, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """`state[k]` as a constant tensor beside each parameter (same device and dtype)."""
    return {
        k: torch.as_tensor(np.asarray(state[k]), dtype=p.dtype, device=p.device)
        for k, p in params.items()
    }


def proximal_loss(
    params: dict[str, torch.nn.Parameter], anchor: dict[str, torch.Tensor], mu: float
) -> ExtraLoss:
    """``mu / 2 * sum_k ||p_k - anchor_k||²``: its gradient is ``mu * (p - anchor)``.

    FedProx's proximal term (anchor: the global state) and Ditto's regularizer (anchor: the
    global state, applied to the personal model).
    """

    def loss(_: torch.nn.Module) -> torch.Tensor:
        total = sum(((p - anchor[k]) ** 2).sum() for k, p in params.items())
        return 0.5 * mu * total  # type: ignore[return-value]

    return loss


def linear_loss(
    params: dict[str, torch.nn.Parameter], direction: dict[str, torch.Tensor]
) -> ExtraLoss:
    """``sum_k <p_k, direction_k>``: adds the constant ``direction`` to every gradient.

    SCAFFOLD's correction ``c - c_i``, added to the gradient before the optimizer step.
    """

    def loss(_: torch.nn.Module) -> torch.Tensor:
        return sum((p * direction[k]).sum() for k, p in params.items())  # type: ignore[return-value]

    return loss


@dataclass
class ProximalOptions:
    """Options of the `proximal` rule."""

    name: str = "proximal"
    mu: float = 0.01


@register("rule", "proximal", ProximalOptions)
class ProximalRule:
    """FedProx (Li et al., 2020): local loss + ``mu / 2 * ||w - w_global||²``."""

    def __init__(self, options: ProximalOptions, **_: Any) -> None:
        self.mu = options.mu

    def run(self, trainer: Trainer, job: LocalJob, recipe: Recipe) -> LocalResult:
        trainer.set_state(job.global_state)
        params = trainable_parameters(trainer.model)
        anchor = as_tensors(job.global_state, params)
        metrics = trainer.fit(
            job.batch,
            seed=job.seed,
            recipe=recipe,
            extra_loss=proximal_loss(params, anchor, self.mu),
        )
        return LocalResult(
            trainer.get_state(), num_rows(job.batch), metrics, client_state=job.client_state
        )


class GradientSum:
    """Sums each parameter's gradient over the backward passes made while it is open.

    A tensor hook on each (leaf) parameter sees the full gradient of one backward pass, before
    the optimizer touches it; the sums stay on the parameters' device.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter]) -> None:
        self.sums = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
        self._handles = [p.register_hook(self._adder(k)) for k, p in params.items()]

    def _adder(self, key: str) -> Callable[[torch.Tensor], None]:
        def add(grad: torch.Tensor) -> None:
            self.sums[key] += grad.detach().float()

        return add

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()


def scaffold_control_update(grad_sum: State, direction: State, steps: int) -> State:
    """``c_i+ = grad_sum / K - (c - c_i)``: the mean uncorrected minibatch gradient.

    `grad_sum` is the sum over the K local steps of the gradients the optimizer received,
    each of which includes the correction ``direction = c - c_i``. Under SGD this equals option
    II of Karimireddy et al. (2020), ``c_i - c + (x - y) / (K * lr)``; unlike option II it stays
    a gradient under any local optimizer (AdamW's displacement is about lr per coordinate and
    step whatever the gradient, so option II would give control variates of order 1).
    """
    if steps <= 0:
        raise ValueError("scaffold: the client took no local step; c_i cannot be updated")
    inv = np.float32(1.0 / steps)
    return {k: (grad_sum[k] * inv - direction[k]).astype(np.float32, copy=False) for k in grad_sum}


@dataclass
class ScaffoldOptions:
    """Options of the `scaffold` rule: none."""

    name: str = "scaffold"


@register("rule", "scaffold", ScaffoldOptions)
class ScaffoldRule:
    """SCAFFOLD's client (Karimireddy et al., 2020), on the local optimizer of the W1 recipe.

    The correction ``c - c_i`` is added to each minibatch gradient *before* the optimizer step
    (as the gradient of ``<w, c - c_i>``), so with AdamW the corrected gradient goes through
    Adam's moment estimates; the paper's analysis assumes plain SGD. ``c_i`` becomes the mean
    uncorrected gradient of the local steps (:func:`scaffold_control_update`: option II under
    SGD, still a gradient under AdamW). Control variates cover exactly the trainable state
    (LoRA adapters + modules_to_save).
    """

    def __init__(self, options: ScaffoldOptions | None = None, **_: Any) -> None:
        self.options = options or ScaffoldOptions()

    def run(self, trainer: Trainer, job: LocalJob, recipe: Recipe) -> LocalResult:
        x = job.global_state
        c = untagged(job.server_extra, "c", x, "scaffold client")
        c_i = job.client_state or {k: np.zeros_like(v, dtype=np.float32) for k, v in x.items()}
        trainer.set_state(x)
        params = trainable_parameters(trainer.model)
        if trainer.uses_loss_scaling:
            raise ValueError("scaffold: float16 loss scaling would scale the control variates")
        diff = {k: np.subtract(c[k], c_i[k], dtype=np.float32) for k in x}
        grads = GradientSum(params)
        try:
            metrics = trainer.fit(
                job.batch,
                seed=job.seed,
                recipe=recipe,
                extra_loss=linear_loss(params, as_tensors(diff, params)),
            )
        finally:
            grads.close()
        y = trainer.get_state()
        grad_sum = {  # state entries without a parameter (buffers) get no gradient: zero
            k: grads.sums[k].cpu().numpy() if k in grads.sums else np.zeros_like(v)
            for k, v in x.items()
        }
        c_new = scaffold_control_update(grad_sum, diff, int(metrics["steps"]))
        delta_c = {k: np.subtract(c_new[k], c_i[k], dtype=np.float32) for k in x}
        return LocalResult(
            y, num_rows(job.batch), metrics, client_state=c_new, extra=tagged(delta_c, "c")
        )


# -- exact and heterogeneous LoRA aggregation (fedray.models.lora, fedray.models.groups) ------
def _with_model_rest(trainer: Trainer, shared: State) -> State:
    """`shared` completed by the model's own values for the keys the server did not send."""
    return {**trainer.get_state(), **shared}


@dataclass
class FrozenAOptions:
    """Options of the `frozen_a` rule (FFA-LoRA's client): none."""

    name: str = "frozen_a"


@register("rule", "frozen_a", FrozenAOptions)
class FrozenARule:
    """FFA-LoRA (Sun et al. 2024): every LoRA A stays at its seeded initialisation (the same on
    every actor); only B and the heads train and travel, so averaging B is exact."""

    def __init__(self, options: FrozenAOptions | None = None, *, trainer: Trainer, **_: Any):
        self.options = options or FrozenAOptions()
        freeze_lora_a(trainer.model)

    def run(self, trainer: Trainer, job: LocalJob, recipe: Recipe) -> LocalResult:
        trainer.set_state(_with_model_rest(trainer, job.global_state))
        metrics = trainer.fit(job.batch, seed=job.seed, recipe=recipe)
        trained = {k: v for k, v in trainer.get_state().items() if k in job.global_state}
        return LocalResult(trained, num_rows(job.batch), metrics, client_state=job.client_state)


@dataclass
class MergedDeltaOptions:
    """Options of the `merged_delta` rule (FLoRA's client): none."""

    name: str = "merged_delta"


@register("rule", "merged_delta", MergedDeltaOptions)
class MergedDeltaRule:
    """FLoRA's client (Wang et al. 2024) on a frozen shared base: every adapted layer also
    applies the server's merged dense delta D (:func:`fedray.models.lora.attach_merged_deltas`);
    the client trains a fresh A, B on top and sends them (D comes back unchanged: its delta is
    exactly zero, which `compression=trim` does not send)."""

    def __init__(self, options: MergedDeltaOptions | None = None, *, trainer: Trainer, **_: Any):
        self.options = options or MergedDeltaOptions()
        attach_merged_deltas(trainer.model)

    def run(self, trainer: Trainer, job: LocalJob, recipe: Recipe) -> LocalResult:
        trainer.set_state(job.global_state)
        metrics = trainer.fit(job.batch, seed=job.seed, recipe=recipe)
        return LocalResult(
            trainer.get_state(), num_rows(job.batch), metrics, client_state=job.client_state
        )


@dataclass
class RankGroupsOptions:
    """Options of the `rank_groups` rule (HetLoRA's client), filled in by the strategy."""

    name: str = "rank_groups"
    group_of: list[int] = field(default_factory=list)  # client id -> group index
    ranks: list[int] = field(default_factory=list)  # group -> LoRA rank
    layers: list[Any] = field(default_factory=list)  # group -> tuned layer indices or None


@register("rule", "rank_groups", RankGroupsOptions)
class RankGroupsRule:
    """HetLoRA's client (Cho et al. 2024): a client of rank r trains the truncated global
    adapters (components r.. of every A row and B column zeroed, so their gradients and AdamW
    steps are exactly zero) and only the adapters of its group's layers (the others are frozen
    at the server's values). Everything it did not train goes back as the server sent it, so
    its update is exactly zero there (`compression=trim` sends only its block)."""

    def __init__(self, options: RankGroupsOptions, **_: Any) -> None:
        self.options = options

    def _group(self, client_id: int) -> groups.Group:
        o = self.options
        g = o.group_of[client_id]
        layers = o.layers[g]
        return groups.Group(
            g, f"group{g}", 0.0, o.ranks[g], None if layers is None else tuple(layers), "", None
        )

    def run(self, trainer: Trainer, job: LocalJob, recipe: Recipe) -> LocalResult:
        group = self._group(job.client_id)
        glob = job.global_state
        parts = {k: groups.trained_part(group, k, v.shape) for k, v in glob.items()}
        start = {}
        for k, v in glob.items():
            part = parts[k]
            if part is not None and ("lora_A" in k or "lora_B" in k):
                truncated = np.zeros_like(v)
                truncated[part] = v[part]
                start[k] = truncated
            else:
                start[k] = v
        trainer.set_state(start)
        params = trainable_parameters(trainer.model)
        frozen = [params[k] for k, part in parts.items() if part is None and k in params]
        for p in frozen:
            p.requires_grad_(False)
        try:
            metrics = trainer.fit(job.batch, seed=job.seed, recipe=recipe)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        trained = trainer.get_state()
        out = {}
        for k, v in glob.items():
            part = parts[k]
            kept = np.array(v, dtype=np.float32, copy=True)
            if part is not None:
                kept[part] = trained[k][part]
            out[k] = kept
        return LocalResult(out, num_rows(job.batch), metrics, client_state=job.client_state)
