"""Load a Hugging Face model by hub name, local directory or builtin name; wrap it in peft LoRA."""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from typing import Any

import numpy as np
import peft
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D

from fedray.core.config import ModelConfig
from fedray.core.errors import ModelError
from fedray.models import shared
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


_KEYS: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def storage_dtype(cfg: ModelConfig) -> torch.dtype:
    """The dtype the frozen base is stored in (`model.dtype`)."""
    if cfg.dtype not in DTYPES:
        raise ModelError(f"model.dtype={cfg.dtype!r}: use one of {list(DTYPES)}")
    return DTYPES[cfg.dtype]


def build_key(cfg: ModelConfig, head: str, num_labels: int | None, seed: int) -> str:
    """What a shared base built for these arguments must match (see fedray.models.shared)."""
    return shared.base_key(
        name_or_path=cfg.name_or_path,
        head=head,
        num_labels=num_labels,
        seed=seed,
        finetune=cfg.finetune,
        lora=dataclasses.asdict(cfg.lora) if cfg.finetune == "lora" else None,
        dtype=cfg.dtype,
        num_layers=cfg.num_layers,
    )


def _quantization(cfg: ModelConfig) -> dict[str, Any]:
    """from_pretrained arguments of `model.quantize` (bitsandbytes, on this CUDA device)."""
    if cfg.quantize == "none":
        return {}
    if not torch.cuda.is_available():
        raise ModelError(
            f"model.quantize={cfg.quantize} needs a CUDA device (bitsandbytes); "
            "use model.quantize=none on CPU"
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise ModelError(
            f"model.quantize={cfg.quantize} needs bitsandbytes: pip install bitsandbytes "
            f"({first_line(e)})"
        ) from e
    if cfg.quantize == "4bit":  # QLoRA (Dettmers et al. 2023)
        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=storage_dtype(cfg),
        )
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}}


def _finish(model: torch.nn.Module, cfg: ModelConfig, task_type: peft.TaskType) -> Any:
    """Pad token, gradient checkpointing, then full fine-tuning or the LoRA wrapper."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)  # pad = eos
    if cfg.quantize != "none":  # norms in float32, inputs that require grad (peft's recipe)
        model = peft.prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing
        )
    elif cfg.gradient_checkpointing:
        with warnings.catch_warnings():  # renamed activation_checkpointing_enable in v5
            warnings.filterwarnings("ignore", ".*gradient_checkpointing_enable.*", FutureWarning)
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
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
            model = peft.get_peft_model(model, lora_config)
    except ValueError as e:
        raise ModelError(f"model.lora: peft cannot adapt this model: {first_line(e)}") from e
    for p in model.parameters():  # trainable parameters stay float32 whatever the base
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.to(torch.float32)
    return model


def _config_kwargs(cfg: ModelConfig, head: str, num_labels: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if head == "classification":
        if not num_labels or num_labels < 2:
            raise ModelError(f"num_labels={num_labels}: classification needs >= 2 classes")
        kwargs["num_labels"] = num_labels
    if cfg.num_layers is not None:
        kwargs["num_hidden_layers"] = cfg.num_layers  # the first num_layers layers are loaded
    return kwargs


def load_model(cfg: ModelConfig, head: str, num_labels: int | None, seed: int) -> torch.nn.Module:
    """Pretrained model with a `head` of :data:`HEADS`, seeded right before loading; peft LoRA
    if finetune=lora.

    The frozen base is stored in `model.dtype` (float32, bfloat16 or float16, or quantized by
    bitsandbytes with `model.quantize`); trainable parameters are float32. Inside
    :func:`fedray.models.shared.provide` the model is built from the offered base instead: its
    skeleton on the meta device, then the shared frozen tensors and private copies of the rest.
    """
    if head not in HEADS:
        raise ModelError(f"model head {head!r}: unknown; use one of {list(HEADS)}")
    if cfg.finetune not in ("lora", "full"):
        raise ModelError(f"model.finetune={cfg.finetune!r}: use lora or full")
    auto_cls, task_type = HEADS[head]
    kwargs = _config_kwargs(cfg, head, num_labels)
    path = resolve_model_path(cfg.name_or_path)
    offer = shared.offered()
    if offer is not None and cfg.finetune == "lora" and cfg.quantize == "none":
        key = build_key(cfg, head, num_labels, seed)
        if offer.base.key != key:
            raise ModelError(f"shared base was built for {offer.base.key}, not for {key}")
        try:
            config = AutoConfig.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelError(f"{model_key(cfg.name_or_path)}: {first_line(e)}") from e
        with torch.device("meta"):
            skeleton = auto_cls.from_config(config, dtype=storage_dtype(cfg))
        model = _finish(skeleton, cfg, task_type)
        shared.assign(model, offer.base)
        offer.used = True
        _KEYS[model] = key
        return model
    kwargs.update(dtype=storage_dtype(cfg), **_quantization(cfg))
    torch.manual_seed(seed)  # fixes the new head (and LoRA A) everywhere (W1)
    try:
        model = auto_cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelError(
            f"{model_key(cfg.name_or_path)}: not a model directory (no config.json) and not "
            f"found on the Hugging Face Hub, or not loadable as {auto_cls.__name__}: "
            f"{first_line(e)}"
        ) from e
    model = _finish(model, cfg, task_type)
    _KEYS[model] = build_key(cfg, head, num_labels, seed)
    return model


def build_key_of(model: torch.nn.Module) -> str:
    """The :func:`build_key` of a model made by :func:`load_model`."""
    if model not in _KEYS:
        raise ModelError("this model was not built by fedray.models.load_model; cannot share it")
    return _KEYS[model]


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
