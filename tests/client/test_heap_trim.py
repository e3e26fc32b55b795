"""The actor's heap trimmer spends at most its share of the time in malloc_trim."""

from __future__ import annotations

import time

from fedray.client import actor


class SlowLibc:
    def __init__(self, cost_s: float) -> None:
        self.cost_s, self.calls = cost_s, 0

    def malloc_trim(self, pad: int) -> int:
        self.calls += 1
        time.sleep(self.cost_s)
        return 1


def test_trims_are_spaced_by_their_cost_over_the_share(monkeypatch) -> None:
    libc = SlowLibc(0.005)
    monkeypatch.setattr(actor, "_LIBC", libc)
    trim = actor.HeapTrimmer(share=0.1)  # a 5 ms trim allows the next one 50 ms later
    start = time.perf_counter()
    while time.perf_counter() - start < 0.3:
        trim()
    spent = libc.calls * libc.cost_s
    assert 2 <= libc.calls <= 7  # not once per call: about 0.3 s / 55 ms
    assert spent <= 0.1 * 0.3 + libc.cost_s  # at most the share, plus the call in flight


def test_the_first_call_trims_and_no_libc_is_a_no_op(monkeypatch) -> None:
    libc = SlowLibc(0.0)
    monkeypatch.setattr(actor, "_LIBC", libc)
    actor.HeapTrimmer()()
    assert libc.calls == 1
    monkeypatch.setattr(actor, "_LIBC", None)
    actor.HeapTrimmer()()  # musl, macOS: nothing to trim, nothing raised
