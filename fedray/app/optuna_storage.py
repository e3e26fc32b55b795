"""Optuna's RDB storage (a sqlite file under the sweep directory), so an interrupted study
resumes where it stopped: `fedray tune` and Hydra's Optuna sweeper both open it here.

Optuna 2.x (the line `hydra-optuna-sweeper` requires) predates SQLAlchemy 2, which MLflow 3
requires: its schema-version bookkeeping stamps alembic's version table on a connection it
never commits (SQLAlchemy 2 has no autocommit), then asserts the stamp exists, and the
connection left open holds sqlite's write lock. :func:`_patch_version_manager` replaces those two
methods with ones that commit and close their connection, under exactly that pair of versions;
everything else of the storage is Optuna's own (tested in tests/app/test_tune.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

_patched = False


def _major(module: Any) -> int:
    return int(str(module.__version__).split(".")[0])


def _patch_version_manager() -> None:
    global _patched
    import optuna
    import sqlalchemy

    if _patched or _major(optuna) >= 3 or _major(sqlalchemy) < 2:
        return
    import alembic.migration
    from optuna.storages._rdb import storage as rdb

    def init_alembic(self: Any) -> None:
        with self.engine.begin() as conn:  # commits the stamp, releases the connection
            context = alembic.migration.MigrationContext.configure(conn)
            if context.get_current_revision() is not None:
                return
            supported = self._is_alembic_supported()
            revision = self.get_head_version() if supported else self._get_base_version()
            context.stamp(self._create_alembic_script(), revision)

    def get_current_version(self: Any) -> str:
        with self.engine.connect() as conn:
            version = alembic.migration.MigrationContext.configure(conn).get_current_revision()
        assert version is not None, "optuna's alembic version table is empty"
        return version

    rdb._VersionManager._init_alembic = init_alembic
    rdb._VersionManager.get_current_version = get_current_version
    _patched = True


def rdb_storage(url: str) -> Any:
    """An Optuna RDBStorage at `url` (a sqlite file's directory is created)."""
    import optuna

    _patch_version_manager()
    parsed = urlparse(url)
    if parsed.scheme == "sqlite" and parsed.path not in ("", "/", "/:memory:"):
        Path(unquote(parsed.path)[1:]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url)
