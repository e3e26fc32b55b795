"""On a realistic LoRA update (76k values in 26 tensors): metadata overhead, bytes per round;
on 1M values: encode + decode time. Run with `-s` to see the tables."""

from __future__ import annotations

import time
from math import ceil

import numpy as np
import pytest
from codec_helpers import lora_state

from fedray.compression import StateSpec, build_chain

TABLE = [
    [],
    [{"name": "fp16"}],
    [{"name": "bf16"}],
    [{"name": "int8"}],
    [{"name": "int4"}],
    [{"name": "nf4"}],
    [{"name": "qsgd"}],
    [{"name": "qsgd", "norm": "max"}],
    [{"name": "sign"}],
    [{"name": "topk", "fraction": 0.01}],
    [{"name": "topk", "fraction": 0.1}],
    [{"name": "randk", "fraction": 0.1}],
    [{"name": "prune", "density": 0.1}],
    [{"name": "prune", "density": 0.1, "structured": True}],
    [{"name": "topk", "fraction": 0.01}, {"name": "int8"}],
    [{"name": "topk", "fraction": 0.1}, {"name": "int4"}],
    [{"name": "randk", "fraction": 0.1}, {"name": "nf4"}],
    [{"name": "prune", "density": 0.1, "structured": True}, {"name": "sign"}],
]


def label(nodes: list) -> str:
    return (
        " + ".join(
            n["name"] + "".join(f" {k}={v}" for k, v in n.items() if k != "name") for n in nodes
        )
        or "none (dense fp32)"
    )


def test_lora_state_is_the_documented_shape() -> None:
    spec = StateSpec.of(lora_state())
    assert len(spec.keys) == 26 and spec.size == 12 * 2 * 3072 + 6 * 384 + 6 == 76038


@pytest.mark.parametrize("name", ["int4", "nf4"])
def test_four_bit_metadata_overhead_under_two_percent(name: str) -> None:
    """(payload - n/2 bytes of 4-bit codes) / payload <= 2% with the default block (256)."""
    state = lora_state()
    spec = StateSpec.of(state)
    payload, _ = build_chain([{"name": name}]).encode(state, spec=spec, seed=0)
    overhead = (len(payload) - spec.size / 2) / len(payload)
    blocks = sum(ceil(int(n) / 256) for n in spec.sizes)
    assert len(payload) == 2 * blocks + ceil(spec.size / 2)
    assert overhead <= 0.02, overhead
    print(f"\n{name}: {len(payload)} bytes, {blocks} bf16 scales, metadata {100 * overhead:.2f}%")


def test_bytes_per_round_on_lora_state() -> None:
    state = lora_state()
    spec = StateSpec.of(state)
    dense = 4 * spec.size
    x = spec.flatten(state)
    rows = []
    for nodes in TABLE:
        chain = build_chain(nodes)
        payload, _ = chain.encode(state, spec=spec, seed=0)
        xhat = chain.decode_flat(payload, spec)
        rel = float(np.linalg.norm(xhat - x) / np.linalg.norm(x))
        rows.append((label(nodes), len(payload), dense / len(payload), rel))
        assert len(payload) <= dense
    print(f"\n{'chain':<44} {'bytes':>8} {'x smaller':>9} {'rel. L2 err':>11}")
    for name, n, ratio, rel in rows:
        print(f"{name:<44} {n:>8} {ratio:>9.1f} {rel:>11.4f}")


@pytest.mark.slow
def test_one_million_values_encode_decode_under_100ms() -> None:
    """Best of 3 encode + decode of a 1M-value update (4 tensors), per chain."""
    rng = np.random.default_rng(0)
    state = {f"w{i}": (rng.standard_normal((500, 500)) * 1e-3).astype(np.float32) for i in range(4)}
    spec = StateSpec.of(state)
    times = {}
    for nodes in TABLE:
        chain = build_chain(nodes)
        best = np.inf
        for seed in range(3):
            t0 = time.perf_counter()
            payload, _ = chain.encode(state, spec=spec, seed=seed)
            chain.decode(payload, spec)
            best = min(best, time.perf_counter() - t0)
        times[label(nodes)] = best
    print(f"\n{'chain (1M values)':<44} {'enc+dec ms':>10}")
    for name, t in times.items():
        print(f"{name:<44} {1000 * t:>10.1f}")
    assert max(times.values()) < 0.1, times
