"""Every codec through the pipeline and the client actor's code (in process, a tiny model):
the bytes counted are the serialized payload, chains count what their last codec emits, the
downlink is its own codec, clients train from what they received, and bad configs are refused.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from codec_helpers import index_nbytes, quantizer_nbytes

from fedray.app.cli import compose
from fedray.app.run import prepare
from fedray.app.spec import build_spec
from fedray.client.actor import ActorSpec, ClientWorker
from fedray.compression.lib.bits import Reader
from fedray.core import registry
from fedray.core.errors import ConfigError
from fedray.core.types import TrainJob, spec_of
from fedray.models import save_tiny_classifier
from fedray.pipeline import Pipeline

TINY = [
    "partition=iid",
    "partition.num_clients=4",
    "mode.clients_per_round=4",
    "partition.max_samples_per_client=16",
    "data.max_test=16",
    "data.max_length=16",
    "client.num_cpus=1",
    "model.lora.layers=null",
    "tracking=none",
]
# Every registered codec with its YAML defaults, plus the variants the study uses.
CODECS: dict[str, list[str]] = {
    **{name: [f"compression={name}"] for name in registry.names("compression")},
    "topk10-ef": ["compression=topk", "compression.fraction=0.1"],
    "topk1-no-ef": ["compression=topk", "compression.error_feedback=false"],
    "randk-nf4": [
        "compression=chain",
        "compression.codecs=[{name:randk},{name:nf4}]",
        "compression.error_feedback=false",  # unbiased rand-k refuses it
    ],
    "int8-stochastic": ["compression=int8", "compression.rounding=stochastic"],
}
QUANTIZERS = ("fp16", "bf16", "int8", "int4", "nf4", "qsgd", "sign")


@dataclass
class Worker:
    """One in-process client actor over tiny data, and its run config's overrides."""

    worker: ClientWorker
    base: list[str]
    start: dict  # the round-0 global state (the worker's model moves as it trains)

    def use(self, overrides: list[str]) -> Pipeline:
        """Give the worker the pipeline `overrides` select (what a new actor would build)."""
        spec = build_spec(compose([*self.base, *overrides]))
        self.worker.pipeline = Pipeline.from_spec(spec)
        return self.worker.pipeline


@pytest.fixture(scope="module")
def actor(tmp_path_factory: pytest.TempPathFactory) -> Worker:
    model = save_tiny_classifier(Path(tmp_path_factory.mktemp("tiny")))
    base = [*TINY, f"model.name_or_path={model}"]
    spec, data, encoded = prepare(compose(base))
    rule = registry.build("algorithm", spec.algorithm).client_rule()
    worker = ClientWorker(
        ActorSpec(spec, len(data.corpus.label_names), rule, spec.partition.num_clients), encoded
    )
    return Worker(worker, base, worker.initial_state())


def _train(actor: Worker, pipeline: Pipeline, client: int = 1, state: dict | None = None):
    """One client job as the coordinator sends it: (global state, job, update)."""
    g = actor.start
    spec = spec_of(g)
    payload = pipeline.encode_down(g, spec, seed=7)
    job = TrainJob(round=1, client_id=client, seed=11, attempt=0, spec=spec)
    if state is not None:
        job.client_state = state
    return g, job, actor.worker.train(job, payload)


def _expected_nbytes(pipeline: Pipeline, payload: np.ndarray, spec) -> int:
    """The payload size from the documented wire formats (tests/compression/codec_helpers.py),
    with the positions a sparsifier kept read from the payload itself."""
    chain = pipeline.up
    if not hasattr(chain, "stages"):  # compression=none
        return 4 * spec.size
    quant = next((s.options for s in chain.stages if s.kind == "quantizer"), None)
    node = None if quant is None else {k: v for k, v in vars(quant).items() if v is not None}
    if chain.sparsifier is None:
        return quantizer_nbytes(node, spec.sizes)
    reader = Reader(payload.tobytes())
    sel = chain.sparsifier.parse(reader, spec)
    name = chain.sparsifier.options.name
    head = reader.pos
    if name == "topk":
        assert head == index_nbytes(sel.positions, spec.size)
    elif name == "randk":
        assert head == 8  # the seed
    return head + quantizer_nbytes(node, sel.seg)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_bytes_up_are_the_serialized_payload_for_every_codec(actor: Worker, codec: str) -> None:
    pipeline = actor.use(CODECS[codec])
    g, _, update = _train(actor, pipeline)
    spec = spec_of(g)
    payload = update.payload
    assert isinstance(payload, np.ndarray) and payload.dtype == np.uint8 and payload.ndim == 1
    serialized = payload.tobytes()
    assert update.nbytes_up == len(serialized) == _expected_nbytes(pipeline, payload, spec)
    # What Ray ships is that buffer plus a constant envelope (no copy per value, no framing).
    assert len(serialized) < len(pickle.dumps(payload, protocol=5)) < len(serialized) + 200
    decoded = pipeline.decode(update, spec).delta
    assert decoded.keys() == g.keys() and all(decoded[k].shape == g[k].shape for k in g)
    has_residual = "codec" in update.client_state
    assert has_residual == pipeline.up.error_feedback, "residual stored iff error feedback is on"


def test_a_chain_counts_what_its_last_codec_emits(actor: Worker) -> None:
    """topk 10% then int8: index section + int8 of the kept values, far below either alone."""
    sizes = {}
    for name, overrides in {
        "chain": ["compression=chain", "compression.codecs=[{name:topk,fraction:0.1},{name:int8}]"],
        "topk": ["compression=topk", "compression.fraction=0.1"],
        "int8": ["compression=int8"],
    }.items():
        pipeline = actor.use(overrides)
        g, _, update = _train(actor, pipeline)
        sizes[name] = update.nbytes_up
    spec = spec_of(g)
    k = -(-spec.size // 10)
    assert sizes["chain"] < sizes["topk"] - 2 * k  # int8 saved ~3 bytes per kept value...
    assert sizes["chain"] < sizes["int8"] / 4  # ...and topk left a tenth of the values
    pipeline = actor.use(
        ["compression=chain", "compression.codecs=[{name:topk,fraction:0.1},{name:int8}]"]
    )
    _, _, update = _train(actor, pipeline)
    assert update.nbytes_up == _expected_nbytes(pipeline, update.payload, spec)


def test_error_feedback_residual_is_kept_per_client_and_used(actor: Worker) -> None:
    pipeline = actor.use(["compression=topk"])  # 1%, error feedback on
    _, _, first = _train(actor, pipeline, client=2)
    residual = first.client_state["codec"]
    assert set(residual) == set(actor.start)
    _, _, again = _train(actor, pipeline, client=2, state=first.client_state)
    _, _, fresh = _train(actor, pipeline, client=2)
    # Same client, same seed, same data: only the carried residual differs.
    assert fresh.payload.tobytes() == first.payload.tobytes()
    assert again.payload.tobytes() != first.payload.tobytes()


@pytest.mark.parametrize("down", QUANTIZERS[:5])
def test_downlink_is_its_own_codec_and_counted_apart(actor: Worker, down: str) -> None:
    pipeline = actor.use(["compression=int8", f"compression.down={down}"])
    g = actor.start
    spec = spec_of(g)
    payload = pipeline.encode_down(g, spec, seed=3)
    node = {"name": down}
    assert payload.nbytes == quantizer_nbytes(node, spec.sizes) < 4 * spec.size
    assert pipeline.up.names == ("int8",) and pipeline.down.names == (down,)
    back = pipeline.decode_down(payload, spec)
    assert back.keys() == g.keys()


def test_clients_train_from_what_they_received(actor: Worker) -> None:
    """With down=int4 the delta is taken against the decoded broadcast, not the server's copy."""
    pipeline = actor.use(["compression=none", "compression.down=int4"])
    g, _, update = _train(actor, pipeline, client=3)
    spec = spec_of(g)
    received = pipeline.decode_down(pipeline.encode_down(g, spec, seed=7), spec)
    trained = actor.worker.trainer.get_state()
    delta = pipeline.decode(update, spec).delta
    assert any(not np.array_equal(received[k], g[k]) for k in g), "int4 must change the state"
    for k in g:
        np.testing.assert_allclose(received[k] + delta[k], trained[k], rtol=0, atol=1e-6)
    gap = max(float(np.max(np.abs(g[k] + delta[k] - trained[k]))) for k in g)
    assert gap > 1e-4  # against the server's copy the delta would be off by the rounding


def test_broadcast_seed_varies_by_round_and_repeats() -> None:
    from fedray.pipeline import broadcast_seed

    assert broadcast_seed(0, 1) == broadcast_seed(0, 1)
    assert len({broadcast_seed(s, r) for s in range(3) for r in range(1, 30)}) == 87


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["compression.down=topk"], r"^compression\.down=topk: topk is a sparsifier"),
        (["compression.down=randk"], r"^compression\.down=randk: randk is a sparsifier"),
        (["compression.down=prune"], r"^compression\.down=prune: prune is a sparsifier"),
        (["compression.down=sign"], r"^compression\.down=sign: sign keeps one magnitude"),
        (["compression.down=qsgd"], r"^compression\.down=qsgd: qsgd norm=l2"),
        (["compression.down=chain"], r"^compression\.down takes one quantizer"),
        (["compression.down=bogus"], r"^compression\.down\.name='bogus' is not a codec"),
        (["compression.down={name:int8,block:0}"], r"^compression\.down\.block=0"),
        (["compression.down={name:int8,error_feedback:true}"], r"down\.error_feedback is an"),
        (["compression.down={name:none,block:3}"], r"^compression\.down=none takes no options"),
        (
            ["compression=chain", "compression.codecs=[{name:topk,down:fp16}]"],
            r"^compression\.codecs\[0\]\.down: set down on the chain node",
        ),
    ],
)
def test_bad_downlinks_are_refused_in_one_line(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        build_spec(compose(["tracking=none", *overrides]))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["compression=int8", "compression.down=fp16"],
        ["compression=chain", "compression.down={name:int8,block:64,rounding:stochastic}"],
        ["compression=none", "compression.down=nf4"],
        ["compression=sign", "compression.down={name:qsgd,norm:max}"],
    ],
)
def test_good_downlinks_are_accepted(overrides: list[str]) -> None:
    spec = build_spec(compose(["tracking=none", *overrides]))
    assert Pipeline.from_spec(spec).down.names  # a one-quantizer chain


def test_sum_only_mechanisms_take_only_dense_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind secure aggregation the mechanism's own field encoding is the payload: any codec is
    refused in one line naming both options (the downlink stays free)."""

    @dataclass
    class SumOnlyOptions:
        name: str = "sum_only_test"

    class SumOnly:
        sum_only = True

        def __init__(self, options: SumOnlyOptions) -> None:
            self.options = options

    registry.names("privacy")  # load the group before adding to it
    entries = dict(registry._REGISTRY["privacy"])
    entries["sum_only_test"] = registry.Entry(SumOnly, SumOnlyOptions)
    monkeypatch.setitem(registry._REGISTRY, "privacy", entries)
    base = ["tracking=none", "privacy.name=sum_only_test"]
    for codec in ("randk", "int8", "chain"):
        with pytest.raises(ConfigError, match=rf"^compression={codec} cannot run behind") as err:
            build_spec(compose([*base, f"compression={codec}"]))
        assert "privacy=sum_only_test" in str(err.value)
    build_spec(compose([*base, "compression=none", "compression.down=int8"]))
