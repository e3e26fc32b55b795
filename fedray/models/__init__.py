"""Models: a HF model by hub name or local path (or builtin:minilm), peft adapters, trainable state.

Only trainable parameters travel: :func:`get_trainable_state` / :func:`set_trainable_state` use
peft's functional API for adapters and the plain `state_dict` for full fine-tuning.
"""

from fedray.models.loading import encode, load_model, load_tokenizer
from fedray.models.paths import BUILTIN_MODELS, resolve_model_path
from fedray.models.state import (
    get_trainable_state,
    set_trainable_state,
    state_keys,
    trainable_parameters,
)
from fedray.models.tiny import save_tiny_causal_lm, save_tiny_classifier

__all__ = [
    "BUILTIN_MODELS",
    "encode",
    "get_trainable_state",
    "load_model",
    "load_tokenizer",
    "resolve_model_path",
    "save_tiny_causal_lm",
    "save_tiny_classifier",
    "set_trainable_state",
    "state_keys",
    "trainable_parameters",
]
