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
