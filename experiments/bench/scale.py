"""Scale: W2's natural partition for 20 rounds, and a registry of 10,000 clients.

Two fedray runs, one after the other, each in its own process tree sampled for memory:
  natural   W2 as WORKLOAD.md defines it (about 1,222 speaking roles, at most 8 speeches each,
            50 clients per round, one optimizer step each), for `--rounds` rounds;
  10k       the same, but 10,000 registered clients: client k holds the speeches of W2 client
            k mod 1,222 (the `replicated_natural` partitioner registered below), so every
            client's work has W2's distribution while the driver, the selector and the
            client registry handle 10,000 ids.
Per round, the dispatch overhead is the round's wall time minus the client compute time measured
inside the actors (one actor, so nothing overlaps), divided by the clients of the round; rounds
that evaluate are left out. The driver reports its own RSS after every round.

Usage: python experiments/bench/scale.py [--rounds 20] [--clients 10000] [--skip-natural]
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).parent


def child(out: str, overrides: list[str]) -> None:
    """Run fedray in this process (the measured tree) and write per-round figures to `out`."""
    import random
    from typing import Any

    import numpy as np

    from fedray.app.cli import compose
    from fedray.app.run import run_experiment
    from fedray.data.partition import register_partitioner
    from fedray.data.partitioners.natural import natural

    @register_partitioner("replicated_natural")
    def replicated_natural(
        pool: list[int],
        labels: np.ndarray | None,
        groups: list[str] | None,
        cfg: Any,
        rng: random.Random,
    ) -> list[list[int]]:
        base = natural(pool, labels, groups, cfg, rng)
        return [list(base[k % len(base)]) for k in range(int(cfg.num_clients))]

    cfg = compose(["experiment=w2", "tracking=none", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        result = run_experiment(cfg, tmp, cwd=tmp, out=None)
    keys = ("round", "round_s", "client_compute_s", "clients", "driver_rss_mb", "eval_accuracy")
    rounds = [{k: r[k] for k in keys if k in r} for r in result.history]
    Path(out).write_text(
        json.dumps(
            {
                "num_clients": result.ready.num_clients,
                "rounds": rounds,
                "total_wall_s": time.perf_counter() - T0,
            }
        )
    )


def summarize(label: str, res: dict, peak_rss: float, wall: float) -> dict:
    """Per-client dispatch overhead (median, max over non-eval rounds) and memory figures."""
    train_rounds = [r for r in res["rounds"] if "eval_accuracy" not in r]
    per_client = [
        1000 * (r["round_s"] - r["client_compute_s"]) / r["clients"] for r in train_rounds
    ]
    driver = [r["driver_rss_mb"] for r in res["rounds"]]
    return {
        "run": label,
        "registered_clients": res["num_clients"],
        "rounds": len(res["rounds"]),
        "median_round_s": statistics.median(r["round_s"] for r in train_rounds),
        "overhead_ms_per_client_median": statistics.median(per_client),
        "overhead_ms_per_client_max": max(per_client),
        "driver_rss_mb_first": driver[0],
        "driver_rss_mb_last": driver[-1],
        "peak_rss_tree_mb": peak_rss,
        "peak_pss_tree_mb": res["peak_pss_tree_mb"],
        "total_wall_s": wall,
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--skip-natural", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from bench import measure

    common = [f"mode.rounds={args.rounds}", f"mode.eval_every={args.rounds}"]
    runs = [] if args.skip_natural else [("natural", common)]
    runs.append(
        (
            f"{args.clients // 1000}k",
            [
                *common,
                "partition.name=replicated_natural",
                f"partition.num_clients={args.clients}",
                f"client.round_stride={max(10_000, args.clients)}",
            ],
        )
    )
    rows = []
    for label, overrides in runs:
        res, wall, peak = measure([sys.executable, __file__, "--child", *overrides])
        rows.append(summarize(label, res, peak, wall))
        print(json.dumps(rows[-1]), flush=True)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
