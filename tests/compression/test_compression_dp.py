"""Codecs and DP clipping: the sensitivity bound must hold for what the server aggregates.

A client that clips its delta to norm C and then encodes it sends a payload whose *decoded*
update can be longer than C when the chain's `can_grow_norm` is set (rounding up, stochastic
levels, unbiased rescaling). Central DP (`dp_fedavg`) therefore clips on the server after
decoding; chains that cannot grow the norm keep a client-side clip valid through the codec.
"""

from __future__ import annotations

import numpy as np
import pytest
from codec_helpers import lora_state

from fedray.compression import StateSpec, build_chain
from fedray.privacy.lib.clipping import clip_to_norm, global_norm

CLIP = 1.0
GROWING = [
    [{"name": "int8"}],
    [{"name": "int4", "rounding": "stochastic"}],
    [{"name": "nf4"}],
    [{"name": "qsgd"}],
    [{"name": "fp16"}],
    [{"name": "randk", "fraction": 0.1}],
    [{"name": "topk", "fraction": 0.1}, {"name": "int8"}],  # the study's chain
]
SHRINKING = [
    [{"name": "topk", "fraction": 0.01}],
    [{"name": "sign"}],
    [{"name": "topk", "fraction": 0.1}, {"name": "sign"}],
    [{"name": "prune", "density": 0.1}],
    [{"name": "randk", "fraction": 0.1, "unbiased": False}],
]


def _clipped_deltas(n: int, density: float = 1.0) -> list[dict]:
    """LoRA-like deltas clipped to exactly C (every one is at the bound, as most are under DP),
    with a fraction `density` of their entries nonzero."""
    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        delta = {
            k: v * np.float32(100.0) * (rng.random(v.shape) < density)
            for k, v in lora_state(seed).items()
        }
        clipped, norm = clip_to_norm(delta, CLIP)
        assert norm > CLIP  # it was clipped
        out.append(clipped)
    return out


def _decoded(nodes: list, delta: dict, seed: int) -> dict:
    chain = build_chain(nodes)
    spec = StateSpec.of(delta)
    return chain.decode(chain.encode(delta, spec=spec, seed=seed)[0], spec)


@pytest.mark.parametrize("nodes", GROWING, ids=lambda n: "+".join(c["name"] for c in n))
def test_a_norm_growing_chain_breaks_a_client_side_clip(nodes: list) -> None:
    chain = build_chain(nodes)
    assert chain.can_grow_norm
    # Behind a sparsifier, an update already that sparse (a LoRA delta's mass often is) keeps
    # every value, and the quantizer's rounding can then push the norm past C.
    deltas = _clipped_deltas(8, density=0.05 if chain.sparsifier else 1.0)
    norms = [global_norm(_decoded(nodes, d, seed)) for seed, d in enumerate(deltas)]
    assert max(norms) > CLIP, "the decoded update exceeds the clip norm: clip after decoding"
    # Clipping what the server decoded restores the bound DP's sensitivity needs.
    for seed, d in enumerate(deltas):
        assert global_norm(clip_to_norm(_decoded(nodes, d, seed), CLIP)[0]) <= CLIP


@pytest.mark.parametrize("nodes", SHRINKING, ids=lambda n: "+".join(c["name"] for c in n))
def test_a_chain_that_cannot_grow_the_norm_keeps_a_client_side_clip(nodes: list) -> None:
    assert not build_chain(nodes).can_grow_norm
    for seed, d in enumerate(_clipped_deltas(8) + _clipped_deltas(8, density=0.05)):
        assert global_norm(_decoded(nodes, d, seed)) <= CLIP
