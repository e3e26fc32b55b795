"""One-run empirical privacy audit of `privacy=dp_fedavg` (Andrew et al., ICLR 2024).

Canary clients join the population: each canary's update is a fixed random unit direction u at
the clip norm C. They are Poisson-sampled with everyone else by fedray's own `selection=poisson`
and go through the mechanism's real code path, the same calls the round protocol makes: the
client's clip (``client_transform``) and the uplink codec (``Pipeline.client``), the server's
decode, re-clip, weighted sum, Gaussian noise and fixed denominator (``reduce``), and the
accountant (``after_round``). Ordinary clients send synthetic updates (a shared drift plus
noise, of varied norms). The statistic of a canary is cos(u, sum of the released aggregates);
inserted canaries against as many held-out directions (never inserted) give mu and an empirical
epsilon (``fedray.privacy.lib.audit``), printed next to the epsilon the accountant claims.

A second variant is deliberately broken: the same mechanism with its noise std divided by 10
(the accountant still claims the same epsilon). The estimate must stay below the claim for the
real mechanism and exceed it for the broken one (tests/privacy/test_audit_mechanism.py).

The estimate fits Gaussians and has no confidence interval: a smoke alarm, not a certified bound.

Usage: python experiments/privacy/audit.py [--seeds 3] [--rounds 20] [--dim 20000]
       [--noise-multiplier 1.0] [--codec int8]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedray.core import registry
from fedray.core.context import RoundContext, RunContext
from fedray.core.types import State, StateSpec, Update
from fedray.pipeline import Pipeline
from fedray.privacy.dp_fedavg import DpFedAvg, DpFedAvgOptions
from fedray.privacy.lib.audit import audit_epsilon, audit_mu, canary_directions, cosines

HERE = Path(__file__).parent


class TenTimesLessNoise(DpFedAvg):
    """The broken variant: one tenth of the noise, the same accounting."""

    def noise_std(self) -> float:
        return super().noise_std() / 10


@dataclass(frozen=True)
class Audit:
    """One audit: the claim and the estimate."""

    variant: str
    seed: int
    claimed_epsilon: float
    empirical_epsilon: float
    mu: float
    cos_inserted_mean: float
    cos_held_out_mean: float
    cos_held_out_std: float
    seconds: float


def spec_of_dim(dim: int) -> StateSpec:
    """Two LoRA-like tensors with `dim` values in all."""
    rows = max(1, dim // 384)
    return StateSpec(("lora_A", "lora_B"), ((rows, 384), (dim - rows * 384,)))


def run_audit(
    *,
    broken: bool = False,
    seed: int = 0,
    dim: int = 20_000,
    rounds: int = 20,
    ordinary: int = 40,
    inserted: int = 200,
    held_out: int = 200,
    rate: float = 0.3,
    clip: float = 1.0,
    noise_multiplier: float = 1.0,
    delta: float = 1e-5,
    codec: str = "none",
) -> Audit:
    """Audit dp_fedavg (or its broken variant) once; see the module docstring."""
    t0 = time.perf_counter()
    spec = spec_of_dim(dim)
    population = ordinary + inserted  # canaries are clients ordinary + 0 .. ordinary + inserted - 1
    cohort = rate * population
    if abs(cohort - round(cohort)) > 1e-9:
        raise ValueError(f"rate x population = {cohort} must be a whole expected cohort")
    options = DpFedAvgOptions(
        noise_multiplier=noise_multiplier, clip=clip, delta=delta, accounting_resolution=1e-3
    )
    options.check()
    mechanism = (TenTimesLessNoise if broken else DpFedAvg)(options)
    run = RunContext(population, round(cohort), "poisson", rounds, seed, "sync")
    mechanism.setup(run)
    up = registry.build("compression", {"name": codec})
    pipeline = Pipeline(up, registry.build("compression", {"name": "none"}), mechanism)
    selector = registry.build("selection", {"name": "poisson"}, num_clients=population, seed=seed)
    rng = np.random.default_rng([seed, 1])
    canaries = canary_directions(spec.size, inserted + held_out, rng)
    drift = canary_directions(spec.size, 1, rng)[0]
    released = np.zeros(spec.size)
    for rnd in range(1, rounds + 1):
        clients = selector.select(rnd, run.cohort_size)
        ctx = RoundContext(run, rnd, tuple(clients), spec)
        mechanism.before_round(ctx, None)  # type: ignore[arg-type]
        message = mechanism.round_message(ctx)
        updates = []
        for cid in clients:
            if cid >= ordinary:  # a canary: its direction at the clip norm
                delta_flat = clip * canaries[cid - ordinary]
            else:  # an ordinary client: drift plus noise, norms around C
                noise = rng.standard_normal(spec.size) / math.sqrt(spec.size)
                delta_flat = (0.5 * drift + noise) * clip * rng.uniform(0.5, 2.0)
            state: State = spec.unflatten(delta_flat.astype(np.float32))
            session: dict = {}
            payload, _ = pipeline.client(
                state,
                spec=spec,
                weight=1.0,
                client_id=cid,
                round=rnd,
                seed=seed * 1_000_003 + rnd * 10_007 + cid,
                round_message=message,
                client_message=None,
                client_state={},
                session=session,
            )
            _, figures = mechanism.client_finish(
                client_id=cid, round=rnd, state=None, session=session
            )
            updates.append(Update(cid, 1, payload, payload.nbytes, metrics=figures))
        contributions = [pipeline.decode(u, spec) for u in updates]
        aggregate = mechanism.reduce(contributions, updates, ctx, None)  # type: ignore[arg-type]
        mechanism.after_round(ctx, aggregate)
        released += spec.flatten(aggregate.mean)
    cos = cosines(canaries, released)
    cin, cout = cos[:inserted], cos[inserted:]
    return Audit(
        variant="noise / 10 (broken)" if broken else "dp_fedavg",
        seed=seed,
        claimed_epsilon=mechanism.metrics()["epsilon"],
        empirical_epsilon=audit_epsilon(cin, cout, delta),
        mu=audit_mu(cin, cout),
        cos_inserted_mean=float(cin.mean()),
        cos_held_out_mean=float(cout.mean()),
        cos_held_out_std=float(cout.std(ddof=1)),
        seconds=time.perf_counter() - t0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--dim", type=int, default=20_000)
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--codec", default="none", help="uplink codec, e.g. int8 (default none)")
    parser.add_argument("--out", type=Path, default=HERE / "audit_results.json")
    args = parser.parse_args()
    rows = [
        run_audit(
            broken=broken,
            seed=seed,
            dim=args.dim,
            rounds=args.rounds,
            noise_multiplier=args.noise_multiplier,
            codec=args.codec,
        )
        for broken in (False, True)
        for seed in range(args.seeds)
    ]
    print(
        f"dp_fedavg audit: {args.rounds} rounds, d={args.dim}, 200 inserted + 200 held-out "
        f"canaries among 240 clients sampled at q=0.3, C=1, z={args.noise_multiplier}, "
        f"codec={args.codec}, delta=1e-5\n"
    )
    print("| variant | seed | claimed epsilon | empirical epsilon | mu | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r.variant} | {r.seed} | {r.claimed_epsilon:.3f} | {r.empirical_epsilon:.3f} "
            f"| {r.mu:.3f} | {r.seconds:.1f} |"
        )
    args.out.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
