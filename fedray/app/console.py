"""How the command line talks to the user: one `fedray: error:` line, and the signals that end
a run.

SIGTERM (`kill`, `docker stop`, a scheduler's time limit) and Ctrl-C raise :class:`Terminated` /
KeyboardInterrupt in the main thread, so every `finally` runs: Ray shuts down and the MLflow run
ends KILLED (see :class:`fedray.tracking.tracker.Tracker`), and the command ends with one line.
`ray.init` replaces the handler twice: with its own Python handler (`sys.exit(15)`), then, when
the driver's core worker starts, with abseil's failure-signal handler, which prints native stack
frames and aborts the process; :func:`fedray.app.cluster.ray_session` puts the caller's handler
back after `ray.init`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import NoReturn

EXIT_USAGE = 2  # bad input: nothing was started
EXIT_FAILED = 1  # something ran and failed (a sweep with failed jobs)
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_SIGINT = 128 + signal.SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so `except Exception` blocks never swallow it."""


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line to stderr and exit with `code` (2: bad input)."""
    print(f"fedray: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def condense(text: str) -> str:
    """One line out of a multi-line Hydra/OmegaConf message."""
    skip = ("full_key", "reference_type", "object_type", "config search path", "set the env")
    lines = [ln.strip().rstrip(":") for ln in str(text).splitlines()]
    keep: list[str] = []
    for ln in lines:
        if not ln:
            continue
        if ln.lower().startswith(skip) or ln.startswith(("provider=", "path=")):
            if ln.lower().startswith("config search path"):
                break
            continue
        keep.append(ln)
    if len(keep) > 1 and keep[1].lower().startswith("available options"):
        return f"{keep[0]}; {keep[1]}: {', '.join(keep[2:])}"
    return "; ".join(keep[:4]) if keep else "invalid configuration"


_sigterm_seen = False  # Ray's blocking calls re-raise a plain KeyboardInterrupt of their own


def _on_sigterm(signum: int, frame: object) -> None:
    global _sigterm_seen
    # Later SIGTERMs are ignored while the first one unwinds (Ray shutdown, MLflow status);
    # SIGKILL still ends the process.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _sigterm_seen = True
    raise Terminated()


def install_signal_handlers() -> None:
    """SIGTERM raises :class:`Terminated` in the main thread."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def interrupted(exc: KeyboardInterrupt) -> NoReturn:
    """The one line a terminated or interrupted command ends with."""
    from fedray.tracking.tracker import end_open_trackers

    # Runs whose `with Tracker` block unwound are already KILLED; this ends any still open.
    end_open_trackers("KILLED")
    if isinstance(exc, Terminated) or _sigterm_seen:
        fail("terminated by SIGTERM; open MLflow runs were marked KILLED", EXIT_SIGTERM)
    fail("interrupted; open MLflow runs were marked KILLED", EXIT_SIGINT)


class VerbParser(argparse.ArgumentParser):
    """argparse for a `fedray VERB`: `--help` as usual, errors as one `fedray: error:` line."""

    def error(self, message: str) -> NoReturn:  # argparse's default prints usage + exits 2
        fail(f"{self.prog}: {message}; see {self.prog} --help")
