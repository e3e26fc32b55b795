"""`privacy=he` through the protocol seams: this process plays the driver, the key holder is a
Ray actor. The decrypted sum is the plain sum within the CKKS bound; the driver has no secret."""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray
from secure_helpers import one_round, run_context

from fedray.app.cli import compose
from fedray.app.spec import build_spec
from fedray.core import registry
from fedray.core.errors import ConfigError
from fedray.privacy._transcript import load_transcripts
from fedray.privacy._weighted import weighted_vector


def mechanisms(**options):
    node = {"name": "he", **options}
    return registry.build("privacy", node), registry.build("privacy", node)


def test_decrypted_sum_is_the_plain_weighted_sum_within_the_ckks_bound(ray_cluster, tmp_path):
    server, client = mechanisms(transcript=str(tmp_path))
    sizes = [3, 8, 1, 5, 8, 2, 7, 4, 6, 8]
    run = run_context(10, 10, sizes)
    server.setup(run)
    rng = np.random.default_rng(0)
    deltas = {
        c: {"a": rng.normal(0, 1e-3, (300, 16)).astype(np.float32), "b": rng.normal(0, 1, 9)}
        for c in range(10)
    }
    deltas = {c: {k: v.astype(np.float32) for k, v in d.items()} for c, d in deltas.items()}
    agg, updates, _ = one_round(server, client, run, 1, deltas)
    (log,) = load_transcripts(tmp_path)
    decrypted = next(obj for kind, _, obj in log["received"] if kind == "decrypted_sum")
    plain = sum(
        weighted_vector(
            np.concatenate([deltas[c]["a"].reshape(-1), deltas[c]["b"]]).astype(np.float64),
            sizes[c],
            8.0,
            1.0,
        )
        for c in range(10)
    )
    bound = server.params.error_bound(10)  # CKKS Lemma 1 over 10 fresh ciphertexts: 1.3e-5
    assert bound < 2e-5
    assert np.abs(decrypted - plain).max() <= bound
    # values beyond the bound were clipped to it ("b" ~ N(0, 1)); the weights are exact-ish
    w = np.array(sizes, float)
    expect_a = sum(w[c] * deltas[c]["a"].astype(np.float64) for c in range(10)) / w.sum()
    np.testing.assert_allclose(agg.mean["a"], expect_a, atol=bound * 8 / w.sum() * 2, rtol=0)
    assert agg.weight == pytest.approx(w.sum(), abs=1e-3) and agg.count == 10
    expansion = server.metrics()["he_expansion"]
    assert expansion == pytest.approx(len(updates[0].payload) / (4 * 4809))


def test_the_driver_holds_no_secret_key_and_the_holder_decrypts_only_sums(ray_cluster) -> None:
    from fedray.privacy.lib.ckks import CkksPublic

    server, client = mechanisms()
    run = run_context(4, 4)
    server.setup(run)
    assert ray.get(server.holder.pid.remote()) != os.getpid()
    assert not CkksPublic(server._public_bytes).context.is_private()  # all the driver got
    deltas = {c: {"x": np.full(10, 0.1 * c, np.float32)} for c in range(4)}
    _, updates, _ = one_round(server, client, run, 1, deltas)
    with pytest.raises(ray.exceptions.RayTaskError, match="never decrypts one client's update"):
        ray.get(server.holder.decrypt_sum.remote(np.asarray(updates[1].payload).tobytes()))


def test_expansion_on_a_lora_sized_state_is_about_3_2(ray_cluster) -> None:
    server, client = mechanisms()
    run = run_context(2, 2)
    server.setup(run)
    deltas = {c: {"lora": np.zeros(76_038, np.float32)} for c in range(2)}
    one_round(server, client, run, 1, deltas)
    assert 3.1 < server.metrics()["he_expansion"] < 3.3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["privacy.scale_bits=46"], r"^privacy\.scale_bits=46: a sum of 5 values"),
        (["mode.clients_per_round=1"], "at least 2 clients"),
        (["privacy.min_summands=6"], "exceeds the 5 clients"),
        (["algorithm=trimmed_mean"], "needs individual updates"),
        (["compression=topk"], "cannot run behind privacy=he"),
    ],
)
def test_combinations_that_cannot_work_are_refused_in_one_line(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_spec(compose(["tracking=none", "privacy=he", "mode.clients_per_round=5", *overrides]))
