"""The driver's side of the optional strategy hooks (see :class:`fedray.strategies.Strategy`).

Each function returns the default when a strategy does not define the hook, so the driver
calls them unconditionally and stays ignorant of which algorithm is on.
"""

from __future__ import annotations

from typing import Any

from fedray.strategies.aggregate import nbytes
from fedray.strategies.base import Contribution
from fedray.types import ClientUpdate, State


def setup(strategy: Any, *, num_clients: int) -> None:
    """Tell a strategy how many clients exist (SCAFFOLD's N)."""
    hook = getattr(strategy, "setup", None)
    if hook is not None:
        hook(num_clients=num_clients)


def shared_state(strategy: Any, global_state: State) -> State:
    """What is sent to clients and what their updates must match (FedPer keeps its head)."""
    hook = getattr(strategy, "shared_state", None)
    return global_state if hook is None else hook(global_state)


def broadcast(strategy: Any, global_state: State) -> State | None:
    """Extra state sent with the global state this round (SCAFFOLD's c), or None."""
    hook = getattr(strategy, "broadcast", None)
    return None if hook is None else hook(global_state)


def extra_nbytes(extra: State | None) -> int:
    """Bytes of an extra state (0 for none)."""
    return 0 if extra is None else nbytes(extra)


def attach_extras(contributions: list[Contribution], updates: list[ClientUpdate]) -> None:
    """Give each contribution the extra state its client sent up (matched by client id)."""
    by_client = {u.client_id: u.extra for u in updates}
    for c in contributions:
        c.extra = by_client.get(c.client_id)


def losses(updates: list[ClientUpdate]) -> dict[int, float]:
    """Client id -> last local training loss, for the selector's ``observe``."""
    return {u.client_id: float(u.metrics["loss"]) for u in updates if "loss" in u.metrics}


def personal_metrics(updates: list[ClientUpdate]) -> dict[str, float]:
    """Mean personalized accuracy/loss over the round's clients that reported one."""
    rows = [u.metrics for u in updates if "personal_accuracy" in u.metrics]
    if not rows:
        return {}
    return {
        "eval_personal_accuracy": sum(r["personal_accuracy"] for r in rows) / len(rows),
        "eval_personal_loss": sum(r["personal_loss"] for r in rows) / len(rows),
        "eval_personal_clients": float(len(rows)),
    }
