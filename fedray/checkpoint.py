"""Driver state to disk and back: everything a run needs to continue where it stopped."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedray.types import State

CHECKPOINT_FILE = "driver_state.pkl"
FORMAT_VERSION = 1


@dataclass
class DriverState:
    """The complete state of the coordinator after `round` rounds."""

    round: int
    global_state: State
    client_states: dict[int, State] = field(default_factory=dict)
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
    if blob.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {blob.get('version')} is not supported")
    return blob["state"]
