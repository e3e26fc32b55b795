"""The sync scheduler: a barrier per round, every stage of :mod:`fedray.server.protocol` once."""

from __future__ import annotations

from dataclasses import replace

from fedray.core.context import RoundContext
from fedray.core.errors import QuorumError
from fedray.core.events import RoundEnd
from fedray.core.types import Aggregate, State, spec_of
from fedray.server.collect import collect_cohort, quorum_shortfall
from fedray.server.protocol import PoolIO, RoundProtocol, RoundTimer, update_metrics


def run_round(protocol: RoundProtocol, rnd: int, global_state: State) -> tuple[State, RoundEnd]:
    """One synchronous round: (the next global state, its report)."""
    p, m, mechanism = protocol, protocol.spec.mode, protocol.pipeline.mechanism
    timer = RoundTimer()
    cohort = p.plan(rnd, global_state)  # 1. plan (a probing selector asks first)
    ctx = RoundContext(p.run, rnd, tuple(cohort), spec_of(p.strategy.shared_state(global_state)))
    assignment = p.placement.assign(cohort)  # a silo's clients go to its own actors
    io = PoolIO(p.pool, rnd, assignment)
    mechanism.before_round(ctx, io)  # e.g. key agreement; may end the run (budget)
    bcast = p.broadcast(ctx, global_state)  # 2. broadcast
    ctx = replace(ctx, spec=bcast.spec)
    calls = collect_cohort(  # 3. client job + 4. collect
        p.pool,
        cohort,
        lambda cid, attempt: p.job_call(bcast, cid, attempt, rnd),
        timeout_s=m.client_timeout_s,
        max_retries=m.max_retries,
        deadline_s=m.round_deadline_s,
        pinned=assignment if p.pipeline.sum_only or p.placement.routed else None,
        sessions=p.pipeline.sum_only,
    )
    updates = sorted(calls.values, key=lambda u: u.client_id)
    mechanism.observe(ctx, updates)  # what the clients released, whatever happens to it next
    failures = list(calls.failures)
    if p.pipeline.sum_only:  # 5./6. the mechanism sums what it cannot read one by one
        contributions, rejected, usable = [], [], updates
    else:
        contributions, rejected = p.screen(bcast, updates, m.max_norm_ratio)
        ok = {c.client_id for c in contributions}
        usable = [u for u in updates if u.client_id in ok]
    failures += rejected
    quorum = 0 if mechanism.aggregates_any_cohort else m.min_clients
    shortfall = quorum_shortfall(rnd, len(usable), len(cohort), quorum, failures)
    aggregate: Aggregate | None = None
    new_state = global_state
    if shortfall is None:
        try:
            if p.strategy.requires_individual_updates:  # 5. robust rules read every update
                new_state = p.strategy.aggregate(global_state, contributions)
            else:
                aggregate = mechanism.reduce(contributions, usable, ctx, io)  # 5. + 6.
                new_state = p.strategy.step(global_state, aggregate)  # 7. server step
        except ValueError as exc:
            if p.pipeline.sum_only:  # the mechanism's message says what to change
                stage, fix = f"privacy={p.spec.privacy.name}", ""
            else:
                stage, fix = (
                    f"algorithm={p.spec.algorithm.name}",
                    "; raise mode.min_clients accordingly",
                )
            shortfall = f"round {rnd}: {stage} cannot aggregate {len(usable)} updates: {exc}{fix}"
    if shortfall is not None and m.on_quorum_loss == "stop":
        raise QuorumError(f"{shortfall}; or set mode.on_quorum_loss=skip")
    if shortfall is None and aggregate is not None:
        mechanism.after_round(ctx, aggregate)  # 6. accountant step
    accepted = [] if shortfall is not None else usable
    p.commit(rnd, accepted, arrived=updates)  # 8. commit
    metrics = update_metrics(accepted, updates, p.task)
    metrics.update(
        clients=float(len(cohort)),
        clients_failed=float(len(cohort) - len(accepted)),
        client_errors=float(len(calls.failures)),
        retries=float(calls.retries),
        calls_lost=float(calls.calls_lost),
        updates_rejected=float(len(rejected)),
        round_skipped=float(shortfall is not None),
        clients_late=float(calls.late),  # past mode.round_deadline_s
        round_trips=float(io.round_trips),
        # every call received the broadcast, and so did every probed candidate
        **p.traffic(updates, [bcast.sent] * calls.calls + p.probe_sent),
        **p.probe_figures,
        **p.pipeline.metrics(),
    )
    if rnd % m.eval_every == 0 or rnd == m.rounds:
        metrics.update({f"eval_{k}": v for k, v in p.evaluate(new_state).items()})
    metrics.update(timer.finish())
    nodes = {u.client_id: u.node for u in updates}
    return new_state, RoundEnd(rnd, list(cohort), failures, metrics, nodes)
