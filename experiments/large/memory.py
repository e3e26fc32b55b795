"""Memory per client actor with and without the shared frozen base, in one invocation.

For a LLaMA-style causal LM of 322M parameters (1.29 GB in float32, built from a config and
loaded by path) and a tiny one of the same shape family (its figures give the fixed cost of an
actor process: Python, torch, the Ray worker), in float32 and bfloat16, with
`model.shared_base` true and false, with 1, 2 and 4 client actors: each configuration is a real
fedray run in its own process tree with its own local Ray: in round 1 every actor trains one
client one step; round 2 holds every actor in a 20 s delay before training, during which the
PSS of every process of the tree is summed (from /proc/PID/smaps_rollup; PSS splits each
shared page among the processes mapping it, so the sum counts every page once).

Per configuration the cost of an extra actor is (PSS(4 actors) - PSS(1 actor)) / 3; the tiny
model's gives the process cost, and (big - tiny) / base size is the share of the base each
extra actor adds. Target (issue 17): at most 10% with the shared base.

Usage: python experiments/large/memory.py [--out DIR] [--actors 1 2 4] [--dtypes float32
       bfloat16] [--models DIR]   (writes DIR/memory.json and prints a markdown table)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "bench"))
from bench import _tree, _tree_memory  # noqa: E402  (the benchmark's PSS sampler)


def tree_pss_mb() -> tuple[float, dict[str, float]]:
    """Summed PSS of this process and all its descendants, and PSS by process label."""
    _, pss, by_name = _tree_memory(_tree(psutil.Process()))
    by_name = {("runner" if '"' in k else k): v for k, v in by_name.items()}
    return pss, by_name


def child(args: dict) -> None:
    """One configuration: a one-round fedray run; prints one JSON line with the PSS figures."""
    import ray

    from fedray.app.cli import compose
    from fedray.app.cluster import ray_session
    from fedray.app.run import prepare
    from fedray.core.events import Ready, RoundEnd
    from fedray.server.driver import start

    n = args["actors"]
    overrides = [
        "data=shakespeare_lm",
        "partition=iid",
        "partition.num_clients=8",
        "partition.max_samples_per_client=4",
        "data.max_test=8",
        "data.max_length=32",
        "model=hf_lora",
        f"model.name_or_path={args['model']}",
        "model.lora.target_modules=[q_proj,v_proj]",
        f"model.dtype={args['dtype']}",
        f"model.shared_base={str(args['shared']).lower()}",
        f"client.num_actors={n}",
        f"client.num_cpus={2 / n:g}",
        "client.batch_size=2",
        "client.max_steps=1",
        "client.seed_scheme=hash",
        # Round 2 holds every actor (alive, model loaded, one step trained) in a 20 s delay
        # before training: the PSS is read then, after round 1.
        "mode.rounds=2",
        f"mode.clients_per_round={n}",
        "faults.delay_s=20",
        "faults.schedule=[" + ",".join(f"2:{c}:delay" for c in range(8)) + "]",
        "tracking=none",
        "cluster.num_cpus=2",
    ]
    spec, data, encoded = prepare(compose(overrides))
    out: dict = {**args}
    t0 = time.perf_counter()
    with ray_session(spec.cluster):
        driver = start(spec, ray.put(encoded), data.client_sizes().tolist(), None)
        for ref in driver.run.remote():
            event = ray.get(ref)
            if isinstance(event, Ready):
                out["ready_s"] = time.perf_counter() - t0
                out["bases"] = sorted({a["base"] for a in event.actors})
                out["pss_ready_mb"], _ = tree_pss_mb()
            elif isinstance(event, RoundEnd) and event.round == 1:
                out["round_s"] = event.metrics["round_s"]
                out["pss_mb"], out["pss_by_process_mb"] = tree_pss_mb()
    print(json.dumps(out), flush=True)


def run_config(args: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "local"}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"configuration {args} failed ({proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def table(results: list[dict], sizes: dict[str, dict[str, float]]) -> str:
    """Markdown: PSS by actor count, per-extra-actor cost, net of process cost, % of base."""
    counts = sorted({r["actors"] for r in results})
    key = {(r["size"], r["dtype"], r["shared"], r["actors"]): r["pss_mb"] for r in results}
    lines = [
        "| base | dtype | shared | "
        + " | ".join(f"PSS {n} actor{'s' if n > 1 else ''} (MB)" for n in counts)
        + " | per extra actor (MB) | net of process cost (MB) | % of base |",
        "|---|---|---|" + "---:|" * (len(counts) + 3),
    ]
    lo, hi = counts[0], counts[-1]
    for size, dtype, shared in sorted({(r["size"], r["dtype"], r["shared"]) for r in results}):
        if size == "tiny":
            continue
        pss = [key.get((size, dtype, shared, n)) for n in counts]
        per = (key[(size, dtype, shared, hi)] - key[(size, dtype, shared, lo)]) / (hi - lo)
        tiny = (key[("tiny", dtype, shared, hi)] - key[("tiny", dtype, shared, lo)]) / (hi - lo)
        base_mb = sizes[size][dtype]
        lines.append(
            f"| {size} ({base_mb:.0f} MB) | {dtype} | {shared} | "
            + " | ".join(f"{v:,.0f}" for v in pss)
            + f" | {per:,.0f} | {per - tiny:,.0f} | {100 * (per - tiny) / base_mb:.1f}% |"
        )
    for dtype in sorted({r["dtype"] for r in results}):
        for shared in (True, False):
            if ("tiny", dtype, shared, hi) in key:
                tiny = (key[("tiny", dtype, shared, hi)] - key[("tiny", dtype, shared, lo)]) / (
                    hi - lo
                )
                lines.append(
                    f"| tiny (process cost) | {dtype} | {shared} | "
                    + " | ".join(f"{key.get(('tiny', dtype, shared, n), 0):,.0f}" for n in counts)
                    + f" | {tiny:,.0f} | - | - |"
                )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--models", type=Path, default=Path("/tmp/fedray-large"))
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--sizes", nargs="+", default=["300m", "tiny"])
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    from fedray.models import save_llama

    paths = {}
    for size in args.sizes:
        path = args.models / f"llama-{size}"
        if not (path / "config.json").is_file():
            save_llama(path, size)
        paths[size] = path
    sizes = {}
    for size, path in paths.items():
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), "np") as f:
            n = sum(_numel(f, k) for k in f.keys())  # noqa: SIM118 (safe_open is no dict)
        sizes[size] = {"float32": 4 * n / 1e6, "bfloat16": 2 * n / 1e6, "float16": 2 * n / 1e6}
    results = []
    args.out.mkdir(parents=True, exist_ok=True)
    for dtype in args.dtypes:
        for shared in (True, False):
            for size, path in paths.items():
                for n in args.actors:
                    cfg = {"size": size, "model": str(path), "dtype": dtype, "shared": shared}
                    res = run_config({**cfg, "actors": n})
                    print(
                        f"{size:>5} {dtype:>9} shared={shared!s:5} actors={n}: "
                        f"PSS {res['pss_mb']:8.1f} MB (ready {res['pss_ready_mb']:8.1f}), "
                        f"bases {res['bases']}",
                        flush=True,
                    )
                    results.append(res)
                    (args.out / "memory.json").write_text(
                        json.dumps({"sizes_mb": sizes, "results": results}, indent=1)
                    )
    print(table(results, sizes))


def _numel(f: object, key: str) -> int:
    shape = f.get_slice(key).get_shape()  # type: ignore[attr-defined]
    out = 1
    for d in shape:
        out *= int(d)
    return out


if __name__ == "__main__":
    main()
