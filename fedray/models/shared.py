"""One copy of a model's frozen base per node: exported once, mapped read-only by every actor.

A LoRA model is a large frozen base plus a small trainable part. :func:`export_base` splits a
loaded model into :class:`BaseTensors`: the frozen parameters (in their storage dtype, bfloat16
as uint16 bits, since numpy has no bfloat16) and a private part (trainable parameters and every
buffer, copied by each user). Put in Ray's object store once, the frozen arrays come back in
every actor of a node as zero-copy read-only views of the same shared-memory pages (Ray pulls an
object into a node's store once, however many workers read it).

A second actor never loads the checkpoint: :func:`load_model` builds the model's skeleton on the
``meta`` device (no memory) and :func:`assign` gives every parameter its tensor: a view of the
shared arrays for frozen ones, a private copy for the rest. The first actor, which did load the
checkpoint to export it, swaps its own frozen parameters for the shared views
(:func:`adopt`), which frees its private copy.

The shared tensors are read-only memory: nothing may write to a frozen parameter (the optimizer
only sees trainable ones; merging adapters into the base would fault). Tied weights stay tied:
parameters are replaced by identity, every module slot holding one gets the same new one.

GPU: :func:`cuda_handles` / :func:`open_cuda_handles` share CUDA tensors between processes on
the same device by CUDA IPC (what ``torch.multiprocessing`` does for CUDA tensors); the process
that exported them must outlive every user.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedray.core.errors import ModelError

_AS_BITS = {torch.bfloat16: torch.uint16}  # dtypes numpy lacks, stored as raw bits


@dataclass
class BaseTensors:
    """A model's frozen parameters (to share) and its private tensors (to copy), as numpy.

    Attributes:
        key: What the base was built from (model config, head, labels, seed); a model built
            from it must have the same key.
        frozen: Parameter name -> array of the frozen parameters (shared, read-only), or a
            torch tensor already in place (a CUDA tensor shared by IPC, see :func:`on_device`).
        private: Name -> array of the trainable parameters and of all buffers (copied).
        dtypes: Name -> torch dtype name of every array (bfloat16 arrays hold uint16 bits).
        buffers: Names in `private` that are buffers, not parameters.
    """

    key: str
    frozen: dict[str, np.ndarray]
    private: dict[str, np.ndarray]
    dtypes: dict[str, str]
    buffers: frozenset[str] = field(default_factory=frozenset)

    @property
    def frozen_nbytes(self) -> int:
        """Bytes of the shared (frozen) arrays."""
        return int(sum(a.nbytes for a in self.frozen.values()))

    @property
    def private_nbytes(self) -> int:
        """Bytes every user copies (trainable parameters and buffers)."""
        return int(sum(a.nbytes for a in self.private.values()))


def base_key(**fields: Any) -> str:
    """A stable text key of what a base was built from (JSON of the given fields)."""
    return json.dumps(fields, sort_keys=True, default=repr)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype in _AS_BITS:
        t = t.view(_AS_BITS[t.dtype])
    return t.contiguous().numpy()


def _to_torch(a: np.ndarray | torch.Tensor, dtype: str, copy: bool) -> torch.Tensor:
    if isinstance(a, torch.Tensor):  # e.g. opened from CUDA IPC handles: used as it is
        return a.clone() if copy else a
    with warnings.catch_warnings():  # shared arrays are read-only; the frozen tensors are read
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        t = torch.from_numpy(np.array(a) if copy else np.asarray(a))
    target = getattr(torch, dtype)
    return t.view(target) if t.dtype != target else t


def _slots(model: torch.nn.Module, kind: str) -> Iterator[tuple[torch.nn.Module, str, Any]]:
    """(module, local name, tensor) of every parameter (`kind="_parameters"`) or buffer slot,
    duplicates included (a tied weight appears once per module holding it)."""
    for module in model.modules():
        for local, tensor in getattr(module, kind).items():
            if tensor is not None:
                yield module, local, tensor


def export_base(model: torch.nn.Module, key: str) -> BaseTensors:
    """Split a loaded model into its frozen parameters and the private rest (numpy arrays).

    Private: trainable parameters and every tensor of the trainable state (even one a client
    rule froze, like FFA-LoRA's A: the state is written into each round), and all buffers.

    The arrays are views of the model's own tensors where possible: put them in the object
    store (which copies them) before the model changes.
    """
    from fedray.models.state import state_storages

    in_state = state_storages(model)  # written by set_trainable_state: never shared
    frozen: dict[str, np.ndarray] = {}
    private: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            raise ModelError(f"cannot export {name}: it is on the meta device (not loaded)")
        mine = p.requires_grad or p.data_ptr() in in_state
        (private if mine else frozen)[name] = _to_numpy(p)
        dtypes[name] = str(p.dtype).removeprefix("torch.")
    buffers = []
    for name, b in model.named_buffers():
        private[name] = _to_numpy(b)
        dtypes[name] = str(b.dtype).removeprefix("torch.")
        buffers.append(name)
    if not frozen:
        raise ModelError("the model has no frozen parameter to share (full fine-tuning?)")
    return BaseTensors(key, frozen, private, dtypes, frozenset(buffers))


def assign(model: torch.nn.Module, base: BaseTensors, *, frozen_only: bool = False) -> None:
    """Give `model`'s parameters and buffers the tensors of `base`.

    Frozen parameters become read-only views of the shared arrays; the rest get private copies
    (skipped with `frozen_only`, for a model that already holds them). Every name of the model
    must be in `base` with the same shape, dtype and trainability, and nothing may stay on the
    meta device: a mismatch is a one-line ModelError.
    """
    new: dict[int, Any] = {}
    for name, p in model.named_parameters():
        if name in base.frozen:
            if p.requires_grad:
                raise ModelError(f"shared base: {name} is frozen in the base but trainable here")
            source, copy = base.frozen[name], False
        elif frozen_only:
            continue
        elif name in base.private and name not in base.buffers:
            source, copy = base.private[name], True
        else:
            raise ModelError(f"shared base: parameter {name} is not in the base ({base.key})")
        t = _to_torch(source, base.dtypes[name], copy)
        if tuple(t.shape) != tuple(p.shape) or t.dtype != p.dtype:
            raise ModelError(
                f"shared base: {name} is {tuple(t.shape)} {t.dtype} in the base but "
                f"{tuple(p.shape)} {p.dtype} in the model; same model config?"
            )
        new[id(p)] = torch.nn.Parameter(t, requires_grad=p.requires_grad)
    for module, local, p in list(_slots(model, "_parameters")):
        if id(p) in new:
            module._parameters[local] = new[id(p)]
    if not frozen_only:
        bufs: dict[int, torch.Tensor] = {}
        for name, b in model.named_buffers():
            if name not in base.buffers:
                raise ModelError(f"shared base: buffer {name} is not in the base ({base.key})")
            bufs[id(b)] = _to_torch(base.private[name], base.dtypes[name], copy=True)
        for module, local, b in list(_slots(model, "_buffers")):
            if id(b) in bufs:
                module._buffers[local] = bufs[id(b)]
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ModelError(f"shared base: {len(left)} tensors got no value, e.g. {left[0]}")


def adopt(model: torch.nn.Module, base: BaseTensors) -> None:
    """Swap the frozen parameters of the model that exported `base` for its shared views, so
    that its own copy is freed and it maps the same pages as every other actor."""
    assign(model, base, frozen_only=True)


def is_shared(t: torch.Tensor, base: BaseTensors) -> bool:
    """Whether tensor `t` lies in one of the base's frozen arrays (for tests and reports)."""
    start = t.untyped_storage().data_ptr()
    for a in base.frozen.values():
        if isinstance(a, torch.Tensor):
            lo, size = a.untyped_storage().data_ptr(), a.untyped_storage().nbytes()
        else:
            lo, size = a.__array_interface__["data"][0], a.nbytes
        if lo <= start < lo + size:
            return True
    return False


def frozen_bytes(models: list[tuple[torch.nn.Module, BaseTensors | None]]) -> tuple[int, int]:
    """(Bytes of the frozen parameters of the models, bytes of those whose storage lies in
    the base given beside each model, if any); a tensor held by several models or tied slots
    counts once. What an actor reports, so that "shared" is checked, not assumed."""
    frozen: dict[int, int] = {}
    in_base: dict[int, int] = {}
    for model, base in models:
        for p in model.parameters():
            if p.requires_grad:
                continue
            frozen[p.data_ptr()] = size = p.numel() * p.element_size()
            if base is not None and is_shared(p, base):
                in_base[p.data_ptr()] = size
    return sum(frozen.values()), sum(in_base.values())


def on_device(base: BaseTensors, device: str | torch.device) -> BaseTensors:
    """The base with its frozen arrays as tensors on `device` (one copy, made here): the
    owner of a device's copy, whose tensors other processes on that device open by IPC."""
    frozen = {
        k: _to_torch(a, base.dtypes[k], copy=False).to(device) for k, a in base.frozen.items()
    }
    return BaseTensors(base.key, frozen, base.private, base.dtypes, base.buffers)  # type: ignore[arg-type]


# -- handing a base to load_model ------------------------------------------------------------
_CURRENT: contextvars.ContextVar[_Offer | None] = contextvars.ContextVar(
    "fedray_base", default=None
)


@dataclass
class _Offer:
    base: BaseTensors
    used: bool = False


@contextlib.contextmanager
def provide(base: BaseTensors | None) -> Iterator[_Offer | None]:
    """Within this block, :func:`fedray.models.load_model` builds from `base` instead of
    loading the checkpoint. The offer's `used` tells whether it did (a task that builds its
    model some other way leaves it unused)."""
    if base is None:
        yield None
        return
    offer = _Offer(base)
    token = _CURRENT.set(offer)
    try:
        yield offer
    finally:
        _CURRENT.reset(token)


def offered() -> _Offer | None:
    """The base offered by an enclosing :func:`provide`, if any."""
    return _CURRENT.get()


# -- CUDA: one copy per device, shared by IPC -------------------------------------------------
def cuda_handles(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Picklable CUDA IPC handles of CUDA tensors (``torch.multiprocessing``'s reduction).

    The calling process must keep the tensors alive while any other process uses them.
    """
    from torch.multiprocessing.reductions import reduce_tensor

    bad = [k for k, t in tensors.items() if t.device.type != "cuda"]
    if bad:
        raise ModelError(f"cuda_handles: {bad[0]} is not a CUDA tensor")
    return {k: reduce_tensor(t) for k, t in tensors.items()}


def open_cuda_handles(handles: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors behind :func:`cuda_handles` in this process (same device, no copy)."""
    return {k: rebuild(*args) for k, (rebuild, args) in handles.items()}
