"""Models: a HF model by hub name or local path (or builtin:minilm), peft adapters, trainable state,
and the architectures of `model.arch` (:mod:`fedray.models.archs`: vit, logreg, mf, ncf, hf).

Only trainable parameters travel: :func:`get_trainable_state` / :func:`set_trainable_state` use
peft's functional API for adapters and the plain `state_dict` for full fine-tuning.

Importing this package is cheap: the names below load torch, transformers and peft on first use,
so the process that only coordinates (and checks model paths, :mod:`fedray.models.paths`) never
imports them.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BUILTIN_MODELS": "paths",
    "SCRATCH": "paths",
    "architecture": "build",
    "build_model": "build",
    "resolve_model_path": "paths",
    "encode": "loading",
    "load_model": "loading",
    "load_tokenizer": "loading",
    "attach_state": "state",
    "attached_state": "state",
    "get_trainable_state": "state",
    "set_trainable_state": "state",
    "state_keys": "state",
    "trainable_parameters": "state",
    "save_llama": "tiny",
    "save_tiny_causal_lm": "tiny",
    "save_tiny_classifier": "tiny",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'fedray.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedray.models.{_LAZY[name]}"), name)
