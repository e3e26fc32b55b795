"""Sum-only mechanisms in real runs: Hydra config, Ray actors, the driver actor, a tiny model.

Each run records what its driver-side mechanism received (`privacy.transcript`); the clients'
plain encodings are recomputed here by replaying their jobs in this process (same data, seeds
and model), so the secure sum can be compared with them bit for bit.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fedray.app.cli import compose
from fedray.app.run import prepare, run_experiment
from fedray.core import registry
from fedray.core.seeding import client_seed
from fedray.core.statemath import subtract
from fedray.models import save_tiny_classifier
from fedray.privacy._transcript import load_transcripts
from fedray.privacy.lib.bitpack import unpack_bits
from fedray.privacy.lib.ddp_accounting import DistributedDpAccountant
from fedray.privacy.lib.secagg_core import AdvertiseKeys, EncryptedShares, UnmaskResponse


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny"))


def small(model: str, *overrides: str) -> list[str]:
    return [
        "partition=iid",
        "partition.num_clients=12",
        "partition.max_samples_per_client=12",
        "mode.rounds=1",
        "mode.clients_per_round=10",
        "data.max_test=32",
        "data.max_length=16",
        "client.num_cpus=1",
        "client.num_actors=2",
        f"model.name_or_path={model}",
        "model.lora.layers=null",
        "tracking=none",
        *overrides,
    ]


def run(tmp: Path, overrides: list[str]):
    cfg = compose(overrides)
    return cfg, run_experiment(cfg, tmp / "run", cwd=tmp, out=None)


@pytest.fixture(scope="module")
def round_one(tiny):
    """Every client's round-1 job replayed in this process: (delta, weight, seed) by client.

    The same data, model, seeds and client rule as the actors, so the same deltas, bit for bit.
    """
    from fedray.client.actor import ActorSpec, ClientWorker
    from fedray.client.rules import LocalJob

    spec, data, encoded = prepare(compose(small(tiny, "privacy=secagg")))
    rule = registry.build("algorithm", spec.algorithm).client_rule()
    worker = ClientWorker(
        ActorSpec(spec, len(data.corpus.label_names), rule, spec.partition.num_clients), encoded
    )
    start = worker.initial_state()
    out = {}
    for cid in range(spec.partition.num_clients):
        seed = client_seed(spec.seed, 1, cid, spec.client.seed_scheme, spec.client.round_stride)
        job = LocalJob(cid, seed, worker.data.client_batch(cid), start)
        result = worker.rule.run(worker.trainer, job, worker.recipe)
        out[cid] = (subtract(result.trained, start), float(result.num_samples), seed)
    return out


def plain_encodings(jobs, message, cohort) -> dict[int, np.ndarray]:
    """The clients' plain fixed-point ring vectors (what they mask), as int64."""
    mechanism = registry.build("privacy", {"name": "secagg"})
    out = {}
    for c in cohort:
        delta, weight, seed = jobs[c]
        out[c] = mechanism.encode(delta, weight=weight, seed=seed, msg=message).astype(np.int64)
    return out


def received(log, kind):
    return [(cid, obj) for k, cid, obj in log["received"] if k == kind]


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.3])
def test_secagg_run_sums_exactly_the_survivors_plain_encodings(
    ray_cluster, tiny, round_one, tmp_path, dropout
) -> None:
    audit = tmp_path / "transcript"
    overrides = ["privacy=secagg", f"privacy.dropout={dropout}", f"privacy.transcript={audit}"]
    _, result = run(tmp_path, small(tiny, *overrides))
    (log,) = load_transcripts(audit)
    (row,) = result.history
    ((_, total),) = received(log, "sum")
    ((_, message),) = received(log, "round_message")
    assert len(total.survivors) == 10 - round(dropout * 10) == row["privacy_clients_summed"]
    assert row["privacy_dropped_simulated"] == round(dropout * 10)
    plain = plain_encodings(round_one, message, log["config"].clients)
    expected = sum(plain[c] for c in total.survivors)
    codec = message.codec
    np.testing.assert_array_equal(codec.to_signed(total.total), codec.to_signed(expected))
    if dropout == 0.3:  # what the driver received, in a real run, against the plain encodings
        check_confidential(log, total, plain)


def check_confidential(log, total, plain) -> None:
    assert log["pid"] != os.getpid()  # recorded in the driver actor's process
    cfg = log["config"]
    types = {"secagg/advertise": AdvertiseKeys, "secagg/share": EncryptedShares}
    types.update({"secagg/unmask": UnmaskResponse, "masked": bytes})
    for kind, _, obj in log["received"]:
        assert kind in (*types, "round_message", "sum"), kind
        if kind in types:
            assert isinstance(obj, types[kind])
    for _, reply in received(log, "secagg/unmask"):  # never both secrets of one client
        assert set(reply.key_shares) <= total.dropped
        assert set(reply.self_mask_shares) <= total.survivors
    masked = dict(received(log, "masked"))
    assert set(masked) == set(cfg.clients)
    blob = pickle.dumps(log["received"])
    for cid, payload in masked.items():
        y = unpack_bits(payload, cfg.bits, cfg.vector_length).astype(np.float64)
        x = (plain[cid] % 2**cfg.bits).astype(np.float64)
        assert np.mean(x == y) < 1e-3
        assert abs(np.corrcoef(x, y)[0, 1]) < 5 / math.sqrt(x.size)
        assert plain[cid].astype("<u4").tobytes() not in blob


def test_a_client_whose_actor_dies_is_a_dropout_and_the_sum_stays_exact(
    ray_cluster, tiny, round_one, tmp_path
) -> None:
    """Its actor's other clients lose their sessions too: with 2 actors about half the cohort
    drops, so the threshold is lowered to 3 of 9 neighbours to leave the round recoverable."""
    audit = tmp_path / "transcript"
    overrides = ["privacy=secagg", "privacy.threshold=3", f"privacy.transcript={audit}"]
    _, result = run(tmp_path, small(tiny, *overrides, "faults.schedule=[1:3:die]"))
    (row,) = result.history
    (log,) = load_transcripts(audit)
    ((_, total),) = received(log, "sum")
    ((_, message),) = received(log, "round_message")
    assert 3 not in total.survivors and 3 in total.dropped
    assert row["clients_failed"] >= 1 and row["round_skipped"] == 0
    assert row["privacy_clients_summed"] == len(total.survivors) >= 5
    plain = plain_encodings(round_one, message, log["config"].clients)
    expected = sum(plain[c] for c in total.survivors)
    codec = message.codec
    np.testing.assert_array_equal(codec.to_signed(total.total), codec.to_signed(expected))


def test_he_run_decrypts_in_a_key_holder_that_is_not_the_driver(ray_cluster, tiny, tmp_path):
    from fedray.privacy.lib.ckks import CkksPublic

    audit = tmp_path / "transcript"
    _, result = run(
        tmp_path, small(tiny, "privacy=he", "mode.rounds=2", f"privacy.transcript={audit}")
    )
    logs = load_transcripts(audit)
    assert [r["privacy_clients_summed"] for r in result.history] == [10, 10]
    assert all(3.1 < r["he_expansion"] < 5 for r in result.history)
    for log in logs:
        holder, driver = log["config"]["key_holder_pid"], log["pid"]
        assert len({holder, driver, os.getpid()}) == 3
        assert not CkksPublic(log["config"]["public_context"]).context.is_private()
        kinds = {kind for kind, _, _ in log["received"]}
        assert kinds == {"encrypted", "decrypted_sum"}
    assert result.history[-1]["eval_accuracy"] >= 0


def test_ddp_run_logs_the_accountants_epsilon_every_round(ray_cluster, tiny, tmp_path) -> None:
    _, result = run(
        tmp_path,
        small(
            tiny,
            "privacy=ddp",
            "mode.rounds=3",
            "privacy.dropout=0.2",
            "privacy.min_shares=8",
            "privacy.noise_multiplier=2.0",
        ),
    )
    rows = result.history
    assert [r["privacy_clients_summed"] for r in rows] == [8, 8, 8]
    assert rows[0]["privacy_noise_multiplier"] == pytest.approx(2.0)
    accountant = DistributedDpAccountant(
        noise="discrete_gaussian",
        dim=int(rows[0]["privacy_padded_dim"]),
        l2_sensitivity=rows[0]["privacy_l2_sensitivity"],
    )
    for r in rows:  # one event per released sum, with the noise shares in it
        accountant.step(r["privacy_local_noise_std"], int(r["privacy_clients_summed"]))
        assert r["epsilon"] == accountant.epsilon(1e-5)
    assert 0 < rows[0]["epsilon"] < rows[1]["epsilon"] < rows[2]["epsilon"]
    assert all("train_loss" not in r for r in rows)  # clients keep their losses under DP


@pytest.mark.slow
def test_200_secagg_rounds_of_20_clients(ray_cluster, tiny, tmp_path) -> None:
    _, result = run(
        tmp_path,
        small(
            tiny,
            "privacy=secagg",
            "privacy.dropout=0.1",
            "privacy.degree=8",
            "partition.num_clients=40",
            "partition.max_samples_per_client=4",
            "mode.rounds=200",
            "mode.clients_per_round=20",
            "mode.eval_every=50",
        ),
    )
    assert len(result.history) == 200
    assert all(r["privacy_clients_summed"] == 18 for r in result.history)
    assert all(r["round_skipped"] == 0 for r in result.history)


@pytest.mark.slow
def test_a_resumed_secagg_run_matches_an_uninterrupted_one(ray_cluster, tiny, tmp_path) -> None:
    """Masks cancel exactly and the rounding and the simulated dropout are seeded: a secure run
    is reproducible, and resuming it from a checkpoint changes nothing, bit for bit."""
    from fedray.core.checkpoint import load_checkpoint

    base = small(tiny, "privacy=secagg", "privacy.dropout=0.3", "mode.checkpoint_every=1")
    full = run_experiment(compose([*base, "mode.rounds=3"]), tmp_path / "a", cwd=tmp_path, out=None)
    run_experiment(compose([*base, "mode.rounds=2"]), tmp_path / "b", cwd=tmp_path, out=None)
    rest = run_experiment(
        compose([*base, "mode.rounds=3"]), tmp_path / "b", cwd=tmp_path, out=None, resume_run_id=""
    )
    assert [r["round"] for r in rest.history] == [3]
    assert rest.history[0]["train_loss"] == full.history[-1]["train_loss"]
    a = load_checkpoint(tmp_path / "a" / "checkpoint").global_state
    b = load_checkpoint(tmp_path / "b" / "checkpoint").global_state
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
