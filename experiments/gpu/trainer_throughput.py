"""Client-trainer throughput on one device: the W1 model (MiniLM + LoRA), plain and DP-SGD.

Runs fedray's plain-torch client trainer (no Ray) on the W1 training pool prepared by
`prepare.py`, for several batch sizes, in float32, with bf16 autocast (CUDA only) and with opacus
DP-SGD (per-sample gradients, clipping, noise). Reports samples per second over timed steps
(after warm-up steps) and peak device memory. Prints one JSON line per setting and a table.

Usage: python experiments/gpu/trainer_throughput.py DIR [--device cuda] [--steps 30]
       [--batch-sizes 32 128 512] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedray.client.trainer import Recipe, Trainer
from fedray.core.config import LoraConfig, ModelConfig

W1_LORA = LoraConfig(r=8, alpha=16, dropout=0.0, target_modules=["query", "value"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def plain(trainer: Trainer, data: dict[str, np.ndarray], bs: int, steps: int, warm: int) -> float:
    """Seconds for `steps` optimizer steps of the trainer's own fit (W1 recipe, AdamW)."""
    n = min(len(data["labels"]), bs * (steps + warm))
    sub = {k: v[:n] for k, v in data.items()}
    trainer.fit(sub, seed=0, recipe=Recipe(10**6, bs, 5e-4, 0.01, max_steps=warm))
    _sync(trainer.device)
    _peak_reset(trainer.device)
    t = time.perf_counter()
    trainer.fit(sub, seed=0, recipe=Recipe(10**6, bs, 5e-4, 0.01, max_steps=steps))
    _sync(trainer.device)
    return time.perf_counter() - t


def dp_sgd(trainer: Trainer, data: dict[str, np.ndarray], bs: int, steps: int, warm: int) -> float:
    """Seconds for `steps` DP-SGD steps: opacus per-sample grads, clip 1.0, noise 1.0, AdamW."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    dev = trainer.device
    model = GradSampleModule(trainer.model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = DPOptimizer(
        torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=bs,
    )
    ids = torch.as_tensor(data["input_ids"], dtype=torch.long, device=dev)
    mask = torch.as_tensor(data["attention_mask"], dtype=torch.long, device=dev)
    labels = torch.as_tensor(data["labels"], dtype=torch.long, device=dev)
    g = torch.Generator().manual_seed(0)
    model.train()

    def step() -> None:
        idx = torch.randint(0, len(labels), (bs,), generator=g).to(dev)
        loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(warm):
        step()
    _sync(dev)
    _peak_reset(dev)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    elapsed = time.perf_counter() - t
    model._close()  # remove opacus hooks
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--modes", nargs="+", default=["fp32", "bf16", "dp_fp32"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    raw = np.load(args.dir / "w1.npz")
    data = {k: raw[k] for k in ("input_ids", "attention_mask", "labels")}
    pool = len(data["labels"])  # repeat the pool so the biggest batch still has distinct steps
    reps = max(1, -(-max(args.batch_sizes) * (args.steps + args.warm) // pool))
    data = {k: np.concatenate([v] * reps) for k, v in data.items()}
    results: list[dict[str, Any]] = []
    for mode in args.modes:
        if mode == "bf16" and args.device != "cuda":
            continue
        for bs in args.batch_sizes:
            cfg = ModelConfig(
                name_or_path=str(args.dir / "minilm"),
                finetune="lora",
                lora=W1_LORA,
                dtype="bfloat16" if mode == "bf16" else "float32",
            )
            trainer = Trainer(cfg, "classification", int(raw["num_labels"]), 0, args.device)
            run = dp_sgd if mode.startswith("dp") else plain
            secs = run(trainer, data, bs, args.steps, args.warm)
            row = {
                "mode": mode,
                "batch_size": bs,
                "steps": args.steps,
                "samples_per_s": round(bs * args.steps / secs, 1),
                "step_ms": round(1000 * secs / args.steps, 2),
                "peak_mib": None if (p := _peak_mib(trainer.device)) is None else round(p, 1),
            }
            print(json.dumps(row), flush=True)
            results.append(row)
            del trainer
    meta = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "max_length": int(data["input_ids"].shape[1]),
    }
    print(f"\n{meta}\n| mode | batch | samples/s | ms/step | peak MiB |\n|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['mode']} | {r['batch_size']} | {r['samples_per_s']} | {r['step_ms']} "
            f"| {r['peak_mib']} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
