"""The privacy-mechanism interface: hooks at each stage of the round protocol.

A mechanism subclasses :class:`Mechanism` (a typed protocol whose hooks default to "do
nothing") and overrides the stages it acts in:

======================  ===========  ============================================================
hook                    where        e.g.
======================  ===========  ============================================================
``setup``               server       calibrate the noise multiplier for a target epsilon
``round_message``       server       the clip norm clients use this round
``before_round``        server       stop before a round that would overspend the budget;
                                     key exchange with the cohort (:class:`CohortIO`)
``client_message``      server       what one client needs for its job (its encrypted shares)
``client_transform``    client       clip the delta; mask or encrypt it (sum-only mechanisms)
``client_phase``        client       answer a round trip (advertise keys, share, unmask)
``reduce``              server       plaintext: clip, weighted sum, Gaussian noise, fixed
                                     denominator; sum-only: unmask or decrypt the sum
``after_round``         server       accountant step, adaptive clip update
======================  ===========  ============================================================

Plaintext mechanisms (``sum_only = False``) see each decoded update in ``reduce``; sum-only
mechanisms (secure aggregation, homomorphic encryption) receive the clients' payloads, which
the server cannot read one by one, and return only their aggregate. An algorithm that needs
individual updates cannot run behind a sum-only mechanism: the pipeline refuses the pair when
the config is checked.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from fedray.core.checkpoint import check_state_keys
from fedray.core.context import RoundContext, RunContext
from fedray.core.statemath import mean_of
from fedray.core.types import Aggregate, Contribution, State, Update


class CohortIO(Protocol):
    """Round trips with a round's cohort, provided to a mechanism by the round protocol.

    Each client's messages are handled, within one round, by the same client actor, which keeps
    that client's session (e.g. its secret keys) in memory and never sends it to the server.
    """

    def exchange(self, phase: str, messages: dict[int, Any]) -> dict[int, Any]:
        """Send `messages[client]` to each client's ``client_phase(phase, ...)``; its replies.

        Clients that failed or whose actor died are absent from the reply: they dropped out.
        """
        ...


class Mechanism(Protocol):
    """One privacy mechanism; every hook has a no-op default."""

    sum_only: ClassVar[bool] = False
    reveals_client_metrics: ClassVar[bool] = True
    """Whether each client reports its training metrics (loss, ...) in the clear beside its
    update. A DP mechanism turns it off: a client's loss is a function of its data that its
    accountant does not cover. Timings and the sample count (the public weight) still travel."""

    def setup(self, ctx: RunContext) -> None:
        """Once, before the first round."""

    def before_round(self, ctx: RoundContext, io: CohortIO) -> None:
        """Before the cohort trains; raise :class:`~fedray.core.errors.BudgetExhausted` to end
        the run cleanly instead of starting this round."""

    def round_message(self, ctx: RoundContext) -> Any:
        """Sent to every client of the round with the global state (None: nothing)."""
        return None

    def client_message(self, ctx: RoundContext, client_id: int) -> Any:
        """Sent to one client with its job (None: nothing)."""
        return None

    def client_transform(
        self,
        delta: State,
        *,
        weight: float,
        client_id: int,
        round: int,
        seed: int,
        round_message: Any,
        client_message: Any,
        session: dict[str, Any],
    ) -> Any:
        """Client side, before encoding (plaintext) or instead of it (sum-only): the delta as
        it travels. The messages are :meth:`round_message` and :meth:`client_message`;
        `session` holds what this client kept from earlier phases of the round."""
        return delta

    def client_phase(
        self, phase: str, *, client_id: int, round: int, message: Any, session: dict[str, Any]
    ) -> Any:
        """Client side of one round trip; `session` persists for the client's whole round."""
        raise NotImplementedError(f"{type(self).__name__} has no phase {phase!r}")

    def reduce(
        self,
        contributions: list[Contribution],
        updates: list[Update],
        ctx: RoundContext,
        io: CohortIO,
    ) -> Aggregate:
        """The cohort's aggregate: from the decoded `contributions` (plaintext mechanisms; the
        default is the sample-weighted mean) or from the raw `updates` (sum-only)."""
        return mean_of(contributions)

    def after_round(self, ctx: RoundContext, aggregate: Aggregate) -> None:
        """After the round's aggregate was released (accountant step, clip adaptation)."""

    def metrics(self) -> dict[str, float]:
        """Per-round figures for tracking (e.g. epsilon spent so far)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What must survive a checkpoint (accountant, adaptive clip)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        check_state_keys(set(), state, type(self).__name__)
