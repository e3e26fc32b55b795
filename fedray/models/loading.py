"""Load a Hugging Face model by hub name, local directory or builtin name; wrap it in peft LoRA."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import peft
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

from fedray.core.config import ModelConfig
from fedray.core.errors import ModelError
from fedray.models.paths import first_line, model_key, resolve_model_path

# Model heads by kind: the Auto class and peft's task type (tasks name the head they need).
HEADS: dict[str, tuple[Any, peft.TaskType]] = {
    "classification": (AutoModelForSequenceClassification, peft.TaskType.SEQ_CLS),
    "causal_lm": (AutoModelForCausalLM, peft.TaskType.CAUSAL_LM),
}


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer; one without a pad token (causal LMs) pads with its eos token."""
    path = resolve_model_path(cfg.name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"{model_key(cfg.name_or_path)}: no tokenizer (not a model directory and not found "
            f"on the Hugging Face Hub): {first_line(e)}"
        ) from e
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            key = model_key(cfg.name_or_path)
            raise ModelError(f"{key}: tokenizer has neither pad nor eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _adaptable_names(model: torch.nn.Module) -> dict[str, type]:
    """Full module name -> type, for the layers LoRA can adapt (Linear and GPT-2's Conv1D)."""
    return {n: type(m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | Conv1D)}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")  # peft's suffix rule for list targets


def _lora_config(model: torch.nn.Module, cfg: ModelConfig, task_type: peft.TaskType | None) -> Any:
    lora = cfg.lora
    targets = list(lora.target_modules)
    layers = _adaptable_names(model)
    module_names = [n for n, _ in model.named_modules()]
    if targets != ["all-linear"]:
        missing = [t for t in targets if not any(_matches(n, t) for n in module_names)]
        if missing or not targets:
            available = sorted({n.rsplit(".", 1)[-1] for n in layers})
            what = f"{missing} not in the model" if missing else "empty"
            raise ModelError(
                f"model.lora.target_modules={targets}: {what}; "
                f"Linear modules: {available} (or ['all-linear'])"
            )
    to_save = list(lora.modules_to_save) if lora.modules_to_save else None
    bad = [m for m in to_save or [] if not any(_matches(n, m) for n in module_names)]
    if bad:
        raise ModelError(f"model.lora.modules_to_save={to_save}: {bad} not in the model")
    conv1d = any(t is Conv1D for n, t in layers.items() if any(_matches(n, x) for x in targets))
    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        modules_to_save=to_save,
        layers_to_transform=list(lora.layers) if getattr(lora, "layers", None) else None,
        fan_in_fan_out=conv1d,  # GPT-2 stores Conv1D weights transposed
        task_type=task_type,
    )


def load_model(cfg: ModelConfig, head: str, num_labels: int | None, seed: int) -> torch.nn.Module:
    """Pretrained model with a `head` of :data:`HEADS`, seeded right before loading; peft LoRA
    if finetune=lora."""
    if head not in HEADS:
        raise ModelError(f"model head {head!r}: unknown; use one of {list(HEADS)}")
    if cfg.finetune not in ("lora", "full"):
        raise ModelError(f"model.finetune={cfg.finetune!r}: use lora or full")
    auto_cls, task_type = HEADS[head]
    kwargs: dict[str, Any] = {"dtype": torch.float32}  # fp32 master weights; autocast on CUDA
    if head == "classification":
        if not num_labels or num_labels < 2:
            raise ModelError(f"num_labels={num_labels}: classification needs >= 2 classes")
        kwargs["num_labels"] = num_labels
    path = resolve_model_path(cfg.name_or_path)
    torch.manual_seed(seed)  # fixes the new head (and LoRA A) everywhere (W1)
    try:
        model = auto_cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelError(
            f"{model_key(cfg.name_or_path)}: not a model directory (no config.json) and not found "
            f"on the Hugging Face Hub, or not loadable as {auto_cls.__name__}: {first_line(e)}"
        ) from e
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)  # pad = eos
    if cfg.finetune == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    return lora_wrap(model, cfg, task_type)


def lora_wrap(
    model: torch.nn.Module, cfg: ModelConfig, task_type: peft.TaskType | None
) -> torch.nn.Module:
    """`model` wrapped in peft LoRA as `cfg.lora` says (target and saved modules checked)."""
    lora_config = _lora_config(model, cfg, task_type)
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
            return peft.get_peft_model(model, lora_config)
    except ValueError as e:
        raise ModelError(f"model.lora: peft cannot adapt this model: {first_line(e)}") from e


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int
) -> dict[str, np.ndarray]:
    """Token ids and attention mask, [N, max_length] int64, padded and truncated."""
    if tokenizer.pad_token is None:
        raise ModelError("tokenizer has no pad token; load it with fedray.models.load_tokenizer")
    out = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
        return_token_type_ids=False,
    )
    return {k: np.asarray(out[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}
