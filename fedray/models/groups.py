"""Client groups: clients that differ in LoRA rank, tuned layers or architecture.

`model.groups` lists groups with a `share` of the clients each. Pure numpy, no torch: the
coordinator (strategies) and the client actors compute the same things from the spec.

- :func:`assign` gives every client id its group, from the run seed (one seeded permutation,
  cut by the shares).
- Groups with the same `num_layers` are one *architecture*: one model in every actor, the
  superset of its groups (the largest rank, the union of tuned layers). Clients of a lower rank
  train the leading components only (HetLoRA's truncation), clients tuning fewer layers leave
  the other adapters as the server sent them.
- With several architectures, trainable-state keys carry the architecture as a prefix
  (``"L3/base_model..."``) and the global state is the union of every architecture's state;
  with one (the default: no groups) keys are unprefixed.
- :func:`trained_part` says which components of a key a group trains (the rest of its update
  is exactly zero), which the strategies use to average every component over the clients that
  trained it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from fedray.core import registry
from fedray.core.config import ClientGroupConfig, FedrayConfig, LoraConfig, ModelConfig

_LAYER = re.compile(r".*\.[^.]*\.(\d+)\.")  # peft's rule for `layers_to_transform`
Part = tuple[slice, ...] | None
"""The components of one tensor a group trains: an index (slices), or None for none of it."""


@dataclass(frozen=True)
class Group:
    """A resolved client group: every field set."""

    index: int
    name: str
    share: float
    r: int
    layers: tuple[int, ...] | None  # None: every adapted layer
    arch: str  # "" when the run has one architecture
    num_layers: int | None  # transformer layers of its architecture (None: all)


def arch_name(num_layers: int | None) -> str:
    """The key prefix of an architecture with `num_layers` layers (None: the full base)."""
    return "full" if num_layers is None else f"L{num_layers}"


def _num_layers(model: ModelConfig, g: ClientGroupConfig) -> int | None:
    return g.num_layers if g.num_layers is not None else model.num_layers


def resolve(model: ModelConfig) -> list[Group]:
    """The groups of `model.groups` with defaults filled in; one group of everyone if empty."""
    raw = list(model.groups) or [ClientGroupConfig()]
    archs = {_num_layers(model, g) for g in raw}
    out = []
    for i, g in enumerate(raw):
        layers = g.layers if g.layers is not None else model.lora.layers
        out.append(
            Group(
                index=i,
                name=g.name or f"group{i}",
                share=float(g.share),
                r=int(g.r if g.r is not None else model.lora.r),
                layers=None if layers is None else tuple(int(x) for x in layers),
                arch=arch_name(_num_layers(model, g)) if len(archs) > 1 else "",
                num_layers=_num_layers(model, g),
            )
        )
    return out


def problem(model: ModelConfig) -> str | None:
    """One line on the first invalid `model.groups` value (or model option), else None."""
    if model.dtype not in ("float32", "bfloat16", "float16"):
        return f"model.dtype={model.dtype!r}: use float32, bfloat16 or float16"
    if model.quantize not in ("none", "8bit", "4bit"):
        return f"model.quantize={model.quantize!r}: use none, 8bit or 4bit"
    if model.quantize != "none" and model.finetune != "lora":
        return f"model.quantize={model.quantize} needs model.finetune=lora (the base is frozen)"
    if not model.groups:
        return None
    if model.finetune != "lora":
        return "model.groups need model.finetune=lora (groups differ in their adapters)"
    names = [g.name for g in model.groups if g.name]
    if len(set(names)) != len(names):
        return f"model.groups: duplicate names {names}"
    for i, g in enumerate(model.groups):
        where = f"model.groups[{i}]"
        if not 0 < g.share <= 1:
            return f"{where}.share={g.share} must be in (0, 1]"
        if g.r is not None and g.r < 1:
            return f"{where}.r={g.r} must be >= 1"
        if g.layers is not None and not g.layers:
            return f"{where}.layers is empty; list layer indices or use null (all)"
        if g.num_layers is not None and g.num_layers < 1:
            return f"{where}.num_layers={g.num_layers} must be >= 1"
        tuned = g.layers if g.layers is not None else model.lora.layers
        kept = _num_layers(model, g)
        if kept is not None and tuned is not None and max(tuned) >= kept:
            return (
                f"{where}: tunes layer {max(tuned)} but keeps only num_layers={kept}; "
                f"set {where}.layers within 0..{kept - 1}"
            )
    total = sum(g.share for g in model.groups)
    if abs(total - 1.0) > 1e-6:
        return f"model.groups: shares sum to {total:g}; they must sum to 1"
    return None


def spec_problem(spec: FedrayConfig) -> str | None:
    """:func:`problem`, then what the model options need from other groups, or None."""
    m, c = spec.model, spec.client
    if (found := problem(m)) is not None:
        return found
    if m.quantize != "none" and (c.device == "cpu" or (c.device == "auto" and c.num_gpus <= 0)):
        return (
            f"model.quantize={m.quantize} runs on CUDA only (bitsandbytes); use client=gpu "
            "(client.num_gpus > 0) or model.quantize=none"
        )
    if m.groups:
        algo = spec.algorithm.name
        if not registry.entry("algorithm", algo).factory.reads_groups:
            readers = [n for n in registry.names("algorithm") if _reads_groups(n)]
            return (
                f"model.groups need an algorithm that reads them ({', '.join(readers)}); "
                f"algorithm={algo} would train and average every client alike"
            )
    return None


def _reads_groups(name: str) -> bool:
    return bool(registry.entry("algorithm", name).factory.reads_groups)


def assign(groups: list[Group], num_clients: int, seed: int) -> np.ndarray:
    """Group index of each client: a permutation seeded by (seed, "groups") cut by the shares
    (largest remainder), so every group gets round(share * num_clients) clients or so."""
    if len(groups) == 1:
        return np.zeros(num_clients, dtype=np.int64)
    shares = np.array([g.share for g in groups], dtype=np.float64)
    exact = shares / shares.sum() * num_clients
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: num_clients - int(counts.sum())]] += 1
    perm = np.random.default_rng([seed, 0x67726F7570]).permutation(num_clients)
    out = np.empty(num_clients, dtype=np.int64)
    start = 0
    for g, n in enumerate(counts):
        out[perm[start : start + n]] = g
        start += n
    return out


def architectures(model: ModelConfig) -> dict[str, ModelConfig]:
    """Architecture name -> the model config every actor builds for it: the superset of its
    groups (largest rank, union of tuned layers, its `num_layers`), in group order."""
    by_arch: dict[str, list[Group]] = {}
    for g in resolve(model):
        by_arch.setdefault(g.arch, []).append(g)
    out: dict[str, ModelConfig] = {}
    for arch, members in by_arch.items():
        layers: list[int] | None = []
        for g in members:
            layers = None if g.layers is None or layers is None else sorted({*layers, *g.layers})
        lora = dataclasses.replace(model.lora, r=max(g.r for g in members), layers=layers)
        out[arch] = dataclasses.replace(
            model, lora=lora, groups=[], num_layers=members[0].num_layers
        )
    return out


def layer_of(key: str) -> int | None:
    """The layer index in a state key (peft's rule), or None for keys outside the layers."""
    m = _LAYER.match(key)
    return int(m.group(1)) if m else None


def split_arch(key: str) -> tuple[str, str]:
    """("L3", "base_model...") for a prefixed key; ("", key) for an unprefixed one."""
    head, sep, rest = key.partition("/")
    return (head, rest) if sep else ("", key)


def trained_part(group: Group, key: str, shape: tuple[int, ...]) -> Part:
    """The components of state key `key` that clients of `group` train (None: none).

    LoRA A (rank x in) trains its first `r` rows, LoRA B (out x rank) its first `r` columns,
    adapters of layers outside `group.layers` nothing; keys of another architecture nothing;
    every other key (heads, modules_to_save) all of it.
    """
    arch, inner = split_arch(key)
    if arch != group.arch:
        return None
    if "lora_A" in inner or "lora_B" in inner:
        layer = layer_of(inner)
        if group.layers is not None and layer is not None and layer not in group.layers:
            return None
        if "lora_A" in inner:
            return (slice(0, group.r),) + (slice(None),) * (len(shape) - 1)
        return (slice(None), slice(0, group.r)) + (slice(None),) * (len(shape) - 2)
    return (slice(None),) * len(shape)


def lora_for(model: ModelConfig, arch: str) -> LoraConfig:
    """The LoRA config an architecture's superset model is built with."""
    return architectures(model)[arch].lora
