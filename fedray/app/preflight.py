"""Checks a command line needs before anything starts: parsable overrides, known keys, and
output locations that can be written. Each failure is a one-line ConfigError naming the key."""

from __future__ import annotations

import tempfile
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from omegaconf import DictConfig

from fedray.core.errors import ConfigError


def check_overrides(overrides: list[str]) -> None:
    """Name the first override Hydra's grammar cannot parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except Exception as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            why = lines[0].split("; See ")[0] if lines else type(exc).__name__
            raise ConfigError(
                f"{override}: not a valid override ({why}); write key=value and quote values "
                "holding brackets, commas or spaces"
            ) from None


def check_known_keys(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Reject keys (e.g. added with `+key=...`) that the typed config `schema` does not have."""
    hints = typing.get_type_hints(schema)
    for key in cfg:
        name = f"{prefix}{key}"
        if key not in hints:
            options = ", ".join(sorted(f.name for f in fields(schema)))
            raise ConfigError(f"{name} is not a fedray config key; known here: {options}")
        sub = next((t for t in (hints[key], *typing.get_args(hints[key])) if is_dataclass(t)), None)
        node = cfg[key]
        if isinstance(sub, type) and isinstance(node, DictConfig):
            check_known_keys(node, sub, f"{name}.")


def check_writable_dir(path: str | Path, key: str, value: str | None = None) -> None:
    """ConfigError unless `path` exists as a writable directory or could be created.

    The message names `key` and its `value` (default: `path`).
    """
    shown = path if value is None else value
    target = Path(path).expanduser().absolute()
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={shown}: {probe} is not a directory; pick a writable one")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{key}={shown}: cannot write in {probe} ({exc.strerror}); pick a writable directory"
        ) from None


def check_tracking_store(uri: str | None) -> None:
    """A local sqlite/file store's directory must be writable (a server is checked on use)."""
    if not uri:
        return
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":  # sqlite:///rel/path.db or sqlite:////abs/path.db
        check_writable_dir(Path(unquote(parsed.path)[1:]).parent, "tracking.uri", uri)
    elif parsed.scheme in ("", "file"):
        check_writable_dir(unquote(parsed.path), "tracking.uri", uri)


TRACKING_TIMEOUT_S = 4.0  # to connect; then as long again for the answer: < 10 s in all
_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def check_tracking_uri(
    uri: str | None, timeout_s: float = TRACKING_TIMEOUT_S, key: str = "tracking.uri"
) -> None:
    """Fail in seconds, with one line, on a tracking URI MLflow cannot use; before Ray starts.

    A server (http/https) must accept a connection within `timeout_s` and answer MLflow's REST
    API within `timeout_s` more, one try: MLflow's own client retries a dead address with backoff
    for minutes. A local store must be writable, and a file store (refused by MLflow 3 unless
    MLFLOW_ALLOW_FILE_STORE=true) is named as such. Messages name the setting as `key`.
    """
    if not uri:
        return
    scheme = urlparse(uri).scheme
    if scheme not in _SCHEMES and "+" not in scheme:  # e.g. postgresql+psycopg2
        raise ConfigError(
            f"{key}={uri}: unknown scheme {scheme!r}; use http(s)://HOST:PORT for an MLflow "
            "server, sqlite:///PATH/mlflow.db for a local store, or null for ./mlflow.db"
        )
    if scheme in ("", "file"):
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

        if not MLFLOW_ALLOW_FILE_STORE.get():
            raise ConfigError(
                f"{key}={uri}: MLflow 3 no longer writes file stores; use "
                "sqlite:///PATH/mlflow.db, null for ./mlflow.db, or an http(s) server"
            )
    check_tracking_store(uri)
    if scheme in ("http", "https"):
        _check_server(uri, timeout_s, key)


def _check_server(uri: str, timeout_s: float, key: str) -> None:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    where = f"{key}={uri}"
    try:
        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/search",
            "GET",
            params={"max_results": 1},
            max_retries=0,
            timeout=(timeout_s, timeout_s),  # (connect, read)
            raise_on_status=False,
        )
    except Exception as exc:
        reason = _connection_reason(exc)
        raise ConfigError(
            f"{where}: no MLflow server answers ({reason}) within {2 * timeout_s:g} s; start one "
            f"(mlflow server --host HOST --port PORT) or set {key}=null for ./mlflow.db"
        ) from None
    code = response.status_code
    if code in (401, 403):
        raise ConfigError(
            f"{where}: the server refuses fedray (HTTP {code}); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if code != 200 or not isinstance(body, dict):
        raise ConfigError(
            f"{where}: answers HTTP {code} but not as an MLflow tracking server; check the host, "
            "port and path (the URI of `mlflow server`, without /#/ or /api)"
        )


def _connection_reason(exc: BaseException) -> str:
    """The innermost useful words of a requests/urllib3 connection error."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route"):
        if marker.lower() in text.lower():
            return marker
    return type(exc).__name__
