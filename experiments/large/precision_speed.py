"""Client speed of a float32 vs a bfloat16 base, side by side: the main job's model and data.

Builds the main job's client model (MiniLM + LoRA on query/key/value/dense of layers 3-5, head
and pooler trained) twice in one process, with `model.dtype=float32` and `bfloat16` (the base
stored in bf16, autocast on CPU), and alternates them `--repeat` times on the same clients:
local training (the main job's recipe: batch 16, 2 steps) of `--clients` clients, then an
evaluation pass over the test set. Prints seconds per client and per evaluation for each, and
the ratios; both take turns, so a change in the machine's load hits both alike.

Usage: python experiments/large/precision_speed.py [--repeat 3] [--clients 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from fedray.app.cli import compose
    from fedray.app.run import prepare
    from fedray.app.spec import build_spec
    from fedray.client.trainer import Recipe, Trainer

    spec = build_spec(compose(["tracking=none"]))
    spec, data, encoded = prepare(spec)
    recipe = Recipe.from_config(spec.client)
    trainers = {}
    for dtype in ("float32", "bfloat16"):
        spec.model.dtype = dtype
        trainers[dtype] = Trainer(
            spec.model, spec.data.task, data.corpus.num_labels(), spec.seed, threads=args.threads
        )
    start = {k: t.get_state() for k, t in trainers.items()}
    times: dict[str, dict[str, list[float]]] = {k: {"client": [], "eval": []} for k in trainers}
    accuracy = {}
    for rep in range(args.repeat):
        for dtype, trainer in trainers.items():
            for cid in range(args.clients):
                trainer.set_state(start[dtype])
                t = time.perf_counter()
                trainer.fit(encoded.client_batch(cid), seed=rep * 1000 + cid, recipe=recipe)
                times[dtype]["client"].append(time.perf_counter() - t)
            t = time.perf_counter()
            accuracy[dtype] = trainer.evaluate(encoded.test, spec.client.eval_batch_size)
            times[dtype]["eval"].append(time.perf_counter() - t)
            print(
                f"repeat {rep}: {dtype:>9} client {statistics.median(times[dtype]['client']):.3f}"
                f" s, eval {times[dtype]['eval'][-1]:.2f} s",
                flush=True,
            )
    out = {
        dtype: {
            "median_client_s": statistics.median(t["client"]),
            "median_eval_s": statistics.median(t["eval"]),
            "last_client_model_eval": accuracy[dtype],
        }
        for dtype, t in times.items()
    }
    out["ratio_bf16_over_fp32"] = {
        "client": out["bfloat16"]["median_client_s"] / out["float32"]["median_client_s"],
        "eval": out["bfloat16"]["median_eval_s"] / out["float32"]["median_eval_s"],
    }
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
