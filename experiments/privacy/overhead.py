"""Cost of the sum-only privacy mechanisms: round time and bytes up against `privacy=none`.

Usage: python experiments/privacy/overhead.py OUT_DIR [--rounds N] [--clients 10 50]
       [extra Hydra overrides for every run...]

The W2 workload's natural partition (1,222 Shakespeare speakers, <= 8 speeches each, one local
step per client) with MiniLM + LoRA on query/value (76,038 trainable values), side by side in one
invocation, for each cohort size: privacy=none, secagg, ddp and he; at 50 clients also secagg
with 30% of the clients dropping after masking. Every run has the same seed, clients, actors
and rounds; the last round (which also evaluates) is left out of the round-time median.

Writes OUT_DIR/results.md (the table) and OUT_DIR/results.json (every round's metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedray.app.cli import compose
from fedray.app.run import run_experiment
from fedray.privacy.lib.bitpack import packed_size

os.environ.setdefault("RAY_ADDRESS", "local")  # a fresh local Ray, even beside others' on a box
COMMON = ["experiment=w2", "tracking=none", "data.max_test=64"]  # evaluation is not measured
MECHANISMS = {
    "none": ["privacy=none"],
    "secagg": ["privacy=secagg"],
    "secagg-drop30": ["privacy=secagg", "privacy.dropout=0.3"],
    "ddp": ["privacy=ddp"],
    "he": ["privacy=he"],
}


def configs(clients: list[int]) -> list[tuple[str, int, list[str]]]:
    """(name, clients per round, overrides) in the order they run."""
    out = []
    for n in clients:
        for name, overrides in MECHANISMS.items():
            if name == "secagg-drop30" and n < 50:
                continue
            out.append((name, n, overrides))
    return out


def summarize(name: str, n: int, history: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Median round time (evaluation round excluded) and bytes per client of one run."""
    train_rounds = [r for r in history if "eval_accuracy" not in r] or history
    ok = [r["clients_ok"] for r in history]
    per_client = statistics.mean(r["bytes_up"] / r["clients_ok"] for r in history)
    protocol = statistics.mean(r.get("privacy_bytes_up", 0.0) / r["clients_ok"] for r in history)
    row = {
        "name": name,
        "clients": n,
        "median_round_s": statistics.median(r["round_s"] for r in train_rounds),
        "rounds_s": [r["round_s"] for r in history],
        "clients_ok": ok,
        "clients_summed": [r.get("privacy_clients_summed", r["clients_ok"]) for r in history],
        "payload_up_per_client": per_client,
        "protocol_up_per_client": protocol,
        "wall_s": wall_s,
        "history": history,
    }
    last = history[-1]
    for key in ("privacy_ring_bits", "he_expansion", "epsilon", "privacy_padded_dim"):
        if key in last:
            row[key] = last[key]
    for key in ("privacy_setup_s", "privacy_unmask_s", "he_add_s", "he_decrypt_s"):
        if key in last:
            row[key] = statistics.median(r[key] for r in history)
    return row


def ratios(rows: list[dict[str, Any]]) -> None:
    """Add time and byte ratios against `none` at the same cohort size."""
    plain = {r["clients"]: r for r in rows if r["name"] == "none"}
    for r in rows:
        base = plain.get(r["clients"])
        if base is None:
            continue
        dim = round(base["payload_up_per_client"] / 4)  # float32 values of the update
        r["dim"] = dim
        r["time_ratio"] = r["median_round_s"] / base["median_round_s"]
        up = r["payload_up_per_client"] + r["protocol_up_per_client"]
        r["up_per_client"] = up
        r["up_ratio_fp32"] = up / base["payload_up_per_client"]
        if r["name"].startswith("secagg"):
            fixed = packed_size(dim + 1, int(r["privacy_ring_bits"]))  # unmasked, same ring
            r["plain_fixed_point_bytes"] = fixed
            r["up_ratio_fixed_point"] = up / fixed


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Privacy overhead ({meta['date']}, {meta['rounds']} rounds, load {meta['load']})",
        "",
        "| mechanism | clients | median round s | x none | up/client kB | x fp32 | "
        "x fixed point | in sum | server s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        server = r.get("privacy_setup_s", 0.0) + r.get("privacy_unmask_s", 0.0)
        server += r.get("he_add_s", 0.0) + r.get("he_decrypt_s", 0.0)
        fixed = f"{r['up_ratio_fixed_point']:.3f}" if "up_ratio_fixed_point" in r else "-"
        lines.append(
            f"| {r['name']} | {r['clients']} | {r['median_round_s']:.2f} | "
            f"{r.get('time_ratio', float('nan')):.3f} | {r.get('up_per_client', 0) / 1e3:.1f} | "
            f"{r.get('up_ratio_fp32', float('nan')):.3f} | {fixed} | "
            f"{statistics.mean(r['clients_summed']):.0f} | {server:.2f} |"
        )
    lines += ["", f"Extra overrides: `{' '.join(meta['extra']) or 'none'}`; host {meta['host']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    args, extra = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rounds": args.rounds,
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "extra": extra,
        "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
    }
    rows: list[dict[str, Any]] = []
    for name, n, overrides in configs(args.clients):
        cfg = compose(
            [
                *COMMON,
                *overrides,
                f"mode.clients_per_round={n}",
                f"mode.rounds={args.rounds}",
                f"mode.eval_every={args.rounds}",
                *extra,
            ]
        )
        t0 = time.perf_counter()
        result = run_experiment(cfg, args.out / f"{name}-{n}", cwd=args.out, out=None)
        rows.append(summarize(name, n, result.history, time.perf_counter() - t0))
        ratios(rows)
        meta["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
        (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        table = render(rows, meta)
        (args.out / "results.md").write_text(table)
        print(table, flush=True)


if __name__ == "__main__":
    main()
