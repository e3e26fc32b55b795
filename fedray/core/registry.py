"""Registries by name for every pluggable part: algorithms, selectors, codecs, privacy
mechanisms, tasks, model architectures and client update rules (data sources and partitioners:
`fedray.data`).

An entry is a factory plus the dataclass of its options. Adding an option is one module that
calls :func:`register` plus one YAML file under `conf/<group>/`; nothing else is edited.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedray.core.errors import ConfigError

T = TypeVar("T")

# Where each group's entries live: a package (every module in it is imported, so adding an
# option is one new module) or a tuple of modules.
_PROVIDERS: dict[str, str | tuple[str, ...]] = {
    "algorithm": "fedray.strategies",
    "selection": ("fedray.server.selection",),
    "compression": "fedray.compression",
    "privacy": "fedray.privacy",
    "task": "fedray.tasks",
    "arch": "fedray.models.archs",
    "rule": ("fedray.client.rules", "fedray.client.personal", "fedray.client.fednova"),
    "source": "fedray.data.sources",
    "partition": "fedray.data.partitioners",
}
_LOADED: set[str] = set()


def _load(group: str) -> None:
    """Import the modules that register `group`'s entries (once)."""
    if group in _LOADED:
        return
    provider = _PROVIDERS[group]
    if isinstance(provider, tuple):
        for module in provider:
            importlib.import_module(module)
    else:
        package = importlib.import_module(provider)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{provider}.{info.name}")
    _LOADED.add(group)


@dataclass(frozen=True)
class Entry:
    """A registered option: how to build it and which options it takes."""

    factory: Callable[..., Any]
    options: type


_REGISTRY: dict[str, dict[str, Entry]] = {group: {} for group in _PROVIDERS}
_CONFIG_KEY = {"source": "data", "rule": "client rule"}  # groups named otherwise in the config


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
    _load(group)
    return sorted(_REGISTRY[group])


def _load_one(group: str, name: str) -> None:
    """Import only the module named like the option, when there is one: a process that runs
    `privacy=none` then never imports the cryptography and accounting libraries the other
    mechanisms need (tens of MB and a second of start-up in every actor)."""
    provider = _PROVIDERS[group]
    if group in _LOADED or isinstance(provider, tuple) or name.startswith("_"):
        return
    module = f"{provider}.{name}"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return
    if spec is not None:
        importlib.import_module(module)


def entry(group: str, name: str) -> Entry:
    """The entry for `name`, with a one-line error listing the alternatives."""
    if name not in _REGISTRY.get(group, {}):
        _load_one(group, name)
    if name not in _REGISTRY.get(group, {}):
        _load(group)
    try:
        return _REGISTRY[group][name]
    except KeyError:
        key = _CONFIG_KEY.get(group, group)
        raise ConfigError(
            f"{key}.name={name!r} is unknown; choose one of: {', '.join(names(group))}"
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


def typed(schema: type[T], node: Any, group: str) -> T:
    """`node` (a config node, typed or plain, a dict, or None for the defaults) as an instance of
    the dataclass `schema`; a value of the wrong type is a ConfigError naming `group.key` (the
    root config: group "").

    A run's saved config.yaml, reloaded by `fedray resume`, is plain: its nodes become typed only
    here, so everything that reads a group as its dataclass goes through this.
    """
    if isinstance(node, schema):
        return node
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node or {}))
    except OmegaConfBaseException as exc:
        full = getattr(exc, "full_key", None)
        key = (f"{group}.{full}" if group else full) if full else (group or "config")
        raise ConfigError(f"{key}: {_first_line(exc)}") from None


def ent_name(node: DictConfig) -> str:
    """The option name a group node selects."""
    return str(node.get("name"))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
