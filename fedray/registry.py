"""Registries by name for pluggable parts (strategies, selectors, codecs, privacy mechanisms).

An entry is a factory plus the dataclass of its options. Adding an option is one module that
calls :func:`register` plus one YAML file under `conf/<group>/`; nothing else is edited.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedray.errors import ConfigError

T = TypeVar("T")

# The modules whose import registers the entries of each group.
_PROVIDERS: dict[str, str] = {
    "algorithm": "fedray.strategies",
    "selection": "fedray.server.selection",
    "compression": "fedray.compression",
    "privacy": "fedray.privacy",
}


@dataclass(frozen=True)
class Entry:
    """A registered option: how to build it and which options it takes."""

    factory: Callable[..., Any]
    options: type


_REGISTRY: dict[str, dict[str, Entry]] = {group: {} for group in _PROVIDERS}


def register(group: str, name: str, options: type) -> Callable[[T], T]:
    """Class/function decorator: register `name` in `group` with its options dataclass."""
    if group not in _REGISTRY:
        raise KeyError(f"unknown registry group {group!r}")
    if not is_dataclass(options) or "name" not in {f.name for f in fields(options)}:
        raise TypeError(f"{options!r} must be a dataclass with a `name` field")

    def wrap(factory: T) -> T:
        _REGISTRY[group][name] = Entry(factory, options)  # type: ignore[arg-type]
        return factory

    return wrap


def names(group: str) -> list[str]:
    """Registered option names of a group, sorted."""
    importlib.import_module(_PROVIDERS[group])
    return sorted(_REGISTRY[group])


def entry(group: str, name: str) -> Entry:
    """The entry for `name`, with a one-line error listing the alternatives."""
    importlib.import_module(_PROVIDERS[group])
    try:
        return _REGISTRY[group][name]
    except KeyError:
        raise ConfigError(
            f"{group}.name={name!r} is unknown; choose one of: {', '.join(names(group))}"
        ) from None


def parse(group: str, node: DictConfig | dict[str, Any]) -> Any:
    """Check a group's config node against its option dataclass and return the typed object."""
    node = node if isinstance(node, DictConfig) else OmegaConf.create(node)
    ent = entry(group, str(node.get("name")))
    schema = OmegaConf.structured(ent.options)
    unknown = sorted(set(node) - {f.name for f in fields(ent.options)})
    if unknown:
        known = ", ".join(f.name for f in fields(ent.options) if f.name != "name") or "none"
        raise ConfigError(
            f"{group}.{unknown[0]} is not an option of {group}={ent_name(node)} (options: {known})"
        )
    try:
        merged = OmegaConf.merge(schema, node)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{group}: {_first_line(exc)}") from None
    obj = OmegaConf.to_object(merged)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{group}.{exc}") from None
    return obj


def build(group: str, node: DictConfig | dict[str, Any], **kwargs: Any) -> Any:
    """Parse a group's node and call its factory with the typed options."""
    options = parse(group, node)
    return entry(group, options.name).factory(options, **kwargs)


def check_combination(cfg: DictConfig) -> None:
    """Reject option combinations that cannot work, before Ray starts.

    Each registered factory may expose `requires_individual_updates: bool`; privacy and
    compression factories may expose `reveals_only_sums: bool`. An aggregator that must see
    individual updates cannot run behind a mechanism that reveals only their sum.
    """
    algo = entry("algorithm", str(cfg.algorithm.name)).factory
    for group in ("compression", "privacy"):
        stage = entry(group, str(cfg[group].name)).factory
        if getattr(stage, "reveals_only_sums", False) and getattr(
            algo, "requires_individual_updates", False
        ):
            raise ConfigError(
                f"algorithm={cfg.algorithm.name} needs individual updates but "
                f"{group}={cfg[group].name} reveals only their sum; pick another pair"
            )


def typed(schema: type[T], node: Any, group: str) -> T:
    """`node` (a config node, typed or plain, a dict, or None for the defaults) as an instance of
    the dataclass `schema`; a value of the wrong type is a ConfigError naming `group.key`.

    A run's saved config.yaml, reloaded by `fedray resume`, is plain: its nodes become typed only
    here, so everything that reads a group as its dataclass goes through this.
    """
    if isinstance(node, schema):
        return node
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node or {}))
    except OmegaConfBaseException as exc:
        key = f"{group}.{exc.full_key}" if getattr(exc, "full_key", None) else group
        raise ConfigError(f"{key}: {_first_line(exc)}") from None


def ent_name(node: DictConfig) -> str:
    """The option name a group node selects."""
    return str(node.get("name"))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
