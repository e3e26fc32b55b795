"""An audit transcript: everything the server side of a sum-only mechanism received in a round.

With ``privacy.transcript=DIR`` the driver-side mechanism pickles, per round, to
``DIR/round_NNNNN.pkl`` a dict ``{"round", "config", "pid", "received"}``: the public round
configuration, the driver's process id and, in arrival order, ``(kind, client, object)`` for
every message it got (public keys, encrypted shares, masked or encrypted payloads, unmasking
shares, the unmasked or decrypted sum). It is what a curious server learns, written down so an
audit (or a test) can check that nothing else reached it. Off (None) by default.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any


class Transcript:
    """Collects one round's received messages; :meth:`flush` writes them (no-op when off)."""

    def __init__(self, directory: str | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self._round: int | None = None
        self._config: Any = None
        self._items: list[tuple[str, int | None, Any]] = []

    @property
    def enabled(self) -> bool:
        """Whether anything is recorded."""
        return self.directory is not None

    def start(self, round: int, config: Any) -> None:
        """Begin round `round` with its public configuration."""
        self._round, self._config, self._items = round, config, []

    def record(self, kind: str, client: int | None, obj: Any) -> None:
        """Note one received object (client None: the server's own result, e.g. the sum)."""
        if self.directory is not None:
            self._items.append((kind, client, obj))

    def flush(self) -> None:
        """Write the round's transcript (atomically) and start empty."""
        if self.directory is None or self._round is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"round_{self._round:05d}.pkl"
        blob = {
            "round": self._round,
            "config": self._config,
            "pid": os.getpid(),
            "received": self._items,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, path)
        self._round, self._items = None, []


def load_transcripts(directory: str | Path) -> list[dict[str, Any]]:
    """Every round's transcript under `directory`, in round order."""
    return [pickle.loads(p.read_bytes()) for p in sorted(Path(directory).glob("round_*.pkl"))]
