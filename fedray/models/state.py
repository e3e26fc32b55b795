"""Trainable state as float32 numpy arrays: only what travels between client and server."""

from __future__ import annotations

import sys
import warnings
import weakref

import numpy as np
import torch

from fedray.core.errors import ModelError
from fedray.core.types import State

_KEYS: weakref.WeakKeyDictionary[torch.nn.Module, frozenset[str]] = weakref.WeakKeyDictionary()
_EXTRA: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)
_DIRECT: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, torch.nn.Parameter] | None] = (
    weakref.WeakKeyDictionary()
)


def is_peft(model: torch.nn.Module) -> bool:
    """Whether `model` is a peft model; peft is not imported for models that cannot be one
    (a process that never imported peft holds no peft model)."""
    if "peft" not in sys.modules:
        return False
    import peft

    return isinstance(model, peft.PeftModel)


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    if not is_peft(model):
        return model.state_dict()
    import peft

    # "auto" would re-read the base config (a Hub request per call for hub models) to detect
    # resized embeddings; fedray never resizes them, and frozen weights never travel.
    return peft.get_peft_model_state_dict(model, save_embedding_layers=False)


def _direct(model: torch.nn.Module) -> dict[str, torch.nn.Parameter] | None:
    """State key -> the parameter that *is* that entry, when every entry is one; else None.

    Building peft's state dict walks the whole model (milliseconds per call, per client); the
    entries of a LoRA state are parameters themselves, so after one walk they are read and
    written in place. States holding buffers or views (full fine-tuning) keep the slow path.
    """
    if model not in _DIRECT:
        by_ptr = {p.data_ptr(): p for p in model.parameters()}
        direct: dict[str, torch.nn.Parameter] | None = {}
        for k, t in _tensors(model).items():
            p = by_ptr.get(t.data_ptr())
            if p is None or p.shape != t.shape or p.dtype != t.dtype:
                direct = None
                break
            direct[k] = p
        _DIRECT[model] = direct
    return _DIRECT[model]


def attach_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Make `tensors` (not parameters: the optimizer never sees them) part of the model's
    trainable state: read by :func:`get_trainable_state`, written by
    :func:`set_trainable_state`, so they travel, are averaged and checkpointed like adapters
    (FLoRA's merged dense delta per adapted layer)."""
    known = set(_tensors(model)) | set(_EXTRA.get(model, {}))
    clash = sorted(known & set(tensors))
    if clash:
        raise ModelError(f"attach_state: {clash[0]} is already part of the trainable state")
    _EXTRA.setdefault(model, {}).update(tensors)
    _KEYS.pop(model, None)


def attached_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors :func:`attach_state` added to the model's trainable state (name -> tensor)."""
    return dict(_EXTRA.get(model, {}))


def get_trainable_state(model: torch.nn.Module) -> State:
    """Adapters (+ modules_to_save) for a peft model, the full state_dict otherwise; fp32 copies.
    Tensors attached with :func:`attach_state` come last."""
    tensors = {**(_direct(model) or _tensors(model)), **_EXTRA.get(model, {})}
    state = {
        k: t.detach().to(device="cpu", dtype=torch.float32, copy=True).numpy()
        for k, t in tensors.items()
    }
    _KEYS[model] = frozenset(state)
    return state


def state_keys(model: torch.nn.Module) -> frozenset[str]:
    """The keys of `get_trainable_state(model)` (cached per model)."""
    if model not in _KEYS:
        get_trainable_state(model)
    return _KEYS[model]


def state_storages(model: torch.nn.Module) -> set[int]:
    """Data pointers of the tensors behind the trainable state, whatever their requires_grad
    (FFA-LoRA freezes LoRA A, which still belongs to the state)."""
    return {t.data_ptr() for t in _tensors(model).values()}


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """State key -> the trainable parameter it is read from (keys without one are skipped).

    Matched by storage: peft's state dict renames keys but its tensors share the parameters'
    memory. Buffers in a full fine-tuning state have no gradient and are left out.
    """
    by_ptr = {p.data_ptr(): p for p in model.parameters() if p.requires_grad}
    return {k: by_ptr[t.data_ptr()] for k, t in _tensors(model).items() if t.data_ptr() in by_ptr}


def _as_tensors(state: State) -> dict[str, torch.Tensor]:
    # Ray hands out read-only views; the tensors are only read (copied into the parameters).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}


def _copy_into(targets: dict[str, torch.Tensor], tensors: dict, *, consume: bool) -> None:
    """Copy `tensors[k]` into each target in place (dropping it from `tensors` if `consume`);
    a shape that differs is a one-line ModelError."""
    with torch.no_grad():
        for k, t in targets.items():
            if tensors[k].shape != t.shape:
                raise ModelError(
                    f"trainable state does not fit the model: {k} has shape "
                    f"{tuple(tensors[k].shape)}, the model's is {tuple(t.shape)}"
                )
            t.copy_(tensors.pop(k) if consume else tensors[k])


def set_trainable_state(model: torch.nn.Module, state: State) -> None:
    """Load a state from :func:`get_trainable_state` (same keys and shapes) into the model."""
    expected = state_keys(model)
    if state.keys() != expected:
        missing, extra = sorted(expected - state.keys()), sorted(state.keys() - expected)
        raise ModelError(
            f"trainable state does not match the model: missing {missing[:3]} "
            f"({len(missing)}), unexpected {extra[:3]} ({len(extra)}); same model/finetune config?"
        )
    tensors = _as_tensors(state)
    _copy_into(_EXTRA.get(model, {}), tensors, consume=True)  # attached: not peft's to load
    direct = _direct(model)
    if direct is not None:
        _copy_into(direct, tensors, consume=False)
        return
    try:
        if is_peft(model):
            import peft

            result = peft.set_peft_model_state_dict(model, tensors)
            if result.unexpected_keys:
                raise ModelError(f"peft did not load state keys {result.unexpected_keys[:3]}")
        else:
            model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = next(
            (ln.strip() for ln in first if "size mismatch" in ln), first[0] if first else ""
        )
        raise ModelError(f"trainable state does not fit the model: {detail}") from e
