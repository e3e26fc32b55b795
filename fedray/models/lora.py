"""LoRA factors in a trainable state, and the model changes exact LoRA aggregation needs.

Averaging LoRA factors separately is not averaging the models: ``mean(B_i) mean(A_i) !=
mean(B_i A_i)``. Two exact schemes need small changes to the model every actor holds:

- FFA-LoRA (Sun et al. 2024) freezes every A (:func:`freeze_lora_a`) at its seeded
  initialisation, identical on every client, so ``mean(B_i) A == mean(B_i A)``.
- FLoRA (Wang et al. 2024) sums the products ``B_i A_i`` exactly. With a frozen shared base the
  sum cannot be merged into the base weights, so every adapted layer gets a dense float32
  *merged delta* D (:func:`attach_merged_deltas`): the layer computes
  ``W x + s (D + B A) x`` (s: the LoRA scaling). D is part of the trainable state (it travels
  down and is checkpointed) but never trained; the server adds the cohort's weighted
  ``sum_i w_i B_i A_i`` to it and restarts A and B.

State keys: ``<layer>.lora_A.weight`` (rank x in), ``<layer>.lora_B.weight`` (out x rank) as
peft names them, and ``<layer>.lora_delta`` (out x in) for D.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

A_KEY, B_KEY, DELTA_KEY = "lora_A.weight", "lora_B.weight", "lora_delta"


def lora_pairs(keys: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Layer prefix -> (A key, B key) for every adapted layer of a state's keys."""
    keys = set(keys)
    out = {}
    for k in sorted(keys):
        if k.endswith(A_KEY):
            prefix = k[: -len(A_KEY)]
            if prefix + B_KEY not in keys:
                raise ValueError(f"{k} has no matching {prefix + B_KEY}")
            out[prefix] = (k, prefix + B_KEY)
    return out


def lora_a_init(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A fresh LoRA A as peft initialises it: kaiming-uniform with a = sqrt(5), i.e.
    uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), float32."""
    bound = 1.0 / np.sqrt(shape[1])
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def freeze_lora_a(model: object) -> int:
    """Stop training every LoRA A of a torch model (FFA-LoRA); returns how many were frozen."""
    frozen = 0
    for name, p in model.named_parameters():  # type: ignore[attr-defined]
        if ".lora_A." in name and p.requires_grad:
            p.requires_grad_(False)
            frozen += 1
    if not frozen:
        raise ValueError("the model has no trainable LoRA A to freeze (model.finetune=lora?)")
    return frozen


def attach_merged_deltas(model: object) -> dict[str, object]:
    """Give every LoRA layer of a peft model a dense float32 delta D (zero), added to its
    output as ``s * x D^T`` by a forward hook, and make D part of the trainable state (key
    ``<layer>.lora_delta``). Returns the new tensors by key."""
    import torch
    from peft.tuners.lora import LoraLayer

    from fedray.models.state import attach_state

    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():  # type: ignore[attr-defined]
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        delta = torch.zeros(b.shape[0], a.shape[1], dtype=torch.float32, device=a.device)
        module.register_forward_hook(_DeltaHook(delta, float(module.scaling["default"])))
        tensors[f"{name}.{DELTA_KEY}"] = delta
    if not tensors:
        raise ValueError("the model has no LoRA layer to give a merged delta (finetune=lora?)")
    attach_state(model, tensors)  # type: ignore[arg-type]
    return tensors  # type: ignore[return-value]


class _DeltaHook:
    """Forward hook: output + scaling * x @ D^T (D: out x in), D read at call time."""

    def __init__(self, delta: object, scaling: float) -> None:
        self.delta, self.scaling = delta, scaling

    def __call__(self, module: object, args: tuple, output: object) -> object:
        import torch.nn.functional as F

        return output + self.scaling * F.linear(args[0], self.delta)  # type: ignore[operator]
