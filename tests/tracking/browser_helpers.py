"""Headless Chromium for the report and MLflow UI tests (flags as the brief's CI box needs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_dom(chromium: str, url: str, profile: Path, budget_ms: int = 8000) -> str:
    """The DOM of `url` after its scripts ran (`--dump-dom`), in a fresh profile."""
    cmd = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def chromium_screenshot(chromium: str, url: str, profile: Path, png: Path, size: str) -> None:
    cmd = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=8000",
        "--hide-scrollbars",
        f"--window-size={size}",
        f"--screenshot={png}",
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and png.exists(), proc.stderr[-2000:]
