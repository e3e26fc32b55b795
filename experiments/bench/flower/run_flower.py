"""Runs a workload through Flower's Simulation Engine and writes fedray_runner.py's JSON format.

Runs in the Flower environment (setup.sh), never imports fedray. Data: the .npz written by
export_data.py. One supernode per workload client.

Usage: python experiments/bench/flower/run_flower.py w1 OUT.json --data w1.npz
           [--num-cpus 2] [--threads 2]
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # first line: imports, Ray start and shutdown count towards the total

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=["w1", "w2", "w3"])
    ap.add_argument("out")
    ap.add_argument("--data", required=True, help=".npz written by export_data.py")
    ap.add_argument("--num-cpus", type=float, default=2.0, help="Ray CPUs per ClientApp")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per ClientApp")
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs Ray may use in all")
    ap.add_argument("--rounds", type=int, default=0, help="first N rounds only (0: all)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))  # Ray workers get it via PYTHONPATH below
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p
    )
    import server_app
    import torch
    from client_app import app as client_app
    from flwr.simulation import run_simulation
    from task import Setup, fingerprint, load_data

    setup = Setup(args.workload, str(Path(args.data).resolve()), args.threads, args.rounds)
    setup.to_env()
    torch.set_num_threads(2)  # the ServerApp's evaluation, like plain_loop.py
    data = load_data(setup.data)
    n_clients = len(data["offsets"]) - 1
    run_simulation(
        server_app=server_app.app,
        client_app=client_app,
        num_supernodes=n_clients,
        backend_config={
            "client_resources": {"num_cpus": args.num_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": args.ray_cpus},
        },
    )
    if "rounds" not in server_app.RESULT:
        raise SystemExit("the ServerApp did not finish (see Flower's log above)")
    result = {
        "fingerprint": fingerprint(data, args.rounds),
        "exported_fingerprint": str(data["fingerprint"]),
        "rounds": server_app.RESULT["rounds"],
        "node_map_s": server_app.RESULT["node_map_s"],
        "setting": {
            "num_cpus": args.num_cpus,
            "threads": args.threads,
            "ray_cpus": args.ray_cpus,
            "rounds": args.rounds,
        },
        "total_wall_s": time.perf_counter() - T0,
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
