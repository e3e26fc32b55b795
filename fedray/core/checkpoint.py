"""Driver state to disk and back: everything a run needs to continue where it stopped."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedray.core.types import ClientState, State

CHECKPOINT_FILE = "driver_state.pkl"
FORMAT_VERSION = 2  # 2: client states keyed by owner ("rule", "codec", ...); async retries


@dataclass
class DriverState:
    """The complete state of the coordinator after `round` rounds."""

    round: int
    global_state: State
    client_states: dict[int, ClientState] = field(default_factory=dict)
    strategy: dict[str, Any] = field(default_factory=dict)
    selector: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    loop: dict[str, Any] = field(default_factory=dict)  # async mode: version, queue, counters


def save_checkpoint(directory: str | Path, state: DriverState) -> Path:
    """Write atomically (temp file + rename), so a kill mid-write leaves the old checkpoint."""
    path = Path(directory) / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(
            {"version": FORMAT_VERSION, "state": state}, f, protocol=pickle.HIGHEST_PROTOCOL
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str | Path) -> DriverState | None:
    """The saved state, or None if the directory holds no checkpoint."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        return None
    with open(path, "rb") as f:
        blob = pickle.load(f)
    version = blob.get("version")
    if version == 1:
        return _from_v1(blob["state"])
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version} is not supported")
    return blob["state"]


def _from_v1(state: DriverState) -> DriverState:
    """A format-1 checkpoint in format 2: client states were the rule's state alone, the
    pipeline kept an (empty) codec state, async queue entries had no retry count."""
    state.client_states = {c: {"rule": s} for c, s in state.client_states.items()}
    state.pipeline = {"privacy": state.pipeline.get("privacy", {})}
    if state.loop:
        state.loop["queue"] = [(c, d, 0) for c, d in state.loop["queue"]]
    return state


def check_state_keys(expected: set[str], state: dict[str, Any], owner: str) -> None:
    """Raise KeyError naming missing/unexpected keys of a loaded state dict."""
    if set(state) != expected:
        raise KeyError(
            f"{owner}.load_state_dict: expected keys {sorted(expected)}, got {sorted(state)}"
        )
