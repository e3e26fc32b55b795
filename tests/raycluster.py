"""A real multi-node Ray cluster on loopback for tests: `ray start` processes, token auth on.

Every node is a `ray start --block` process started in its own session (process group) with
its own ports, so several engineers' clusters can share one machine; :meth:`LocalCluster.stop`
ends exactly those process groups (SIGTERM, then SIGKILL), never `ray stop` (which would stop
every Ray on the machine). A node can run in a private mount namespace (`unshare -m`) that
holds a directory no other node sees: a silo's data that exists only on its node.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_server_installed() -> bool:
    """Whether Ray's job server (the `ray[default]` extra, fedray's `cluster` extra) is here."""
    try:
        import aiohttp_cors  # noqa: F401
        import opencensus  # noqa: F401
    except ImportError:
        return False
    return True


def can_unshare_mounts() -> bool:
    """Whether this process may create a private mount namespace with a tmpfs (root, Linux)."""
    if shutil.which("unshare") is None:
        return False
    probe = tempfile.mkdtemp(prefix="frns")
    try:
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "none", probe],
            capture_output=True,
            timeout=20,
        )
        return done.returncode == 0
    finally:
        os.rmdir(probe)


def _node_ports() -> list[str]:
    """Ports each node on this machine needs for itself (Ray's fixed defaults would collide)."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
    ]


@dataclass
class LocalCluster:
    """A head node (with the dashboard and its job server) plus worker nodes, all on 127.0.0.1."""

    head_cpus: int = 1
    env: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(16))

    def __post_init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="fr")  # short: unix socket paths are limited
        self.port, self.dashboard_port = free_port(), free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.starts: list[tuple] = []  # how each node was started (to restart it)

    @property
    def auth_env(self) -> dict[str, str]:
        """What a client of this cluster needs: token authentication and its token."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @property
    def node_env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            **self.env,
            **self.auth_env,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    @property
    def address(self) -> str:
        """The job server's address (what `fedray submit --address` takes)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], name: str, sandbox: tuple[Path, Path] | None) -> None:
        ray = str(Path(sys.executable).parent / "ray")
        cmd = [ray, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        cmd += [f"--temp-dir={self.temp_dir}", *_node_ports(), *args]
        if sandbox is not None:  # mount a private tmpfs, copy the staged files in, then start
            mount, staged = sandbox
            mount.mkdir(parents=True, exist_ok=True)
            script = (
                f"mount -t tmpfs none {shlex.quote(str(mount))} && "
                f"cp -r {shlex.quote(str(staged))}/. {shlex.quote(str(mount))}/ && "
                f"exec {shlex.join(cmd)}"
            )
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
        log = Path(self.temp_dir) / f"{name}.log"
        self.logs.append(log)
        self.starts.append((args, name, sandbox))
        with log.open("wb") as out:
            self.procs.append(
                subprocess.Popen(
                    cmd,
                    env=self.node_env,
                    cwd=self.temp_dir,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def start_head(self) -> None:
        self._start(
            [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                f"--num-cpus={self.head_cpus}",
                "--num-gpus=0",
            ],
            "head",
            None,
        )

    def add_worker(self, num_cpus: int, labels: dict[str, str] | None = None, sandbox=None) -> None:
        """A worker node; `sandbox=(mount_dir, staged_dir)` gives it a private copy of
        `staged_dir` at `mount_dir` that no other process on the machine can see."""
        args = [f"--address={self.gcs}", f"--num-cpus={num_cpus}", "--num-gpus=0"]
        if labels:
            args.append("--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
        self._start(args, f"worker{len(self.procs)}", sandbox)

    def wait_nodes(self, count: int, timeout_s: float = 180.0) -> None:
        """Until `count` nodes are alive and the job server accepts requests."""
        end = time.monotonic() + timeout_s
        last = ""
        restarts = 0
        while time.monotonic() < end:
            for i, (proc, log) in enumerate(zip(self.procs, self.logs, strict=True)):
                if proc.poll() is None:
                    continue
                # a loaded machine can make a worker's raylet miss Ray's fixed 30 s
                # registration window; start that worker again (twice at most)
                if i == 0 or restarts >= 2:
                    raise RuntimeError(f"{log.name} exited: {log.read_text()[-2000:]}")
                restarts += 1
                args, name, sandbox = self.starts[i]
                self._start(args, f"{name}-again{restarts}", sandbox)
                self.procs[i], self.logs[i], self.starts[i] = (
                    self.procs.pop(),
                    self.logs.pop(),
                    self.starts.pop(),
                )
            try:
                alive = [
                    n
                    for n in self.get("/nodes?view=summary")["data"]["summary"]
                    if n["raylet"]["state"] == "ALIVE"
                ]
                if len(alive) >= count:
                    return
                last = f"{len(alive)} of {count} nodes alive"
            except Exception as exc:  # the dashboard is still starting
                last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            time.sleep(1.0)
        raise TimeoutError(f"cluster not ready after {timeout_s:g} s: {last}")

    def get(self, path: str) -> dict:
        """GET a dashboard endpoint with the cluster's token (no Ray client state touched)."""
        import json
        import urllib.request

        request = urllib.request.Request(
            self.address + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        """End every node this object started (its process group), then remove its files."""
        for proc in self.procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 20
        for proc in self.procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, end - time.monotonic()))
        time.sleep(1.0)
        for proc in self.procs:  # children that ignored SIGTERM (or outlived their parent)
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
