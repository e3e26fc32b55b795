"""What a client actor learns about its process: the device it trains on, its Ray node, and
the size of its model."""

from __future__ import annotations

from typing import Any


def pick_device(requested: str, num_gpus: float) -> str:
    """The torch device an actor trains on; raises instead of silently falling back."""
    import torch

    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or num_gpus > 0:
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"client.device={requested} with client.num_gpus={num_gpus}, but torch sees no "
                "CUDA device on this node; set client.device=cpu to use logical GPUs on CPUs"
            )
        return "cuda"
    return "cpu"


def node_id() -> str:
    """The Ray node this process runs on ('' outside Ray: a Trainer test, say)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def model_size(model: Any) -> tuple[int, int]:
    """(parameters of the whole model without its peft adapters, trainable parameters).

    A peft model holds its tuner's adapter weights (names with the tuner's prefix, e.g.
    `lora_`) and a trainable copy of each `modules_to_save` module beside the original; neither
    is part of the model a full fine-tuning run would train.
    """
    from peft import PeftModel

    skip: tuple[str, ...] = ()
    if isinstance(model, PeftModel):
        skip = (str(model.base_model.prefix), ".modules_to_save.")
    total = trainable = 0
    for name, p in model.named_parameters():
        trainable += p.numel() if p.requires_grad else 0
        if not any(s in name for s in skip):
            total += p.numel()
    return total, trainable
