"""The local Ray session fedray starts: lean by default, and shut down afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, psutil
from omegaconf import OmegaConf
from fedray.app.cluster import ray_session
from fedray.core.config import ClusterConfig
import os, ray
cfg = OmegaConf.structured(ClusterConfig(num_cpus=1, lean={lean}))
with ray_session(cfg):
    me = psutil.Process()
    names = [" ".join(p.cmdline()) for p in me.children(recursive=True)]
    nice = ray.get(ray.remote(lambda: os.nice(0)).remote())
print(json.dumps([nice, names]))
"""


def _helper_processes(lean: bool) -> tuple[int, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(lean=lean)],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("lean", [True, False])
def test_lean_local_head_skips_the_monitors_and_api_server(lean: bool) -> None:
    nice, procs = _helper_processes(lean)
    assert nice == 0  # cluster.worker_niceness, not Ray's 15
    assert any("gcs_server" in p for p in procs) and any("raylet" in p for p in procs)
    skipped = [
        p
        for p in procs
        if any(s in p for s in ("log_monitor.py", "autoscaler/_private/monitor", "dashboard.py"))
    ]
    assert (skipped == []) == lean, skipped
    assert (len(skipped) == 3) != lean, skipped
