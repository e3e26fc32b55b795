"""Connecting to Ray: a local instance started (and stopped) by fedray, or an existing cluster."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from fedray.core.errors import ConfigError

# Silence library chatter in every worker; fedray prints its own progress.
WORKER_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore::UserWarning,ignore::FutureWarning,ignore::DeprecationWarning",
}


@contextmanager
def lean_local_head() -> Iterator[None]:
    """While in effect, a local Ray head starts without its autoscaler monitor, its log monitor,
    and (unless the dashboard is asked for) its API server.

    A fixed-size local cluster never autoscales, and fedray reports client errors through the
    driver, not through worker output streamed to the console. With `include_dashboard=False`,
    Ray still starts `dashboard.py --minimal` only to send usage statistics; fedray uses none of
    its HTTP APIs (job submission, `ray.util.state`). The three processes hold about 230 MB RSS
    and take about a second of CPU to start. `ray.init` exposes none of these switches, so the
    head's parameters are adjusted where `ray.init` builds them, and the API server is skipped
    the way Ray itself carries on when that optional server fails to start (no dashboard URL).
    """
    from ray._private import node, parameter

    original = parameter.RayParams
    start_api_server = getattr(node.Node, "start_api_server", None)
    if start_api_server is None or not {"no_monitor", "include_log_monitor"} <= set(
        vars(original(num_cpus=1))
    ):
        raise ConfigError(
            "cluster.lean=true is not supported by this Ray version; set cluster.lean=false"
        )

    def lean_api_server(self, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        if include_dashboard:
            start_api_server(self, include_dashboard=True, raise_on_failure=raise_on_failure)
        else:
            self._webui_url = None

    class LeanRayParams(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.no_monitor = True
            self.include_log_monitor = False

    parameter.RayParams = LeanRayParams
    node.Node.start_api_server = lean_api_server
    try:
        yield
    finally:
        parameter.RayParams = original
        node.Node.start_api_server = start_api_server


@contextmanager
def ray_session(cluster) -> Iterator[bool]:
    """Yield with Ray initialised; shut it down afterwards if this call started it.

    If Ray is already initialised in this process (a notebook, a test session), it is reused
    as is and left running. Yields True when this call owns the Ray session.
    """
    import ray

    if ray.is_initialized():
        yield False
        return
    kwargs: dict = {
        "include_dashboard": False,
        "namespace": cluster.namespace,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": dict(WORKER_ENV)},
    }
    if cluster.address:
        _check_reachable(cluster.address)
        kwargs["address"] = cluster.address
    else:
        # "local": always a new instance of our own. Without it, ray.init joins whatever Ray
        # another user's `ray start` (or RAY_ADDRESS) left on a shared machine.
        kwargs["address"] = "local"
        for key in ("num_cpus", "num_gpus", "object_store_memory"):
            if getattr(cluster, key) is not None:
                kwargs[key] = getattr(cluster, key)
        kwargs["_system_config"] = {"worker_niceness": int(cluster.worker_niceness)}
    lean = not cluster.address and cluster.lean
    main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        with lean_local_head() if lean else nullcontext():
            ray.init(**kwargs)
        # ray.init swaps the SIGTERM handler for its own `sys.exit(15)` and then for abseil's,
        # which prints native stack frames and aborts: the caller's handler decides instead.
        if on_sigterm is not None:
            signal.signal(signal.SIGTERM, on_sigterm)
    except Exception as exc:  # e.g. "The current node timed out during startup" (Exception)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        target = cluster.address or "a local instance"
        raise ConfigError(
            f"cluster.address={cluster.address!r}: cannot start/connect to Ray ({target}): "
            f"{first}; check the address or drop it for a local instance"
        ) from None
    try:
        yield True
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a `host:port` (or `ray://host:port`) nobody listens on.

    `ray.init` would keep retrying such an address for minutes; "auto" is left to Ray.
    """
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cluster.address={address!r}: nothing answers at {host}:{port} "
            f"({exc.strerror or exc}); start the cluster there or drop the address for a local Ray"
        ) from None
