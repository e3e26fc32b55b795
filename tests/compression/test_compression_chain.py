"""The chain: build rules and config, error feedback, residual state, summability, norm growth."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from codec_helpers import lora_state, make_state, quantizer_nbytes, roundtrip
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from fedray.compression import Chain, StateSpec, build_chain, chain_from_node
from fedray.compression.intq import Int4, Int4Options
from fedray.compression.lib.bits import Reader
from fedray.compression.topk import TopK, TopKOptions
from fedray.core import registry
from fedray.core.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf" / "compression"
OURS = sorted(p for p in CONF.glob("*.yaml") if p.stem != "none")


# --- building ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", OURS, ids=lambda p: p.stem)
def test_every_yaml_parses_and_builds(path: Path) -> None:
    node = OmegaConf.load(path)
    registry.parse("compression", node)
    chain = chain_from_node(node)
    assert isinstance(registry.build("compression", node), Chain)
    assert "#" in path.read_text()  # defaults carry a why-comment
    state = lora_state()
    spec = StateSpec.of(state)
    payload, residual = chain.encode(state, spec=spec, seed=1)
    assert (residual is not None) == bool(node.get("error_feedback"))
    assert chain.decode(payload, spec).keys() == state.keys()


def test_none_node_is_the_empty_chain() -> None:
    chain = chain_from_node({"name": "none"})
    assert chain.stages == () and chain.summable and not chain.can_grow_norm


@pytest.mark.parametrize(
    ("nodes", "match"),
    [
        ([{"name": "int8"}, {"name": "topk"}], r"codecs=\[int8, topk\]: the sparsifier \(topk\)"),
        ([{"name": "topk"}, {"name": "randk"}], "at most one sparsifier"),
        ([{"name": "int8"}, {"name": "fp16"}], "at most one quantizer"),
        ([{"name": "topk"}, {"name": "int8"}, {"name": "nf4"}], "at most one quantizer"),
        ([{"name": "zstd"}], r"codecs\[0\].name='zstd' is not a codec stage; choose one of"),
        ([{"name": "none"}], "is not a codec stage"),
        ([{"name": "int8", "blok": 3}], r"codecs\[0\].blok is not an option of int8"),
        ([{"name": "int8", "block": "x"}], r"codecs\[0\].block: Value 'x'"),
        (
            [{"name": "topk"}, {"name": "int4", "block": 3}],
            r"codecs\[1\].block=3 must be an even number",
        ),
        ([{"name": "topk", "fraction": 0}], r"codecs\[0\].fraction=0.0 must be in \(0, 1\]"),
        ([{"name": "topk", "fraction": None}], "set fraction"),
        ([{"name": "topk", "k": 0}], "k=0 must be >= 1"),
        ([{"name": "randk", "scope": "layer"}], "scope='layer' must be one of global, tensor"),
        ([{"name": "prune", "density": 1.5}], r"density=1.5 must be in \(0, 1\]"),
        ([{"name": "qsgd", "levels": 0}], "levels=0 must be in"),
        ([{"name": "qsgd", "norm": "l1"}], "norm='l1' must be one of l2, max"),
        ([{"name": "int8", "rounding": "up"}], "rounding='up' must be one of"),
        ([{"name": "sign", "block": 0}], "block=0 must be >= 1"),
        ([{"name": "int8", "error_feedback": True}], "set error_feedback on the chain node"),
        ({"name": "int8"}, "codecs must be a list"),
    ],
)
def test_bad_chains_are_one_line_value_errors(nodes: list, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        build_chain(nodes)
    assert "\n" not in str(err.value)


def test_non_contractive_stages_refuse_error_feedback() -> None:
    """Unbiased rand-k and l2-QSGD with large buckets are not contractive: the residual of error
    feedback would grow every round (measured: QSGD l2 x60 in 30 rounds), so it is refused."""
    with pytest.raises(ValueError, match=r"codecs=\[randk, int8\]: error feedback behind unb"):
        build_chain([{"name": "randk"}, {"name": "int8"}], error_feedback=True)
    with pytest.raises(ValueError, match="use norm=max, block < levels"):
        build_chain([{"name": "topk"}, {"name": "qsgd"}], error_feedback=True)
    build_chain([{"name": "randk", "unbiased": False}], error_feedback=True)
    build_chain([{"name": "qsgd", "norm": "max"}], error_feedback=True)
    build_chain([{"name": "qsgd", "levels": 15, "block": 128}], error_feedback=True)
    build_chain([{"name": "randk"}, {"name": "qsgd"}], error_feedback=False)


@pytest.mark.parametrize(
    ("node", "match"),
    [
        ({"name": "topk", "fraction": 2.0}, r"^compression\.fraction=2.0 must be in"),
        (
            {"name": "chain", "codecs": [{"name": "sign"}, {"name": "prune"}]},
            r"^compression\.codecs=",
        ),
        ({"name": "chain", "codecs": [{"name": "int4", "block": 7}]}, r"compression\.codecs\[0\]"),
        ({"name": "randk", "error_feedback": True}, "feedback behind unbiased rand-k diverges"),
        ({"name": "qsgd", "error_feedback": True}, "qsgd norm=l2 diverges at block=512, levels=7"),
        ({"name": "int8", "levels": 3}, "compression.levels is not an option of compression=int8"),
    ],
)
def test_config_errors_are_one_line_config_errors(node: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        registry.parse("compression", node)
    assert "\n" not in str(err.value)


def test_chain_node_and_build_chain_agree() -> None:
    nodes = [{"name": "topk", "fraction": 0.05}, {"name": "nf4", "block": 128}]
    a = chain_from_node({"name": "chain", "codecs": nodes, "error_feedback": True})
    b = build_chain(nodes, error_feedback=True)
    c = registry.build("compression", OmegaConf.create({"name": "chain", "codecs": nodes}))
    state, spec = lora_state(), StateSpec.of(lora_state())
    pa, ra = a.encode(state, spec=spec, seed=5)
    pb, rb = b.encode(state, spec=spec, seed=5)
    pc, rc = c.encode(state, spec=spec, seed=5)
    assert pa == pb == pc and rc is None
    assert all(np.array_equal(ra[k], rb[k]) for k in state)
    assert repr(a) == "Chain([topk, nf4], error_feedback=True)"


def test_chain_size_is_what_the_last_codec_emits() -> None:
    """[topk, int4] = topk's index section + int4's encoding of the kept values, nothing else."""
    state, spec = lora_state(), StateSpec.of(lora_state())
    x = spec.flatten(state)
    topk, int4 = TopK(TopKOptions(fraction=0.05)), Int4(Int4Options())
    payload, _ = Chain([topk, int4]).encode(state, spec=spec, seed=0)
    head, sel = topk.select(x, spec, 0)
    body = int4.encode(x[sel.positions], sel.seg, np.random.default_rng([0, 1]))
    assert payload == head + body
    assert len(payload) == len(head) + int4.nbytes(sel.seg)
    alone, _ = Chain([topk]).encode(state, spec=spec, seed=0)
    assert alone == head + x[sel.positions].astype("<f4").tobytes()


# --- decoding errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "nodes", [[], [{"name": "int4"}], [{"name": "topk"}, {"name": "qsgd"}], [{"name": "randk"}]]
)
def test_wrong_length_or_spec_is_rejected(nodes: list) -> None:
    state = make_state([(30, 20), (7,)])
    payload, _, _, spec, chain = roundtrip(nodes, state)
    for bad in (payload[:-1], payload + b"\0"):
        with pytest.raises(ValueError, match="payload"):
            chain.decode(bad, spec)
    other = StateSpec(spec.keys, ((60, 20), (7,)))  # no framing: a spec of equal size passes
    with pytest.raises(ValueError):
        chain.decode(payload, other)
    with pytest.raises(ValueError, match="missing"):
        chain.encode({"t0": state["t0"]}, spec=spec, seed=0)
    with pytest.raises(ValueError, match="shape"):
        chain.encode({**state, "t1": np.zeros(8, np.float32)}, spec=spec, seed=0)
    with pytest.raises(ValueError, match="seed"):
        chain.encode(state, spec=spec, seed=-1)


def test_corrupt_index_tag_is_rejected() -> None:
    payload, _, _, spec, chain = roundtrip([{"name": "topk"}], make_state([(2000,)]))
    with pytest.raises(ValueError, match="unknown index format tag 7"):
        chain.decode(bytes([7]) + payload[1:], spec)


def test_residual_requires_error_feedback() -> None:
    state = make_state([(10,)])
    spec = StateSpec.of(state)
    with pytest.raises(ValueError, match="error_feedback off"):
        build_chain([{"name": "int8"}]).encode(state, spec=spec, seed=0, residual=state)


def test_inputs_are_not_modified_and_read_only_inputs_work() -> None:
    state = make_state([(100, 3)], seed=2)
    for v in state.values():
        v.setflags(write=False)  # as arrays arrive through Ray's object store
    before = {k: v.copy() for k, v in state.items()}
    chain, spec = build_chain([{"name": "topk"}, {"name": "sign"}], True), StateSpec.of(state)
    _, residual = chain.encode(state, spec=spec, seed=0, residual=state)
    out = chain.decode(chain.encode(state, spec=spec, seed=0, residual=residual)[0], spec)
    assert all(np.array_equal(before[k], state[k]) for k in state)
    out["t0"] += 1  # decoded arrays are writable float32
    assert out["t0"].dtype == np.float32


# --- error feedback ------------------------------------------------------------------------

EF_CHAINS = [
    [{"name": "topk", "fraction": 0.01}],
    [{"name": "topk", "fraction": 0.02}, {"name": "int8"}],
    [{"name": "sign"}],
    [{"name": "int4", "block": 64}],
    [{"name": "nf4"}],
    [{"name": "qsgd", "norm": "max"}],
    [{"name": "randk", "fraction": 0.05, "unbiased": False}, {"name": "bf16"}],
    [{"name": "prune", "density": 0.05, "structured": True}, {"name": "int4"}],
]


@pytest.mark.parametrize("nodes", EF_CHAINS, ids=str)
def test_error_feedback_telescopes(nodes: list) -> None:
    """sum_t decode(payload_t) + e_T = sum_t delta_t, to float32 tolerance, over 40 rounds."""
    chain = build_chain(nodes, error_feedback=True)
    spec = StateSpec.of(lora_state())
    raw = np.zeros(spec.size, np.float64)
    sent = np.zeros(spec.size, np.float64)
    residual = None
    for t in range(40):
        delta = lora_state(seed=100 + t)
        payload, residual = chain.encode(delta, spec=spec, seed=t, residual=residual)
        raw += spec.flatten(delta)
        sent += chain.decode_flat(payload, spec)
    assert set(residual) == set(spec.keys)
    assert all(v.dtype == np.float32 for v in residual.values())
    gap = raw - sent - spec.flatten(residual)
    assert np.abs(gap).max() <= 1e-5 * np.abs(raw).max()


def test_residual_is_a_plain_state_that_survives_pickling() -> None:
    """Checkpoint the residual after 5 rounds, restore, continue: same bytes as never stopping."""
    chain = build_chain([{"name": "topk", "fraction": 0.05}, {"name": "qsgd", "norm": "max"}], True)
    spec = StateSpec.of(lora_state())

    def run(rounds: range, residual: dict | None) -> tuple[list[bytes], dict]:
        out = []
        for t in rounds:
            p, residual = chain.encode(lora_state(seed=t), spec=spec, seed=t, residual=residual)
            out.append(p)
        return out, residual

    straight, end = run(range(10), None)
    first, mid = run(range(5), None)
    assert type(mid) is dict and all(type(v) is np.ndarray for v in mid.values())
    restored = pickle.loads(pickle.dumps(mid))
    second, end2 = run(range(5, 10), restored)
    assert first + second == straight
    assert all(np.array_equal(end[k], end2[k]) for k in end)


# --- summability and norm growth -----------------------------------------------------------


@pytest.mark.parametrize(
    "nodes", [[], [{"name": "randk", "fraction": 0.2}], [{"name": "randk", "unbiased": False}]]
)
def test_summable_chains_decode_the_sum_of_payloads(nodes: list) -> None:
    chain = build_chain(nodes)
    assert chain.summable
    spec = StateSpec.of(lora_state())
    payloads = [chain.encode(lora_state(seed=c), spec=spec, seed=77)[0] for c in range(5)]
    summed = chain.decode_flat(chain.sum_payloads(payloads, spec), spec)
    expect = sum(chain.decode_flat(p, spec) for p in payloads)
    np.testing.assert_allclose(summed, expect, rtol=1e-5, atol=1e-6 * np.abs(expect).max())
    other = chain.encode(lora_state(), spec=spec, seed=78)[0]
    if nodes:
        with pytest.raises(ValueError, match="different seeds"):
            chain.sum_payloads([payloads[0], other], spec)


@pytest.mark.parametrize(
    "nodes",
    [
        [{"name": n}]
        for n in ("fp16", "bf16", "int8", "int4", "nf4", "qsgd", "sign", "topk", "prune")
    ]
    + [[{"name": "randk"}, {"name": "fp16"}]],
    ids=str,
)
def test_only_none_and_randk_are_summable(nodes: list) -> None:
    chain = build_chain(nodes)
    assert not chain.summable
    with pytest.raises(ValueError, match="not summable"):
        chain.sum_payloads([b""], StateSpec.of({}))


GROW = {
    "fp16": True, "bf16": True, "int8": True, "int4": True, "nf4": True, "qsgd": True,
    "randk": True, "sign": False, "topk": False, "prune": False,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GROW))
def test_can_grow_norm_flag_is_honest(name: str) -> None:
    """Flag False: no decode of 300 random inputs exceeds the input norm. Flag True: some does."""
    node = (
        {"name": name, "block": 16} if name in ("int8", "int4", "nf4", "qsgd") else {"name": name}
    )
    chain = build_chain([node])
    assert chain.can_grow_norm is GROW[name]
    rng = np.random.default_rng(0)
    grew = False
    for t in range(300):
        x = (rng.standard_normal(48) * rng.uniform(0.1, 10, 48)).astype(np.float32)
        spec = StateSpec.of({"x": x})
        xhat = chain.decode_flat(chain.encode({"x": x}, spec=spec, seed=t)[0], spec)
        grew |= bool(np.linalg.norm(xhat.astype(np.float64)) > np.linalg.norm(x.astype(np.float64)))
    assert grew is GROW[name]


def test_chain_flags_combine() -> None:
    assert not build_chain([{"name": "topk"}, {"name": "sign"}]).can_grow_norm
    assert build_chain([{"name": "topk"}, {"name": "int8"}]).can_grow_norm
    assert build_chain([{"name": "randk", "unbiased": False}]).can_grow_norm is False
    assert build_chain([]).summable and not build_chain([]).can_grow_norm


def test_downlink_use_without_error_feedback() -> None:
    """The broadcast global state through the same chain: residual stays None."""
    chain = build_chain([{"name": "bf16"}])
    state = lora_state()
    payload, residual = chain.encode(state, spec=StateSpec.of(state), seed=0)
    assert residual is None and len(payload) == 2 * StateSpec.of(state).size


def test_index_section_parse_matches_select() -> None:
    state, spec = lora_state(), StateSpec.of(lora_state())
    topk = TopK(TopKOptions(fraction=0.03, scope="tensor"))
    head, sel = topk.select(spec.flatten(state), spec, 0)
    reader = Reader(head)
    again = topk.parse(reader, spec)
    assert reader.rest() == 0
    np.testing.assert_array_equal(again.positions, sel.positions)
    np.testing.assert_array_equal(again.seg, sel.seg)


def test_yaml_defaults_match_dataclass_defaults() -> None:
    """A YAML restates (and comments) its codec's defaults, so they cannot drift apart; only
    error_feedback is chosen per YAML (on for topk and sign)."""
    from fedray.compression.lib.chain import _STAGES

    for path in OURS:
        node = yaml.safe_load(path.read_text())
        if node["name"] == "chain":
            continue
        defaults = vars(_STAGES[node["name"]][0]())
        node.pop("error_feedback")
        assert {k: defaults[k] for k in node} == node, path.name


# --- any chain, any shapes -----------------------------------------------------------------

SPARSE_NODES = [
    None,
    {"name": "topk", "fraction": 0.3},
    {"name": "topk", "k": 2, "scope": "tensor"},
    {"name": "randk", "fraction": 0.5, "unbiased": False},
    {"name": "prune", "density": 0.4, "structured": True},
]
QUANT_NODES = [
    None,
    {"name": "fp16"},
    {"name": "bf16"},
    {"name": "int8", "block": 4},
    {"name": "int4", "rounding": "stochastic"},
    {"name": "nf4", "block": 6},
    {"name": "qsgd", "levels": 3, "norm": "max"},
    {"name": "sign", "block": 5},
]


@settings(max_examples=120, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 9), max_size=3).map(tuple), min_size=1, max_size=4),
    sparse=st.sampled_from(SPARSE_NODES),
    quant=st.sampled_from(QUANT_NODES),
    seed=st.integers(0, 2**64 - 1),
)
def test_any_chain_round_trips_shapes_and_one_round_of_feedback(shapes, sparse, quant, seed):
    """Decoded keys/shapes/dtype match, same seed gives the same bytes, a dense payload has its
    formula's size, and one error-feedback step satisfies decoded + residual = input."""
    state = make_state(shapes, seed=seed % 1000)
    nodes = [n for n in (sparse, quant) if n]
    chain, spec = build_chain(nodes, error_feedback=True), StateSpec.of(state)
    payload, residual = chain.encode(state, spec=spec, seed=seed)
    assert payload == chain.encode(state, spec=spec, seed=seed)[0]
    out = chain.decode(payload, spec)
    assert all(out[k].shape == state[k].shape and out[k].dtype == np.float32 for k in state)
    if sparse is None:
        assert len(payload) == quantizer_nbytes(quant, spec.sizes)
    x = spec.flatten(state)
    back = chain.decode_flat(payload, spec) + spec.flatten(residual)
    np.testing.assert_allclose(back, x, rtol=1e-6, atol=1e-6 * (np.abs(x).max() if x.size else 0))
