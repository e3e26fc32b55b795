"""`privacy=dp_sgd`: sample-level DP inside each client, with opacus DP-SGD (Abadi et al. 2016)
on the trainable parameters (the LoRA adapters and the new head, or all weights under full
fine-tuning).

Each client's update is (epsilon, delta)-DP with respect to the client's own samples: every
``Trainer.fit`` of the client's job (whatever the client rule) runs through opacus' wrap
(:class:`DpSgdTraining`): Poisson batches (each sample joins a step with probability
q = 1 / batches-per-epoch, from a generator seeded by the job's seed), per-sample gradients clipped
to `max_grad_norm`, Gaussian noise of std z * max_grad_norm on their sum, then the client's own
optimizer step (AdamW by default: post-processing). The hooks are removed when each fit ends, so
the actor trains its next client on a clean model.

How the per-sample clip is computed is `grad_sample_mode`:

- ``hooks`` (default): opacus' per-sample gradient hooks; each trainable parameter holds the
  gradient of every sample of the batch until the step clips and sums them.
- ``ghost``: opacus' ghost clipping (Li et al. 2022; ``GradSampleModuleFastGradientClipping``,
  ``DPOptimizerFastGradientClipping``): the backward pass computes only each sample's gradient
  norm (for a linear layer from the Gram matrices of its inputs and output gradients, no
  per-sample gradient), then a second backward pass of sum_i c_i loss_i with the clip factors
  c_i = min(1, C / (norm_i + 1e-6)) gives the clipped sum directly. It needs each sample's loss
  (the task's ``sample_losses``; the trainer trains on :meth:`DpSgdTraining.batch_loss` of them)
  and a norm sampler for every trainable layer (opacus has them for ``nn.Linear`` and
  ``nn.Embedding``: LoRA adapters and linear heads): a model with another trainable layer (a
  LayerNorm under full fine-tuning, a ViT's patch convolution) is refused when its first fit
  wraps it (the model is built in the actors), before anything trains, and so is a parameter
  shared by two layers. The clipped sum, the noise (the same draws, in the same parameter
  order), the Poisson batches and the accountant are those of ``hooks``: the same job gives the
  same update up to float rounding.

The per-client accountant (``DpAccountant``, PLD, one ``step`` per optimizer step at rate q) is
the client's privacy state (``client_state["privacy"]``): it persists over every round the
client joins, through checkpoints and ``fedray resume``, and is kept even if the server discards
the update. Each client reports its epsilon beside its update; the server logs the largest and
the mean over all clients that have trained (``epsilon`` is the largest: the run's guarantee).
With ``max_epsilon`` a client withholds an update that would take it past the budget (the job
fails with that reason and nothing is released).

What is not covered: the training loss and (FedPer) personal metrics a client reports beside
its update are plain diagnostics. Only tasks whose loss is the mean of per-sample losses keep
the per-sample clip meaningful (those that declare ``per_sample_loss``: ``classification``,
``image_classification``, ``vector_classification``; a causal LM averages over all tokens of a
batch, so one sample's presence rescales the others' gradients): others are refused.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.core.checkpoint import check_state_keys
from fedray.core.context import RoundContext
from fedray.core.registry import build, entry, register
from fedray.core.types import Update
from fedray.privacy.base import Mechanism
from fedray.privacy.lib.accounting import POISSON, DpAccountant

EPSILON = "dp_epsilon"  # what a client reports beside its update
_JOB = "dp_sgd"  # the client's session key for its job's DP-SGD runs
_RULES = ("local", "fedper")  # client rules that train with the task loss alone
_MODES = ("hooks", "ghost")  # how opacus computes the per-sample clip (module docstring)
_STATE_KEYS = {"accountant", "epsilon", "jobs"}


@dataclass
class DpSgdOptions:
    """Options of `privacy=dp_sgd`."""

    name: str = "dp_sgd"
    noise_multiplier: float = 1.0  # z: noise std / max_grad_norm on each step's gradient sum
    max_grad_norm: float = 1.0  # per-sample L2 clip of the gradient of the trainable parameters
    delta: float = 1e-5  # per client (sample-level); well below 1 / samples per client
    max_epsilon: float | None = None  # a client withholds an update that would spend more
    accounting_resolution: float = 1e-3  # PLD grid of the per-client accountant; coarser = faster
    grad_sample_mode: str = "hooks"  # hooks: per-sample gradients | ghost: per-sample norms

    def check(self) -> None:
        z, c = self.noise_multiplier, self.max_grad_norm
        if not (math.isfinite(z) and z > 0):
            raise ValueError(f"noise_multiplier={z} must be a finite number > 0")
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"max_grad_norm={c} must be a finite number > 0")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta={self.delta} must be in (0, 1)")
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ValueError(f"max_epsilon={self.max_epsilon} must be > 0 (null: no limit)")
        if not 0 < self.accounting_resolution <= 0.1:
            raise ValueError(f"accounting_resolution={self.accounting_resolution} not in (0, 0.1]")
        if self.grad_sample_mode not in _MODES:
            raise ValueError(f"grad_sample_mode={self.grad_sample_mode!r}: use hooks or ghost")

    def check_against(self, spec: Any) -> str | None:
        """Combinations under which the per-sample guarantee would silently not hold."""
        me = f"name={self.name}"
        algorithm = f"algorithm={spec.algorithm.name}"
        if spec.mode.name != "sync":
            return (
                f"{me} needs mode=sync: async mode drops stale or rejected updates without "
                "keeping what their clients' accountants spent"
            )
        if entry("algorithm", spec.algorithm.name).factory.sends_extra:
            return (
                f"{me} cannot run with {algorithm}: its clients send state computed from "
                "unclipped, unnoised gradients beside the update; use fedavg or fedper"
            )
        rule = build("algorithm", spec.algorithm).client_rule()["name"]
        if rule not in _RULES:
            return (
                f"{me} cannot run with {algorithm}: its client rule `{rule}` adds a loss term on "
                "the parameters, which per-sample clipping drops; use a FedAvg-style algorithm"
            )
        if not entry("task", spec.data.task).factory.per_sample_loss:
            return (
                f"{me} cannot run with data.task={spec.data.task}: its loss is not a mean of "
                "per-sample losses it gives, so clipping per sample would not bound one "
                "sample's effect (nor could ghost clipping weigh each sample's loss)"
            )
        if spec.model.gradient_checkpointing:
            return (
                f"{me} cannot run with model.gradient_checkpointing=true: opacus' hooks would see "
                "each recomputed forward pass again (per-sample gradients fail, ghost clipping "
                "takes it for tied parameters); set model.gradient_checkpointing=false"
            )
        if spec.model.dtype == "float16":
            return (
                f"{me} cannot run with model.dtype=float16: loss scaling would clip scaled "
                "gradients; use float32 or bfloat16"
            )
        return None


_EPSILON_CACHE: dict[tuple[Any, ...], float] = {}


def client_epsilon(accountant: DpAccountant, delta: float) -> float:
    """A client accountant's epsilon, cached by its history: clients with the same sampling
    rate and steps (common with small clients) share one PLD computation per actor."""
    key = (accountant.sampling_rate, tuple(accountant.runs), delta)
    if key not in _EPSILON_CACHE:
        if len(_EPSILON_CACHE) >= 1024:
            _EPSILON_CACHE.clear()
        _EPSILON_CACHE[key] = accountant.epsilon(delta)
    return _EPSILON_CACHE[key]


def ghost_problem(model: Any) -> str | None:
    """Why opacus' ghost clipping cannot clip `model`'s trainable layers; None if it can."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.utils.module_utils import trainable_modules

    samplers = GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    me = "privacy.grad_sample_mode=ghost"
    owner: dict[int, str] = {}
    for name, module in trainable_modules(model):
        if type(module) not in samplers:
            covered = ", ".join(sorted(t.__name__ for t in samplers))
            return (
                f"{me} cannot clip the trainable layer `{name}` ({type(module).__name__}): "
                f"opacus computes per-sample norms for {covered} only; train only such layers "
                "(e.g. model.finetune=lora) or use privacy.grad_sample_mode=hooks"
            )
        for p in module.parameters(recurse=False):
            if p.requires_grad and owner.setdefault(id(p), name) != name:
                return (
                    f"{me} cannot clip a parameter shared by `{owner[id(p)]}` and `{name}`: "
                    "ghost clipping does not support tied parameters; use grad_sample_mode=hooks"
                )
    return None


class DpSgdTraining:
    """One client job's DP-SGD: opacus around each fit (a ``LocalTraining``)."""

    per_sample_gradients = True
    _OPACUS_ATTRS = (
        "grad_sample",
        "summed_grad",
        "_forward_counter",
        "_current_grad_sample",
        "_norm_sample",
    )

    def __init__(self, options: DpSgdOptions, seed: int) -> None:
        self.options = options
        self.seed = seed
        self.per_sample_losses = options.grad_sample_mode == "ghost"  # the trainer gives them
        self.runs: list[tuple[float, int]] = []  # (sampling rate, optimizer steps) per fit
        self._fits = 0
        self._engine: Any = None
        self._model: Any = None
        self._optimizer: Any = None
        self._rate = 0.0

    def wrap(self, model: Any, optimizer: Any, loader: Any) -> tuple[Any, Any, Any]:
        """opacus' GradSampleModule, DPOptimizer and a Poisson DPDataLoader (seeded); their
        fast-gradient-clipping versions with ghost clipping."""
        import torch
        from opacus import PrivacyEngine
        from opacus.data_loader import DPDataLoader

        if self.per_sample_losses and (problem := ghost_problem(model)):
            raise ValueError(problem)
        sampling_seed, noise_seed = np.random.SeedSequence([self.seed, self._fits]).generate_state(
            2
        )
        self._fits += 1
        batches = DPDataLoader.from_data_loader(
            loader, generator=torch.Generator().manual_seed(int(sampling_seed))
        )
        self._rate = float(batches.sample_rate)
        with warnings.catch_warnings():  # seeded generators: reproducible, not secure_mode
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            self._engine = PrivacyEngine(accountant="rdp")  # its accountant counts the steps
            wrapped = self._engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=batches,
                noise_multiplier=self.options.noise_multiplier,
                max_grad_norm=self.options.max_grad_norm,
                poisson_sampling=False,  # the loader above already samples (seeded)
                noise_generator=torch.Generator().manual_seed(int(noise_seed)),
                grad_sample_mode=self.options.grad_sample_mode,
            )
        # hooks: (module, optimizer, loader); ghost: (module, optimizer, criterion, loader),
        # whose criterion is unused: batch_loss weighs the task's own per-sample losses
        self._model, self._optimizer, batches = wrapped[0], wrapped[1], wrapped[-1]
        return self._model, self._optimizer, batches

    def batch_loss(self, sample_losses: Any) -> Any:
        """Ghost clipping's loss of a batch: its ``backward()`` computes each sample's gradient
        norm, then the clipped sum of their gradients (a second pass, hooks off)."""
        from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

        if not self.per_sample_losses:
            raise RuntimeError("batch_loss is for grad_sample_mode=ghost only")
        return DPTensorFastGradientClipping(self._model, self._optimizer, sample_losses, "mean")

    def empty_step(self) -> None:
        """The step of an empty Poisson batch: zero clipped gradients, noise as usual."""
        import torch

        for p in self._optimizer.params:
            if self.per_sample_losses:  # ghost: the optimizer noises p.grad, the clipped sum
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        self._optimizer.step()
        self._optimizer.zero_grad()

    def unwrap(self) -> None:
        """Record the fit's steps; remove opacus' hooks and per-parameter attributes."""
        if self._model is None:
            return
        steps = sum(int(n) for _, _, n in self._engine.accountant.history)
        self.runs.append((self._rate, steps))
        params = list(self._optimizer.params)
        self._model.cleanup()
        for p in params:
            for attr in self._OPACUS_ATTRS:
                if hasattr(p, attr):
                    delattr(p, attr)
        self._engine = self._model = self._optimizer = None


@register("privacy", "dp_sgd", DpSgdOptions)
class DpSgd(Mechanism):
    """DP-SGD in every client, a per-client accountant in its state (module docstring)."""

    def __init__(self, options: DpSgdOptions) -> None:
        self.options = options
        self.epsilons: dict[int, float] = {}  # server: latest reported epsilon per client
        self._round: dict[str, float] = {}

    # -- client ----------------------------------------------------------------------------
    def _accountant(self, state: Any, rate: float) -> DpAccountant:
        if state is None:
            return DpAccountant(
                sampling=POISSON,
                sampling_rate=rate,
                value_discretization_interval=self.options.accounting_resolution,
            )
        check_state_keys(_STATE_KEYS, state, "dp_sgd client state")
        return DpAccountant.from_state_dict(state["accountant"])

    def client_training(
        self, *, client_id: int, round: int, seed: int, state: Any, session: dict[str, Any]
    ) -> DpSgdTraining:
        cap = self.options.max_epsilon
        if cap is not None and state is not None and state["epsilon"] >= cap:
            raise RuntimeError(
                f"client {client_id} has spent epsilon={state['epsilon']:.4g} of "
                f"privacy.max_epsilon={cap:g}; it trains no more"
            )
        session[_JOB] = job = DpSgdTraining(self.options, seed)
        return job

    def client_finish(
        self, *, client_id: int, round: int, state: Any, session: dict[str, Any]
    ) -> tuple[Any, dict[str, float]]:
        """Charge this job's steps to the client's accountant; withhold it past the budget."""
        job: DpSgdTraining | None = session.pop(_JOB, None)
        if job is None or not job.runs:
            raise RuntimeError(f"client {client_id}: privacy=dp_sgd shaped no training this job")
        accountant = self._accountant(state, job.runs[0][0])
        for rate, steps in job.runs:
            if rate != accountant.sampling_rate:
                raise ValueError(
                    f"client {client_id}: DP-SGD sampled at rate {rate:g} but its accountant "
                    f"holds rate {accountant.sampling_rate:g}; the batch size or the client's "
                    "data changed since its last round"
                )
            if steps:
                accountant.step(self.options.noise_multiplier, steps)
        epsilon = client_epsilon(accountant, self.options.delta)
        cap = self.options.max_epsilon
        if cap is not None and epsilon > cap:
            raise RuntimeError(
                f"client {client_id} withholds its update: it would spend epsilon={epsilon:.4g} "
                f"> privacy.max_epsilon={cap:g}"
            )
        jobs = 1 + (0 if state is None else int(state["jobs"]))
        kept = {"accountant": accountant.state_dict(), "epsilon": epsilon, "jobs": jobs}
        steps = float(sum(s for _, s in job.runs))
        return kept, {EPSILON: epsilon, "dp_steps": steps}

    # -- server ----------------------------------------------------------------------------
    def observe(self, ctx: RoundContext, updates: list[Update]) -> None:
        """Every arrived update's epsilon: its client released it, used or not."""
        mine = [u for u in updates if EPSILON in u.metrics]
        for u in mine:
            self.epsilons[u.client_id] = float(u.metrics[EPSILON])
        self._round = {
            "epsilon_round_max": max((float(u.metrics[EPSILON]) for u in mine), default=0.0),
        }

    def metrics(self) -> dict[str, float]:
        values = list(self.epsilons.values())
        return {
            "epsilon": max(values, default=0.0),
            "epsilon_max": max(values, default=0.0),
            "epsilon_mean": float(np.mean(values)) if values else 0.0,
            "clients_trained": float(len(values)),
            "delta": self.options.delta,
            "noise_multiplier": self.options.noise_multiplier,
            **self._round,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"epsilons": {int(c): float(e) for c, e in self.epsilons.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys({"epsilons"}, state, "DpSgd")
        self.epsilons = {int(c): float(e) for c, e in state["epsilons"].items()}
