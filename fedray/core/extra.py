"""Extra state that travels beside the global state and the updates (e.g. SCAFFOLD's c).

Extra state is one flat :data:`~fedray.core.types.State`; each algorithm tags its entries
``"<tag>/<parameter key>"`` so several kinds can share it without clashing.
"""

from __future__ import annotations

from fedray.core.types import State


def tagged(state: State, tag: str) -> State:
    """``{"<tag>/<key>": value}`` for every entry of `state`."""
    return {f"{tag}/{k}": v for k, v in state.items()}


def untagged(extra: State | None, tag: str, like: State, owner: str) -> State:
    """The entries of `extra` tagged `tag`, tag removed; ValueError unless keyed like `like`."""
    if extra is None:
        raise ValueError(f"{owner}: no extra state with tag {tag!r} arrived")
    prefix = f"{tag}/"
    out = {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}
    if set(out) != set(like):
        diff = sorted(set(out) ^ set(like))[:3]
        raise ValueError(f"{owner}: {tag!r} keys differ from the global state (e.g. {diff})")
    return out
