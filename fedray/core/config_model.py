"""The typed `model` config group: LoRA, client groups, the architecture node (re-exported by
:mod:`fedray.core.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedray.core import registry
from fedray.core.errors import ConfigError


@dataclass
class LoraConfig:
    """peft LoRA settings; see peft.LoraConfig."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    modules_to_save: list[str] | None = None
    layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "Adapt only these layer indices (null: all). Top layers only = a "
            "shorter backward pass."
        },
    )


@dataclass
class ClientGroupConfig:
    """A share of the clients that differ from the rest in LoRA rank, tuned layers or
    architecture (HetLoRA, FedDF). Unset fields take the model's own values."""

    name: str = field(default="", metadata={"help": "Name shown in metrics; default group<i>."})
    share: float = field(
        default=1.0, metadata={"help": "Fraction of the clients in this group (shares sum to 1)."}
    )
    r: int | None = field(default=None, metadata={"help": "LoRA rank (null: model.lora.r)."})
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "Layer indices whose adapters this group tunes (null: model.lora's)."},
    )
    num_layers: int | None = field(
        default=None,
        metadata={
            "help": "Architecture: keep only the first num_layers transformer layers of the "
            "base (null: all). Groups with different values are different models (FedDF)."
        },
    )


@dataclass
class ModelConfig:
    """Which pretrained model is fine-tuned, and how."""

    name_or_path: str = field(
        default="builtin:minilm",
        metadata={"help": "HF hub name, local directory, or builtin:minilm (offline MiniLM)."},
    )
    finetune: str = field(default="lora", metadata={"help": "lora | full."})
    lora: LoraConfig = field(default_factory=LoraConfig)
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Storage dtype of the frozen base on CPU and GPU: float32 | bfloat16 | "
            "float16. Trainable parameters stay float32; other than float32, forward and "
            "backward run under autocast in this dtype."
        },
    )
    num_layers: int | None = field(
        default=None,
        metadata={"help": "Keep only the first num_layers transformer layers (null: all)."},
    )
    quantize: str = field(
        default="none",
        metadata={
            "help": "none | 8bit | 4bit: load the base through bitsandbytes (4bit: QLoRA, NF4 "
            "with double quantization, compute in model.dtype); CUDA only, LoRA only."
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: less memory, ~30% slower."},
    )
    shared_base: bool = field(
        default=True,
        metadata={
            "help": "LoRA: the frozen base is loaded once and every client actor of a node "
            "maps it read-only from Ray's object store (false: each actor loads its own)."
        },
    )
    groups: list[ClientGroupConfig] = field(
        default_factory=list,
        metadata={
            "help": "Client groups with their own LoRA rank, tuned layers or architecture "
            "(empty: all clients alike). Needs an algorithm that reads groups: hetlora, feddf."
        },
    )
    arch: Any = field(
        default_factory=lambda: {"name": "hf"},
        metadata={
            "help": "Architecture node {name: ..., options}: hf (a Hugging Face checkpoint at "
            "name_or_path) | vit | mf | ncf | logreg; one module each in fedray/models/archs."
        },
    )

    def __post_init__(self) -> None:
        arch = parse_arch(self.arch)  # a bad node is a ConfigError while the config is typed
        check_against = getattr(arch, "check_against", None)
        if check_against is not None and (problem := check_against(self)):
            raise ConfigError(f"model.{problem}")

    @property
    def architecture(self) -> Any:
        """`arch` as its registered options dataclass (kept as a plain node in the config, so
        that Hydra can merge another architecture's options into it)."""
        return parse_arch(self.arch)


def parse_arch(node: Any) -> Any:
    """A `model.arch` node as its registered options dataclass; ConfigError naming the key."""
    if not isinstance(node, dict) and not hasattr(node, "keys"):
        return node  # already typed
    try:
        return registry.parse("arch", node)
    except ConfigError as exc:
        raise ConfigError(f"model.{exc}") from None


def model_task_problem(model: ModelConfig, task: str) -> str | None:
    """One line when `model.arch` cannot build the model `data.task` needs, else None.

    A task names the kind of model it trains (`Task.model_kind`); an architecture lists the
    kinds it builds (`kinds` of its factory). An unknown task is left to the spec's own check.
    """
    try:
        kind = registry.entry("task", task).factory.model_kind
    except ConfigError:
        return None
    arch = model.architecture
    kinds = registry.entry("arch", arch.name).factory.kinds
    if kind in kinds:
        return None
    fits = [n for n in registry.names("arch") if kind in registry.entry("arch", n).factory.kinds]
    return (
        f"model.arch={arch.name} builds models of kind {', '.join(kinds)}, but data.task={task} "
        f"trains one of kind {kind}; pick a model whose arch builds it ({', '.join(fits)})"
    )
