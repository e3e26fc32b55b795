"""Local training and evaluation of one model in plain torch (no Ray): what a client actor runs.

The training loop is written once, in :meth:`Trainer.fit`. Everything around it comes from
factories a client rule can replace or wrap: the optimizer (:func:`default_optimizer`: AdamW or
SGD as `client.optimizer` says), the batch iterator
(:func:`shuffled_batches`, a torch DataLoader) and a final `wrap(model, optimizer, loader)` that
may return wrapped versions of all three, which is exactly the shape of
``opacus.PrivacyEngine.make_private``. A privacy mechanism can shape every fit of a client's job
the same way (:meth:`Trainer.shaped`, e.g. DP-SGD), without the client rules knowing. The task
(:mod:`fedray.tasks`) gives the loss of a batch and the sums of an evaluation batch; a shaping
that needs each sample's loss (ghost clipping) trains on its own loss of the task's per-sample
losses instead, and a task without them is refused.

With the defaults, `fit` performs exactly the W1 recipe (see shared/bench/WORKLOAD.md): seed
right before training, `torch.randperm(n)` batch order per epoch, a fresh AdamW per call, the
model's own loss.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fedray.core import registry
from fedray.core.config import ClientConfig, ModelConfig
from fedray.core.errors import ModelError
from fedray.core.types import State
from fedray.models import get_trainable_state, set_trainable_state, shared
from fedray.models.export import export_files
from fedray.models.loading import build_key_of
from fedray.models.shared import BaseTensors
from fedray.privacy.base import LocalTraining
from fedray.tasks.base import Batch, PerSampleLoss, Task, add_sums, num_rows

_AMP = {"bfloat16": torch.bfloat16, "float16": torch.float16}

ExtraLoss = Callable[[torch.nn.Module], torch.Tensor]
OptimizerFactory = Callable[[list[torch.nn.Parameter], "Recipe"], torch.optim.Optimizer]
LoaderFactory = Callable[[dict[str, torch.Tensor], "Recipe"], Iterable[Batch]]
Wrap = Callable[
    [torch.nn.Module, torch.optim.Optimizer, Iterable[Batch]],
    tuple[torch.nn.Module, torch.optim.Optimizer, Iterable[Batch]],
]


@dataclass(frozen=True)
class Recipe:
    """The local optimisation settings of `client.*`."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    max_steps: int = 0
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.0  # sgd only

    @classmethod
    def from_config(cls, client: ClientConfig) -> Recipe:
        """Read the recipe from the typed `client` config."""
        return cls(
            epochs=int(client.epochs),
            batch_size=int(client.batch_size),
            lr=float(client.lr),
            weight_decay=float(client.weight_decay),
            max_steps=int(client.max_steps),
            optimizer=str(client.optimizer),
            momentum=float(client.momentum),
        )


def adamw(params: list[torch.nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """A fresh AdamW per client and round (the W1 recipe)."""
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def sgd(params: list[torch.nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """Plain SGD (optionally heavy-ball momentum): what FedProx, SCAFFOLD and FedNova analyse."""
    return torch.optim.SGD(
        params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )


OPTIMIZERS: dict[str, OptimizerFactory] = {"adamw": adamw, "sgd": sgd}


def default_optimizer(params: list[torch.nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """The default local optimizer: the one `recipe.optimizer` names, fresh per client and round."""
    try:
        return OPTIMIZERS[recipe.optimizer](params, recipe)
    except KeyError:
        raise ValueError(
            f"client.optimizer={recipe.optimizer!r} is unknown; use one of {', '.join(OPTIMIZERS)}"
        ) from None


class Columns(Dataset):
    """A client's samples as named tensors; a batch of rows is one fancy index per column."""

    def __init__(self, columns: dict[str, torch.Tensor]) -> None:
        self.columns = columns
        self.n = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, row: int) -> Batch:
        return {k: v[row] for k, v in self.columns.items()}

    def __getitems__(self, rows: Any) -> Batch:
        index = torch.as_tensor(rows, dtype=torch.long)
        return {k: v[index.to(v.device)] for k, v in self.columns.items()}


class ShuffledBatches(Sampler[torch.Tensor]):
    """Batches of `torch.randperm(n)` (the global torch RNG, drawn when an epoch starts)."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.n, self.batch_size = n, batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        perm = torch.randperm(self.n)
        for i in range(0, self.n, self.batch_size):
            yield perm[i : i + self.batch_size]

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


def _as_batch(batch: Batch) -> Batch:
    return batch


def shuffled_batches(columns: dict[str, torch.Tensor], recipe: Recipe) -> DataLoader:
    """The default batch iterator: a DataLoader over :class:`Columns` in randperm order.

    The loader's own generator only seeds worker processes (there are none), so iterating it
    draws nothing from the global torch RNG but the batch order itself.
    """
    return DataLoader(
        Columns(columns),
        batch_sampler=ShuffledBatches(len(next(iter(columns.values()))), recipe.batch_size),
        collate_fn=_as_batch,
        generator=torch.Generator(),
    )


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor on `device`, sharing memory with `array` on CPU (read-only input is fine)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return torch.from_numpy(np.asarray(array)).to(device)


class Trainer:
    """Holds one model (loaded once) and trains / evaluates it on in-memory column arrays."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        task: Task | str,
        num_labels: int | None,
        seed: int,
        device: str = "cpu",
        threads: int | None = None,
        base: BaseTensors | None = None,
    ) -> None:
        """Build the task's model on `device`; from the shared frozen `base` if one is given
        (:mod:`fedray.models.shared`), else from the checkpoint."""
        if threads:
            torch.set_num_threads(threads)
        if isinstance(task, str):  # a registered task name
            task = registry.build("task", {"name": task})
        self.task = task
        self.device = torch.device(device)
        with shared.provide(base) as offer:
            model = task.build_model(model_cfg, num_labels, seed)
        if offer is not None and not offer.used:
            raise ModelError(
                f"model.shared_base=true, but data.task={type(task).__name__} builds its model "
                "without fedray.models.load_model; set model.shared_base=false"
            )
        # A quantized base is placed on its device by the loader (bitsandbytes cannot move it).
        self.model = model if model_cfg.quantize != "none" else model.to(self.device)
        # Other than float32, the base is stored in model.dtype and forward/backward run under
        # autocast in it (CPU and CUDA); trainable parameters stay float32 (master weights).
        self._amp = _AMP.get(model_cfg.dtype)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self._shaping: LocalTraining | None = None

    def export_base(self) -> BaseTensors:
        """The model's frozen parameters (to share) and private tensors, as numpy arrays."""
        return shared.export_base(self.model, build_key_of(self.model))

    def adopt_base(self, base: BaseTensors) -> None:
        """Use the shared copy of the frozen base this trainer exported (CPU: its own copy is
        freed; on a GPU the device copy is kept: the shared arrays live in host memory)."""
        if self.device.type == "cpu":
            shared.adopt(self.model, base)

    @property
    def uses_loss_scaling(self) -> bool:
        """True when `fit` scales the loss (float16 autocast on CUDA): gradients are scaled."""
        return self._amp is torch.float16

    def get_state(self) -> State:
        """The trainable state (float32 numpy copies)."""
        return get_trainable_state(self.model)

    def set_state(self, state: State) -> None:
        """Load a trainable state (e.g. the global one) into the model."""
        set_trainable_state(self.model, state)

    def tensors(self, data: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The columns of `data` as tensors on the model's device."""
        return {k: _tensor(v, self.device) for k, v in data.items()}

    def autocast(self) -> AbstractContextManager:
        """The mixed-precision context of forward passes (none for a float32 base)."""
        if self._amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp)

    @contextmanager
    def shaped(self, training: LocalTraining | None) -> Iterator[None]:
        """Within the block every :meth:`fit` is shaped by `training` (a privacy mechanism's
        wrap of model, optimizer and batches, removed when each fit ends); None: unchanged."""
        previous, self._shaping = self._shaping, training
        try:
            yield
        finally:
            self._shaping = previous

    def fit(
        self,
        data: dict[str, np.ndarray],
        *,
        seed: int,
        recipe: Recipe,
        extra_loss: ExtraLoss | None = None,
        make_optimizer: OptimizerFactory = default_optimizer,
        make_loader: LoaderFactory = shuffled_batches,
        wrap: Wrap | None = None,
    ) -> dict[str, float]:
        """Local training; `extra_loss(model)` is added to each batch's task loss.

        The optimizer and the batch iterator come from the factories, after which `wrap` may
        replace model, optimizer and iterator (e.g. with opacus' DP-SGD versions). Returns the
        task loss (without `extra_loss`) averaged over batches weighted by their sizes, the
        optimizer steps, the number of samples held (`samples`, the FedAvg weight), seconds.
        """
        shaping = self._shaping
        if shaping is not None:
            wrap = self._shaped_wrap(shaping, wrap, extra_loss)
        loss_of = self._loss_of(shaping)
        columns = self.tensors(data)
        n = num_rows(data)
        start = time.perf_counter()
        model = self.model
        model.train()
        optimizer = make_optimizer(self.params, recipe)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self._amp is torch.float16)
        optimizer.zero_grad()
        torch.manual_seed(seed)  # fixes batch order and dropout; nothing may draw before it
        loader = make_loader(columns, recipe)
        steps, seen, loss_sum = 0, 0, 0.0
        try:
            if wrap is not None:
                model, optimizer, loader = wrap(model, optimizer, loader)
            for _ in range(recipe.epochs):
                if recipe.max_steps and steps >= recipe.max_steps:
                    break
                for batch in loader:
                    if recipe.max_steps and steps >= recipe.max_steps:
                        break
                    rows = num_rows(batch)
                    if rows == 0 and shaping is not None:  # an empty Poisson batch: noise only
                        shaping.empty_step()
                        steps += 1
                        continue
                    with self.autocast():
                        task_loss = loss_of(model, batch)
                        loss = task_loss if extra_loss is None else task_loss + extra_loss(model)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad()
                    steps += 1
                    seen += rows
                    loss_sum += task_loss.item() * rows
        finally:
            if shaping is not None:
                shaping.unwrap()
        return {
            "loss": loss_sum / max(seen, 1),
            "steps": float(steps),
            "samples": float(n),
            "compute_s": time.perf_counter() - start,
        }

    def _shaped_wrap(
        self, shaping: LocalTraining, wrap: Wrap | None, extra_loss: ExtraLoss | None
    ) -> Wrap:
        """The wrap of a shaped fit, refusing what per-sample clipping would silently break."""
        if wrap is not None:
            raise ValueError(
                "the client rule wraps its training and the privacy mechanism shapes it too; "
                "they cannot both apply: use a rule without its own wrap"
            )
        if shaping.per_sample_gradients and extra_loss is not None:
            raise ValueError(
                "per-sample gradient clipping (privacy=dp_sgd) would drop the client rule's loss "
                "term on the parameters (e.g. FedProx's proximal term); use a rule without one"
            )
        if shaping.per_sample_gradients and self.uses_loss_scaling:
            raise ValueError(
                "per-sample gradient clipping cannot run under float16 loss scaling (gradients "
                "would be clipped while scaled); use model.dtype=float32 or bfloat16"
            )
        return shaping.wrap

    def _loss_of(self, shaping: LocalTraining | None) -> Callable[[Any, Batch], Any]:
        """The training loss of a batch: the task's, or, for a shaping that trains on per-sample
        losses (ghost clipping), its loss of the task's per-sample losses."""
        if shaping is None or not shaping.per_sample_losses:
            return self.task.loss
        if not self.task.per_sample_loss:
            raise ValueError(
                f"{type(self.task).__name__} gives no per-sample losses, which ghost clipping "
                "needs (privacy.grad_sample_mode=ghost); use privacy.grad_sample_mode=hooks"
            )
        per_sample = cast(PerSampleLoss, self.task).sample_losses
        return lambda model, batch: shaping.batch_loss(per_sample(model, batch))

    def evaluate(self, data: dict[str, np.ndarray], batch_size: int = 64) -> dict[str, float]:
        """The task's metrics of the current model on `data`."""
        return self.task.metrics(add_sums([self.eval_sums(data, batch_size)]))

    @torch.inference_mode()
    def eval_sums(
        self,
        data: dict[str, np.ndarray],
        batch_size: int = 64,
        start: int = 0,
        stop: int | None = None,
    ) -> list[dict[str, float]]:
        """The task's sums per evaluation batch over rows [start, stop), in batch order.

        Batches start at `start`; :func:`fedray.tasks.base.shard_rows` gives batch-aligned
        ranges, so that sharded and whole passes score the same batches.
        """
        columns = self.tensors({k: v[start:stop] for k, v in data.items()})
        n = num_rows(columns)
        self.model.eval()
        sums = []
        for i in range(0, n, batch_size):
            batch = {k: v[i : i + batch_size] for k, v in columns.items()}
            with self.autocast():
                sums.append(self.task.eval_batch(self.model, batch))
        return sums

    def export_adapter(self, state: State) -> dict[str, bytes]:
        """`state` in peft format (lora), HF format (full) or as a safetensors state (other
        architectures) as {relative file name: bytes}; tensors attached to the trainable state
        (FLoRA's merged deltas) go to ``attached_state.safetensors`` beside the adapter."""
        self.set_state(state)
        return export_files(self.model)
