"""Aggregation throughput: fedray's aggregators vs one numpy reduction of the same data.

100 client updates of 10M float32 parameters each (4 GB in all), held as separate arrays as they
arrive from clients. The reference is the memory-bandwidth limit: one numpy reduction that reads
every update once (an unweighted `np.add.reduce` over the stacked updates, and the weighted one
`w @ stacked`). FedAvg splits its weighted sum over the usable CPUs (at most 8); the same sum on
one thread is timed too. Each figure is the median of `--repeat` timings, side by side in one run.

Usage: python experiments/bench/aggregation.py [--clients 100] [--params 10000000] [--repeat 3]
       [--robust] (also time median, trimmed_mean, krum; slow: they sort or compare all pairs)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from fedray.core import registry
from fedray.core.statemath import weighted_sum
from fedray.core.types import Contribution


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--keys", type=int, default=1, help="split the parameters over N tensors")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--robust", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    sizes = [args.params // args.keys] * args.keys
    sizes[-1] += args.params - sum(sizes)
    glob = {f"p{i}": np.zeros(n, np.float32) for i, n in enumerate(sizes)}
    contribs = [
        Contribution(
            client_id=c,
            delta={k: rng.standard_normal(v.size, dtype=np.float32) for k, v in glob.items()},
            num_samples=int(rng.integers(1, 9)),
        )
        for c in range(args.clients)
    ]
    n = np.array([c.num_samples for c in contribs], dtype=np.float32)
    w = n / n.sum()
    stacked = {k: np.stack([c.delta[k] for c in contribs]) for k in glob}  # baseline's layout
    gb = args.clients * args.params * 4 / 1e9

    rows: dict[str, float] = {
        "numpy add.reduce (stacked)": timed(
            lambda: [np.add.reduce(s, axis=0) for s in stacked.values()], args.repeat
        ),
        "numpy w @ stacked": timed(lambda: [w @ s for s in stacked.values()], args.repeat),
    }
    rows["fedray fedavg sum, 1 thread"] = timed(
        lambda: weighted_sum([c.delta for c in contribs], list(w), threads=1), args.repeat
    )
    names = ["fedavg"] + (["median", "trimmed_mean", "krum"] if args.robust else [])
    for name in names:
        strategy = registry.build("algorithm", {"name": name})
        rows[f"fedray {name}"] = timed(lambda s=strategy: s.aggregate(glob, contribs), args.repeat)

    ref = rows["numpy add.reduce (stacked)"]
    print(f"{args.clients} updates x {args.params:,} float32 ({gb:.1f} GB), {args.keys} keys")
    print(f"{'':<28}{'seconds':>10}{'GB/s':>8}{'vs add.reduce':>15}")
    for label, secs in rows.items():
        print(f"{label:<28}{secs:>10.3f}{gb / secs:>8.1f}{secs / ref:>15.2f}")
    print(json.dumps({"clients": args.clients, "params": args.params, "seconds": rows}))


if __name__ == "__main__":
    main()
