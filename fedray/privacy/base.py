"""The privacy-mechanism interface: hooks at each stage of the round protocol.

A mechanism subclasses :class:`Mechanism` (a typed protocol whose hooks default to "do
nothing") and overrides the stages it acts in:

======================  ===========  ============================================================
hook                    where        e.g.
======================  ===========  ============================================================
``setup``               server       calibrate the noise multiplier for a target epsilon
``round_message``       server       the clip norm clients use this round
``client_training``     client       shape local training (DP-SGD: per-sample clipping, noise)
``before_round``        server       stop before a round that would overspend the budget;
                                     key exchange with the cohort (:class:`CohortIO`)
``client_message``      server       what one client needs for its job (its encrypted shares)
``client_transform``    client       clip the delta; mask or encrypt it (sum-only mechanisms)
``client_phase``        client       answer a round trip (advertise keys, share, unmask)
``client_finish``       client       the client's privacy state to keep (its DP-SGD accountant)
                                     and figures sent beside the update (a clip bit, epsilon)
``observe``             server       every update that arrived, used or not (what clients spent)
``reduce``              server       plaintext: clip, weighted sum, Gaussian noise, fixed
                                     denominator; sum-only: unmask or decrypt the sum
``after_round``         server       accountant step, adaptive clip update
======================  ===========  ============================================================

Plaintext mechanisms (``sum_only = False``) see each decoded update in ``reduce``; sum-only
mechanisms (secure aggregation, homomorphic encryption) receive the clients' payloads, which
the server cannot read one by one, and return only their aggregate. An algorithm that needs
individual updates cannot run behind a sum-only mechanism: the pipeline refuses the pair when
the config is checked.

A client's privacy state (``client_state["privacy"]``, e.g. a per-client accountant) is kept by
client id like any client state, and it is kept even when the server discards the update: what
a client released stays spent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from fedray.core.checkpoint import check_state_keys
from fedray.core.context import RoundContext, RunContext
from fedray.core.statemath import mean_of
from fedray.core.types import Aggregate, Contribution, State, Update

if TYPE_CHECKING:
    from collections.abc import Iterable


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


class LocalTraining(Protocol):
    """How a mechanism shapes one client's local training for one job (DP-SGD in the client).

    The client actor installs it on the trainer for the job (``Trainer.shaped``), so every
    ``Trainer.fit`` the client rule makes (the rules are not edited) passes its model, optimizer
    and batch iterator through :meth:`wrap`, which has the shape of
    ``opacus.PrivacyEngine.make_private``, and calls :meth:`unwrap` when the fit ends, also on
    error: no hook outlives its fit, and the actor trains the next client on a clean model.
    """

    per_sample_gradients: bool
    """True if gradients are clipped per sample: a loss term on the parameters themselves (a
    FedProx proximal term) would not reach the update, so the trainer refuses one."""

    per_sample_losses: bool
    """True if training needs each sample's loss (ghost clipping): the trainer then computes the
    task's per-sample losses (a task without them is refused) and trains on :meth:`batch_loss`
    of them instead of the task's batch loss."""

    def wrap(self, model: Any, optimizer: Any, loader: Iterable[Any]) -> tuple[Any, Any, Any]:
        """At the start of each fit: the model, optimizer and batches to train with."""
        ...

    def empty_step(self) -> None:
        """One optimizer step for an empty batch (Poisson sampling can draw none)."""
        ...

    def batch_loss(self, sample_losses: Any) -> Any:
        """With :attr:`per_sample_losses`: the loss of a batch to call ``backward()`` and
        ``item()`` on, from its per-sample losses (a tensor of shape [rows])."""
        ...

    def unwrap(self) -> None:
        """At the end of each fit: remove what :meth:`wrap` attached."""
        ...


class Mechanism(Protocol):
    """One privacy mechanism; every hook has a no-op default."""

    sum_only: ClassVar[bool] = False
    aggregates_any_cohort: ClassVar[bool] = False
    """True if :meth:`reduce` releases an aggregate from any number of updates, none included
    (DP-FedAvg: a fixed denominator and noise). The round protocol then does not apply
    `mode.min_clients`: a skipped round would reveal that too few clients took part."""

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

    def client_training(
        self, *, client_id: int, round: int, seed: int, state: Any, session: dict[str, Any]
    ) -> LocalTraining | None:
        """Client side, before local training: how to shape it (e.g. DP-SGD), given the client's
        stored privacy state `state` (None on its first visit). None trains as usual."""
        return None

    def client_finish(
        self, *, client_id: int, round: int, state: Any, session: dict[str, Any]
    ) -> tuple[Any, dict[str, float]]:
        """Client side, after the job's transforms: (the privacy state the client keeps, None
        for none; figures sent beside the update in its metrics, e.g. an adaptive clip's bit).
        Raising withholds the update (e.g. it would overspend the client's budget)."""
        return state, {}

    def observe(self, ctx: RoundContext, updates: list[Update]) -> None:
        """Server side: every update that arrived this round, before the checks and whether or
        not it is aggregated (e.g. to track what each client has spent)."""

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
