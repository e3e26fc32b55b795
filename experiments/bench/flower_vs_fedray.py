"""fedray vs Flower's Simulation Engine on a workload of shared/bench/WORKLOAD.md.

One invocation runs both, one after the other: fedray_runner.py in this (fedray's) environment
and flower/run_flower.py in the Flower environment made by flower/setup.sh. The workload's data
is exported once from fedray.data (flower/export_data.py) for the Flower app, which never imports
fedray. bench.py's `measure` samples each process tree's summed RSS (every 0.25 s) and PSS, and
its `check` verifies both reproduced the workload (fingerprint and per-round accuracies).
Prints median round, total wall, peak memory and final accuracy, with fedray / Flower ratios.
Exit status 1 if either run did not reproduce the workload.

Usage: python experiments/bench/flower_vs_fedray.py w1 [--repeat N] [--flower-python PATH]
           [--num-cpus 2] [--threads 2] [--rounds N] [--fedray OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from bench import check, measure  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

KEYS = ("median_round_s", "total_wall_s", "peak_rss_tree_mb", "peak_pss_tree_mb")


def export(workload: str, data_dir: Path) -> tuple[Path, float]:
    """The workload's exported .npz (written unless present), and seconds spent writing it."""
    path = data_dir / f"{workload}.npz"
    start = time.perf_counter()
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f"{workload}.tmp.npz"
        subprocess.run(
            [sys.executable, str(HERE / "flower" / "export_data.py"), workload, str(tmp)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tmp.rename(path)
    return path, time.perf_counter() - start


def summarize(results: list[tuple[dict, float, float]]) -> dict:
    """Median round and wall, peak memory and final accuracy over repeated runs."""
    rounds = [r["round_s"] for res, _, _ in results for r in res["rounds"]]
    return {
        "median_round_s": statistics.median(rounds),
        "total_wall_s": statistics.median(wall for _, wall, _ in results),
        "peak_rss_tree_mb": max(peak for _, _, peak in results),
        "peak_pss_tree_mb": max(res["peak_pss_tree_mb"] for res, _, _ in results),
        "pss_at_peak_mb": results[-1][0]["pss_at_peak_mb"],
        "round_s": [[round(r["round_s"], 2) for r in res["rounds"]] for res, _, _ in results],
        "final_accuracy": results[-1][0]["rounds"][-1].get("eval_accuracy"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=sorted(WORKLOADS))
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two runs N times")
    ap.add_argument("--flower-python", default="/work/flwr-venv/bin/python")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/fedray-flower-data"))
    ap.add_argument("--num-cpus", default="2", help="Flower: Ray CPUs per ClientApp")
    ap.add_argument("--threads", default="2", help="Flower: torch threads per ClientApp")
    ap.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="only the first N rounds (0: all); checks the reference accuracies of those rounds "
        "and that fedray and Flower agree on the data fingerprint of the cut schedule",
    )
    ap.add_argument(
        "--fedray",
        nargs="*",
        default=[],
        metavar="OVERRIDE",
        help="extra fedray overrides, e.g. client.num_cpus=1 (two 1-CPU actors on 2 cores)",
    )
    args = ap.parse_args()
    w = WORKLOADS[args.workload]
    data, export_s = export(w.name, args.data_dir)
    flower_cmd = [
        args.flower_python,
        str(HERE / "flower" / "run_flower.py"),
        w.name,  # measure() inserts the output path after this
        "--data",
        str(data),
        "--num-cpus",
        args.num_cpus,
        "--threads",
        args.threads,
        "--rounds",
        str(args.rounds),
    ]
    fedray_cmd = [sys.executable, str(HERE / "fedray_runner.py"), w.name, *args.fedray]
    if args.rounds:
        fedray_cmd.append(f"mode.rounds={args.rounds}")
    runs: dict[str, list[tuple[dict, float, float]]] = {"fedray": [], "flower": []}
    for _ in range(args.repeat):
        for label, cmd in (("fedray", fedray_cmd), ("flower", flower_cmd)):
            runs[label].append(measure(cmd))
            res, wall, peak = runs[label][-1]  # printed at once: a later failure keeps it
            print(json.dumps({label: res, "wall_s": wall, "peak_rss_tree_mb": peak}), flush=True)
    if args.rounds:  # the reference fingerprint hashes the whole schedule: compare the two
        accs = tuple(
            a for r, a in zip(w.eval_rounds, w.accuracies, strict=True) if r <= args.rounds
        )
        if args.rounds not in w.eval_rounds:  # both evaluate the last round: Flower must match
            accs += (round(runs["fedray"][0][0]["rounds"][-1]["eval_accuracy"], 4),)
        w = replace(w, fingerprint=runs["fedray"][0][0]["fingerprint"], accuracies=accs)
    problems = [p for label, rs in runs.items() for res, _, _ in rs for p in check(label, res, w)]
    for label in runs:
        losses = [round(r["train_loss"], 4) for r in runs[label][-1][0]["rounds"]]
        print(f"{label} training loss per round: {losses}")
    f, fl = summarize(runs["fedray"]), summarize(runs["flower"])
    print(f"workload {w.name}: {args.repeat} run(s) each, side by side")
    print(f"{'':>18}{'fedray':>14}{'Flower':>14}{'fedray/Flower':>15}")
    for key in KEYS:
        print(f"{key:>18}{f[key]:>14.2f}{fl[key]:>14.2f}{f[key] / fl[key]:>15.3f}")
    print(f"{'final_accuracy':>18}{f['final_accuracy']:>14.4f}{fl['final_accuracy']:>14.4f}")
    node_map = [res["node_map_s"] for res, _, _ in runs["flower"]]
    print(
        f"data export for Flower (not in its total wall): {export_s:.1f} s; "
        f"Flower's node-id query before round 1: {', '.join(f'{s:.1f}' for s in node_map)} s"
    )
    print(json.dumps({"workload": w.name, "fedray": f, "flower": fl, "export_s": export_s}))
    if problems:
        print("NOT THE SAME COMPUTATION:\n  " + "\n  ".join(problems))
        raise SystemExit(1)
    print(f"same computation: fingerprint {w.fingerprint}, accuracies {list(w.accuracies)}")


if __name__ == "__main__":
    main()
