"""Peak memory and time per step of DP-SGD with per-sample gradient hooks vs ghost clipping.

Usage: python experiments/privacy/ghost_clipping.py [--batch 32] [--length 128] [--steps 4]
       [--threads 1] [--device cpu] [Hydra overrides of the model, e.g. model.lora.r=16]

One client's `privacy=dp_sgd` fit of the real trainer on the `model=minilm_lora` preset (MiniLM,
LoRA r=8 on layers 3-5, the classifier and pooler trained in full) over synthetic two-class texts
of `--length` tokens, `--steps` Poisson steps of expected size `--batch`, once per
`privacy.grad_sample_mode`, each in its own child process (one at a time). Each child runs a
1-step warm-up fit, gives its freed heap back (`malloc_trim`), resets the peak (Linux
`clear_refs`; CUDA: the allocator's peak), then the measured fit with the same seed, hence the
same batches and noise. Reported per mode: the peak resident memory above the level before the
fit (CPU) or the peak allocated memory (CUDA), the seconds per step, and the largest difference
of the trained adapter from the hooks run (the two modes give the same update up to float
rounding). No Ray, no MLflow; about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np

WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with"]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One mode's fit, in this process."""
    import torch

    from fedray.app.cli import compose
    from fedray.app.spec import build_spec
    from fedray.client.trainer import Recipe, Trainer
    from fedray.models import encode, load_tokenizer
    from fedray.privacy.dp_sgd import DpSgd, DpSgdOptions

    spec = build_spec(compose(["tracking=none", "model=minilm_lora", *args.overrides]))
    trainer = Trainer(spec.model, "classification", 2, 0, args.device, args.threads)
    rng = np.random.default_rng(0)
    n = args.batch * args.steps  # one epoch = `steps` Poisson steps at rate 1 / steps
    texts = [" ".join(rng.choice(WORDS, size=2 * args.length)) for _ in range(n)]
    data = {
        **encode(load_tokenizer(spec.model), texts, args.length),
        "labels": (np.arange(n) % 2).astype(np.int64),
    }
    options = DpSgdOptions(grad_sample_mode=args.mode)
    start = trainer.get_state()
    lora = sum(p.numel() for p in trainer.params)

    def fit(steps: int) -> dict[str, float]:
        trainer.set_state(start)
        training = DpSgd(options).client_training(
            client_id=0, round=1, seed=1, state=None, session={}
        )
        with trainer.shaped(training):
            recipe = Recipe(1, args.batch, 1e-3, 0.0, max_steps=steps)
            return trainer.fit(data, seed=1, recipe=recipe)

    fit(1)  # warm-up: lazy allocations, thread pools
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give the warm-up's freed heap back first
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak resident set := current
        base = _status_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    out = fit(args.steps)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _status_kb("VmHWM") * 1024 - base
    trained = trainer.get_state()
    return {
        "mode": args.mode,
        "peak_mib": peak / 2**20,
        "s_per_step": (time.perf_counter() - t0) / out["steps"],
        "steps": out["steps"],
        "trainable": lora,
        "per_sample_grads_mib": args.batch * lora * 4 / 2**20,  # what hooks hold per batch
        "trained": {k: v.tolist() for k, v in trained.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", choices=("hooks", "ghost"), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.mode:  # a child: one mode
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args)))
        return
    rows = {}
    for mode in ("hooks", "ghost"):
        cmd = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
        rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    hooks = rows["hooks"]["trained"]
    print(
        f"MiniLM + LoRA (model=minilm_lora {' '.join(args.overrides)}), batch {args.batch} "
        f"(Poisson), {args.length} tokens, {args.steps} steps, {args.threads} thread(s), "
        f"{args.device}, {platform.processor() or platform.machine()}, "
        f"load {os.getloadavg()[0]:.1f}; {rows['hooks']['trainable']:,} trainable values "
        f"(per-sample gradients of a batch: {rows['hooks']['per_sample_grads_mib']:.0f} MiB)"
    )
    print("| mode | peak memory above the fit's start (MiB) | s / step | max |update - hooks| |")
    print("|---|---|---|---|")
    for mode, row in rows.items():
        diff = max(
            float(np.max(np.abs(np.asarray(row["trained"][k]) - np.asarray(hooks[k]))))
            for k in hooks
        )
        print(f"| {mode} | {row['peak_mib']:.0f} | {row['s_per_step']:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
