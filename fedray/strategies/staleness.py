"""Staleness weights s(tau) for asynchronous aggregation (Xie et al., 2019, FedAsync, Sec. 5.2).

tau = the server version when an update arrives - the version its client started from.

    constant:    s(tau) = 1
    polynomial:  s(tau) = (tau + 1) ** -a
    hinge:       s(tau) = 1 if tau <= b else 1 / (a * (tau - b) + 1)
"""

from __future__ import annotations

KINDS = ("constant", "polynomial", "hinge")


def staleness_weight(kind: str, tau: int, a: float = 0.5, b: float = 4.0) -> float:
    """s(tau) for one of :data:`KINDS`; ValueError for a negative tau or an unknown kind."""
    if tau < 0:
        raise ValueError(f"staleness tau={tau} must be >= 0")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((tau + 1) ** -a)
    if kind == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    raise ValueError(f"staleness={kind!r} is unknown; use one of {', '.join(KINDS)}")


def check_staleness_options(kind: str, a: float, b: float) -> None:
    """ValueError naming the option that makes s(tau) ill-defined (the registry prefixes it)."""
    if kind not in KINDS:
        raise ValueError(f"staleness={kind!r} is unknown; use one of {', '.join(KINDS)}")
    if a < 0:
        raise ValueError(f"a={a} must be >= 0 (the decay exponent/slope of s(tau))")
    if b < 0:
        raise ValueError(f"b={b} must be >= 0 (the hinge: staleness tolerated at full weight)")
