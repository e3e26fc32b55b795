"""What `fedray submit` ships: this checkout as the job's working directory, less `.git`, run
outputs, MLflow stores, virtual environments and caches, checked against Ray's upload limit and
named by its content (Ray's own package hash), walked with Ray's own rules (`.gitignore` and
`.rayignore` files respected), so what is measured here is what Ray uploads.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedray.core.errors import ConfigError

PROJECT = Path(__file__).resolve().parents[2]  # holds fedray/ and conf/
EXCLUDES = [
    ".git",
    "outputs/",
    "multirun/",
    "mlruns/",
    "mlartifacts/",
    "mlflow.db",
    ".venv/",
    "venv/",
    ".ci-venv/",
    "__pycache__/",
    "*.pyc",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".mypy_cache/",
    ".hypothesis/",
    ".ipynb_checkpoints/",
    "experiments/*/out/",
]


def upload_limit() -> int:
    """Ray's upload limit for a working directory, in bytes."""
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    return int(GCS_STORAGE_MAX_SIZE)


def shipped_files(root: Path) -> list[tuple[int, str]]:
    """(size, relative path) of each file Ray would upload from `root` with :data:`EXCLUDES`,
    walking the tree the way Ray does (its `.gitignore`/`.rayignore` files respected)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    files: list[tuple[int, str]] = []

    def visit(path: Path) -> None:
        if path.is_file():
            files.append((path.stat().st_size, str(path.relative_to(root))))

    _dir_travel(root, [_get_excludes(root, EXCLUDES)], visit, include_gitignore=_gitignore())
    return files


def _gitignore() -> bool:
    from ray._private.ray_constants import RAY_RUNTIME_ENV_IGNORE_GITIGNORE

    return os.environ.get(RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"


def check_size(root: Path, limit: int | None = None) -> int:
    """The bytes to ship from `root`; ConfigError naming the largest files past Ray's limit.

    The sum of file sizes bounds the zip Ray builds from above; only when it is over the
    limit is the zip built to measure it exactly.
    """
    limit = upload_limit() if limit is None else limit
    files = shipped_files(root)
    total = sum(size for size, _ in files)
    if total < limit:
        return total
    zipped = _zipped_size(root)
    if zipped < limit:
        return zipped
    largest = ", ".join(f"{p} ({s / 2**20:.1f} MiB)" for s, p in sorted(files, reverse=True)[:5])
    raise ConfigError(
        f"the project at {root} is {zipped / 2**20:.1f} MiB zipped, over Ray's upload limit of "
        f"{limit / 2**20:.0f} MiB; largest files: {largest}; move them out of the project or "
        "list them in a .rayignore file there"
    )


def _zipped_size(root: Path) -> int:
    import tempfile

    from ray._private.runtime_env.packaging import _zip_files

    with tempfile.TemporaryDirectory(prefix="fedray-submit-") as tmp:
        out = Path(tmp) / "pkg.zip"
        _zip_files(str(root), EXCLUDES, str(out), include_gitignore=_gitignore())
        return out.stat().st_size


def tree_uri(root: Path) -> str:
    """Ray's content-addressed package URI of the shipped tree (changes with any file)."""
    from ray._private.runtime_env.packaging import get_uri_for_directory

    return get_uri_for_directory(str(root), _gitignore(), excludes=EXCLUDES)
