"""The processes that coordinate (the one that runs an experiment, the driver actor) never
import torch or peft: torch alone adds ~160 MB to a process (W1's driver: 83 -> 243 MB PSS)."""

from __future__ import annotations

import subprocess
import sys


def test_preparing_a_run_and_building_its_stages_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from fedray.app.cli import compose\n"
        "from fedray.app.run import prepare_data\n"
        "from fedray.core import registry\n"
        "from fedray.pipeline import Pipeline\n"
        "spec, data = prepare_data(compose(['tracking=none']))\n"
        "Pipeline.from_spec(spec)\n"
        "registry.build('task', {'name': spec.data.task}).metrics({'count': 1})\n"
        "import fedray.server.driver, fedray.tracking.tracker\n"
        "import fedray.client.actor  # the driver wraps ClientWorker in ray.remote\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
