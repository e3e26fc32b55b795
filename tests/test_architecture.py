"""The layer rules of DESIGN.md hold: import-linter contracts in pyproject.toml, no cycles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([exe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ", 0 broken." in out.stdout, out.stdout[-3000:]
    assert out.returncode == 0


def test_package_folders_show_the_roles() -> None:
    folders = sorted(p.name for p in (ROOT / "fedray").iterdir() if (p / "__init__.py").exists())
    assert folders == [
        "app",
        "client",
        "compression",
        "core",
        "data",
        "models",
        "pipeline",
        "privacy",
        "server",
        "strategies",
        "tasks",
        "tracking",
    ]
    loose = sorted(p.name for p in (ROOT / "fedray").glob("*.py") if p.name != "__init__.py")
    assert loose == []
