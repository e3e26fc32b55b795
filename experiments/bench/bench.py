"""fedray vs the plain single-process loop on a workload of shared/bench/WORKLOAD.md.

Runs both, one after the other, in one invocation; samples each process tree's memory (RSS
summed every 0.25 s, which counts shared library pages once per process; PSS summed, which splits
each shared page among the processes mapping it, at most every 2 s near the RSS peak: see
`measure`); checks that both computed the workload (data fingerprint and per-round accuracies);
prints times and ratios. Exit status 1 if either run did not reproduce the workload.

Usage: python experiments/bench/bench.py w1 [--repeat N] [-- extra fedray overrides]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

import psutil

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from workloads import WORKLOADS, Workload  # noqa: E402


def _name(p: psutil.Process) -> str:
    """A short label for a process: the script or Ray role it runs."""
    cmd = p.cmdline()
    for part in cmd:
        if "::" in part or part.startswith("ray::"):
            return part.split()[0]
    for part in reversed(cmd):
        if part.endswith(".py") or "/" in part:
            return Path(part.split()[0]).name
    return p.name()


def _rss_pss_kb(pid: int) -> tuple[int, int]:
    """RSS and PSS in kB from /proc/PID/smaps_rollup.

    Costly: the kernel walks the process's page tables under its mmap lock (about 40 ms for a
    1 GB torch process here), which also stalls the process's own page faults. Sampled sparsely.
    """
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                fields[key] = int(rest.split()[0])
    return fields["Rss"], fields["Pss"]


_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _rss_kb(pid: int) -> int:
    """RSS in kB from /proc/PID/statm: a counter read, no page-table walk."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE_KB


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    with suppress(psutil.Error):
        return [proc, *proc.children(recursive=True)]
    return []


def _tree_rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        with suppress(OSError):
            total += _rss_kb(p.pid)
    return total / 1024


def _tree_memory(procs: list[psutil.Process]) -> tuple[float, float, dict[str, float]]:
    """(summed RSS MB, summed PSS MB, PSS MB by process label) of `procs` (see `_tree`)."""
    rss = pss = 0
    by_name: dict[str, float] = {}
    for p in procs:
        with suppress(psutil.Error, OSError):
            r, s = _rss_pss_kb(p.pid)
            rss += r
            pss += s
            name = _name(p)
            by_name[name] = by_name.get(name, 0.0) + s / 1024
    return rss / 1024, pss / 1024, by_name


# Summed RSS every 0.25 s from statm (cheap). PSS (smaps_rollup, costly) only when the summed RSS
# is within PSS_NEAR of its peak so far, at most every PSS_EVERY_S: PSS <= RSS, and the PSS peak
# sits in the RSS plateau. The first version read smaps_rollup of every process every 0.25 s,
# which slowed the measured W1 rounds by about 20% (plain loop: 24.0 s sampled, 20.3 s not).
RSS_EVERY_S, PSS_EVERY_S, PSS_NEAR = 0.25, 2.0, 0.9


def measure(cmd: list[str]) -> tuple[dict, float, float]:
    """Run `cmd`; (its JSON output with memory figures added, wall seconds, peak RSS MB)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([*cmd[:3], out.name, *cmd[3:]], stdout=subprocess.DEVNULL)
        ps, peak, done = psutil.Process(proc.pid), 0.0, threading.Event()
        peak_pss, breakdown, pss_reads = 0.0, {}, 0

        def sample() -> None:
            nonlocal peak, peak_pss, breakdown, pss_reads
            procs, listed, last_pss = _tree(ps), time.monotonic(), 0.0
            while not done.is_set():
                now = time.monotonic()
                if now - listed > 1.0:  # new processes (Ray workers) appear in the first seconds
                    procs, listed = _tree(ps), now
                rss = _tree_rss_mb(procs)
                peak = max(peak, rss)
                if rss >= PSS_NEAR * peak and now - last_pss >= PSS_EVERY_S:
                    procs, listed = _tree(ps), now  # a fresh list for the full read
                    _, pss, by_name = _tree_memory(procs)
                    last_pss, pss_reads = time.monotonic(), pss_reads + 1
                    if pss > peak_pss:
                        peak_pss, breakdown = pss, by_name
                done.wait(RSS_EVERY_S)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        code = proc.wait()
        wall = time.perf_counter() - start
        done.set()
        thread.join()
        if code != 0:
            raise SystemExit(f"{cmd[1]} exited with {code}")
        res = json.loads(Path(out.name).read_text())
        res["peak_pss_tree_mb"] = peak_pss
        res["pss_at_peak_mb"] = {k: round(v, 1) for k, v in sorted(breakdown.items())}
        res["pss_samples"] = pss_reads
        return res, wall, peak


def check(label: str, res: dict, w: Workload) -> list[str]:
    """Differences from the workload's reference figures."""
    problems = []
    if res["fingerprint"] != w.fingerprint:
        problems.append(f"{label}: fingerprint {res['fingerprint']} != {w.fingerprint}")
    accs = tuple(round(r["eval_accuracy"], 4) for r in res["rounds"] if "eval_accuracy" in r)
    if accs != w.accuracies:
        problems.append(f"{label}: accuracies {accs} != reference {w.accuracies}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=sorted(WORKLOADS))
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two runs N times")
    ap.add_argument("overrides", nargs="*", help="extra fedray overrides (after --)")
    args = ap.parse_args()
    w = WORKLOADS[args.workload]
    py = sys.executable
    runs: dict[str, list[tuple[dict, float, float]]] = {"plain": [], "fedray": []}
    for _ in range(args.repeat):
        runs["plain"].append(measure([py, str(HERE / "plain_loop.py"), w.name]))
        runs["fedray"].append(
            measure([py, str(HERE / "fedray_runner.py"), w.name, *args.overrides])
        )
    problems: list[str] = []
    summary = {}
    for label, results in runs.items():
        for res, _, _ in results:
            problems += check(label, res, w)
        # round 10 of W2 includes the only evaluation; WORKLOAD.md takes the median anyway
        rounds = [r["round_s"] for res, _, _ in results for r in res["rounds"]]
        summary[label] = {
            "median_round_s": statistics.median(rounds),
            "total_wall_s": statistics.median(wall for _, wall, _ in results),
            "peak_rss_tree_mb": max(peak for _, _, peak in results),
            "peak_pss_tree_mb": max(res["peak_pss_tree_mb"] for res, _, _ in results),
            "pss_at_peak_mb": results[-1][0]["pss_at_peak_mb"],
            "final_accuracy": results[-1][0]["rounds"][-1].get("eval_accuracy"),
        }
    p, f = summary["plain"], summary["fedray"]
    print(f"workload {w.name}: {args.repeat} run(s) each, side by side")
    print(f"{'':>18}{'plain loop':>14}{'fedray':>14}{'ratio':>10}")
    for key in ("median_round_s", "total_wall_s", "peak_rss_tree_mb", "peak_pss_tree_mb"):
        print(f"{key:>18}{p[key]:>14.2f}{f[key]:>14.2f}{f[key] / p[key]:>10.3f}")
    print(f"{'final_accuracy':>18}{p['final_accuracy']:>14.4f}{f['final_accuracy']:>14.4f}")
    print(json.dumps({"workload": w.name, "plain": p, "fedray": f}))
    if problems:
        print("NOT THE SAME COMPUTATION:\n  " + "\n  ".join(problems))
        raise SystemExit(1)
    print(f"same computation: fingerprint {w.fingerprint}, accuracies {list(w.accuracies)}")


if __name__ == "__main__":
    main()
