"""A 1.26B-parameter LLaMA-style model under 4-bit QLoRA on one GPU, and one base per device.

Three measurements, one JSON file (no Ray: the GPU machine has none; fedray's plain-torch
client trainer and loader do the work):

1. `build`: a LLaMA-style causal LM of TinyLlama's widths and depth (1.26B parameters, built
   from a config with random weights, no hub), saved in bfloat16 and loaded by path as users'
   models are.
2. `throughput`: fedray's `Trainer` on that model with `model.quantize=4bit` (QLoRA: NF4, double
   quantization, bf16 compute), LoRA r=8 on q/k/v/o: samples/s and peak device memory, plain
   (with and without gradient checkpointing) and with opacus DP-SGD (per-sample gradients of
   the adapters, clipping 1.0, noise 1.0; fixed batches: cost, not a privacy guarantee).
3. `sharing`: device memory per extra process when k = 1..4 client processes train on one
   bfloat16 base: shared (this process holds the base on the GPU, each client opens it by CUDA
   IPC through torch.multiprocessing, `fedray.models.shared`) against each loading its own.
   Also a process that only initialises CUDA: the fixed per-process cost (its context).

Usage: python experiments/gpu/qlora.py --out qlora.json            (CUDA; about 4 minutes)
       python experiments/gpu/qlora.py --device cpu --tiny --out t.json   (CPU check: a tiny
       model, no quantization, CPU tensors shared through torch.multiprocessing's shared memory)
Needs torch, transformers, peft, omegaconf (fedray's config types), bitsandbytes (4-bit) and
opacus (DP-SGD); a missing package fails only the rows that need it, recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fedray.client.trainer import Recipe, Trainer  # noqa: E402
from fedray.core.config import LoraConfig, ModelConfig  # noqa: E402
from fedray.models import save_llama, shared  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _device_used_mib() -> float | None:
    """Memory in use on the device, all processes (None on CPU)."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def _batch(rng: np.random.Generator, n: int, length: int, vocab: int) -> dict[str, np.ndarray]:
    return {
        "input_ids": rng.integers(0, vocab, size=(n, length)).astype(np.int64),
        "attention_mask": np.ones((n, length), np.int64),
    }


def model_cfg(path: str, args: argparse.Namespace, **kw: Any) -> ModelConfig:
    on_gpu = args.device == "cuda"
    return ModelConfig(
        name_or_path=path,
        lora=LoraConfig(r=8, alpha=16, target_modules=TARGETS),
        dtype="bfloat16" if on_gpu else "float32",
        quantize="4bit" if on_gpu else "none",
        **kw,
    )


def plain_rate(trainer: Trainer, data: dict, bs: int, steps: int, warm: int, dev: str) -> float:
    """Seconds for `steps` optimizer steps of Trainer.fit (after `warm` steps)."""
    n = bs * (steps + warm)
    part = {k: v[:n] for k, v in data.items()}
    trainer.fit(part, seed=0, recipe=Recipe(1, bs, 1e-4, 0.0, max_steps=warm))
    _sync(dev)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    trainer.fit(part, seed=1, recipe=Recipe(1, bs, 1e-4, 0.0, max_steps=steps))
    _sync(dev)
    return time.perf_counter() - t


def dp_rate(trainer: Trainer, data: dict, bs: int, steps: int, warm: int, dev: str) -> float:
    """Seconds for `steps` DP-SGD steps (opacus GradSampleModule + DPOptimizer around AdamW)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model = GradSampleModule(trainer.model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = DPOptimizer(
        torch.optim.AdamW(params, lr=1e-4),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=bs,
    )
    ids = torch.as_tensor(data["input_ids"], device=dev)
    mask = torch.as_tensor(data["attention_mask"], device=dev)
    g = torch.Generator().manual_seed(0)
    model.train()

    def step() -> None:
        idx = torch.randint(0, len(ids), (bs,), generator=g).to(dev)
        with trainer.autocast():
            loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=ids[idx]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(warm):
        step()
    _sync(dev)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    elapsed = time.perf_counter() - t
    model._close()
    return elapsed


def throughput(path: str, args: argparse.Namespace, vocab: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    data = _batch(rng, max(args.batch_sizes) * (args.steps + args.warm), args.length, vocab)
    for mode, gc in (("plain", False), ("plain", True), ("dp_sgd", False)):
        for bs in args.batch_sizes:
            row: dict[str, Any] = {"mode": mode, "gradient_checkpointing": gc, "batch_size": bs}
            try:
                cfg = model_cfg(path, args, gradient_checkpointing=gc)
                trainer = Trainer(cfg, "causal_lm", None, 0, device=args.device)
                run = dp_rate if mode == "dp_sgd" else plain_rate
                secs = run(trainer, data, bs, args.steps, args.warm, args.device)
                row.update(
                    samples_per_s=round(bs * args.steps / secs, 2),
                    tokens_per_s=round(bs * args.length * args.steps / secs, 1),
                    step_ms=round(1000 * secs / args.steps, 2),
                    peak_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1)
                    if args.device == "cuda"
                    else None,
                    quantize=cfg.quantize,
                    dtype=cfg.dtype,
                )
                del trainer
            except Exception as exc:  # recorded; the other rows still run
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                row["trace"] = traceback.format_exc()[-1500:]
            if args.device == "cuda":
                torch.cuda.empty_cache()
            print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
            rows.append(row)
    return rows


# -- sharing: client processes on one base ----------------------------------------------------
def _client(
    rank: int, how: str, path: str, base: Any, device: str, length: int, q: Any, done: Any
) -> None:
    """A client process: a LoRA model on the shared (IPC) base or on its own, one training
    step, then report and wait until the parent has measured."""
    try:
        if how == "context":
            if device == "cuda":
                torch.zeros(1, device="cuda")
            q.put({"rank": rank, "ok": True})
        else:
            cfg = ModelConfig(
                name_or_path=path,
                lora=LoraConfig(r=8, alpha=16, target_modules=TARGETS),
                dtype="bfloat16" if device == "cuda" else "float32",
            )
            trainer = Trainer(cfg, "causal_lm", None, 0, device, base=base)
            on_base = sum(
                shared.is_shared(p, base) for p in trainer.model.parameters() if base is not None
            )
            data = _batch(np.random.default_rng(rank), 4, length, 300)
            t = time.perf_counter()
            trainer.fit(data, seed=rank, recipe=Recipe(1, 4, 1e-4, 0.0, max_steps=1))
            _sync(device)
            own = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else None
            q.put(
                {
                    "rank": rank,
                    "ok": True,
                    "params_on_shared_base": int(on_base),
                    "own_allocated_mib": own,
                    "step_s": time.perf_counter() - t,
                }
            )
    except Exception as exc:
        q.put({"rank": rank, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
    done.wait(600)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _mib(base: Any) -> float:
    return round(sum(t.numel() * t.element_size() for t in base.frozen.values()) / 2**20, 1)


def sharing(path: str, args: argparse.Namespace) -> list[dict]:
    """Device (CPU: the clients' PSS) memory with one client and with `max_clients`, per mode:
    `context` (clients that only start CUDA), `shared` (this process holds the base, the
    clients open it by IPC), `own` (each client loads its own base)."""
    ctx = mp.get_context("spawn")
    rows = []
    base = None
    for how in ("context", "shared", "own"):
        if how == "shared":  # this process loads the base once and owns the device copy
            cfg = ModelConfig(
                name_or_path=path,
                lora=LoraConfig(r=8, alpha=16, target_modules=TARGETS),
                dtype="bfloat16" if args.device == "cuda" else "float32",
            )
            owner = Trainer(cfg, "causal_lm", None, 0, "cpu")
            base = shared.on_device(owner.export_base(), args.device)
            if args.device == "cpu":
                for t in base.frozen.values():
                    t.share_memory_()  # what torch.multiprocessing does for CPU tensors
            del owner
        before = _device_used_mib()
        q, done = ctx.Queue(), ctx.Event()
        procs, reports, used = [], [], []
        try:
            # one client, then the others at once: (used(k) - used(1)) / (k - 1) per client
            for wave in ([1], list(range(2, args.max_clients + 1))):
                for k in wave:
                    p = ctx.Process(
                        target=_client,
                        args=(
                            k,
                            how,
                            path,
                            base if how == "shared" else None,
                            args.device,
                            args.length,
                            q,
                            done,
                        ),
                    )
                    p.start()
                    procs.append(p)
                reports += [q.get(timeout=600) for _ in wave]
                time.sleep(1.0)
                if args.device == "cuda":
                    used.append(_device_used_mib())
                else:  # CPU: the clients' summed PSS (shared pages split among mappers)
                    used.append(sum(_rss_mib(p.pid) for p in procs))
        finally:
            done.set()
            for p in procs:
                p.join(60)
        extra = args.max_clients - 1
        per_extra = (used[-1] - used[0]) / extra if extra > 0 else None
        rows.append(
            {
                "mode": how,
                "base_mib": None if base is None or how != "shared" else _mib(base),
                "device_used_before_mib": before,
                "used_mib_1_and_all_clients": [round(u, 1) for u in used],
                "per_extra_client_mib": None if per_extra is None else round(per_extra, 1),
                "clients": reports,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        if how == "shared":
            base = None
            if args.device == "cuda":
                torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="a tiny model (CPU check)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/fedray-qlora"))
    ap.add_argument("--out", type=Path, default=Path("qlora.json"))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--length", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--max-clients", type=int, default=4)
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "sharing"])
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device; use --device cpu --tiny")
    size = "tiny" if args.tiny else "1b"
    args.batch_sizes = args.batch_sizes or ([2] if args.tiny else [4, 16])
    args.length = args.length or (32 if args.tiny else 256)
    args.steps = args.steps or (3 if args.tiny else 10)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"meta": _meta(args, size)}
    path = args.dir / f"llama-{size}"
    if not (path / "config.json").is_file():
        t = time.perf_counter()
        save_llama(path, size, device=args.device, dtype="bfloat16" if not args.tiny else "float32")
        out["build_s"] = round(time.perf_counter() - t, 1)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    out["meta"]["parameters"] = _parameters(config)
    if "throughput" not in args.skip:
        out["throughput"] = throughput(str(path), args, config.vocab_size)
    if "sharing" not in args.skip:
        out["sharing"] = sharing(str(path), args)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} in {out['total_s']} s")


def _parameters(config: Any) -> int:
    h, i, n, v = (
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        config.vocab_size,
    )
    return int(n * (4 * h * h + 3 * h * i + 2 * h) + 2 * v * h + h)


def _meta(args: argparse.Namespace, size: str) -> dict[str, Any]:
    versions = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "opacus"):
        try:
            versions[name] = __import__(name).__version__
        except Exception as exc:
            versions[name] = f"missing ({type(exc).__name__})"
    return {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "size": size,
        "versions": versions,
        "length": args.length,
        "steps": args.steps,
        "pid": os.getpid(),
    }


if __name__ == "__main__":
    main()
