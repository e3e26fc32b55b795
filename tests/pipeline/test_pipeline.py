"""The update pipeline with the default (identity) stages, and its byte counting."""

from __future__ import annotations

import pickle

import numpy as np

from fedray.app.cli import compose
from fedray.app.spec import build_spec
from fedray.core.types import Update, spec_of
from fedray.pipeline import Pipeline


def _pipeline() -> Pipeline:
    return Pipeline.from_spec(build_spec(compose(["tracking=none"])))


def test_client_half_sends_the_delta_as_dense_bytes_and_counts_them() -> None:
    pipeline = _pipeline()
    g = {"a": np.ones(3, np.float32), "b": np.zeros((2, 2), np.float32)}
    delta = {"a": np.full(3, 0.5, np.float32), "b": np.ones((2, 2), np.float32)}
    spec = spec_of(g)
    payload, state = pipeline.client(
        delta,
        spec=spec,
        weight=10.0,
        client_id=3,
        round=1,
        seed=0,
        round_message=None,
        client_message=None,
        client_state={},
        session={},
    )
    assert payload.dtype == np.uint8 and payload.nbytes == 4 * (3 + 4) == len(payload.tobytes())
    assert state == {}  # no error feedback, nothing stored
    c = pipeline.decode(Update(3, 10, payload, payload.nbytes), spec)
    assert (c.client_id, c.num_samples) == (3, 10)
    np.testing.assert_array_equal(c.delta["a"], [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(c.delta["b"], np.ones((2, 2)))


def test_downlink_round_trip_is_exact_and_survives_pickling() -> None:
    pipeline = _pipeline()
    rng = np.random.default_rng(0)
    g = {"w": rng.standard_normal((5, 7)).astype(np.float32), "b": np.arange(3, dtype=np.float32)}
    payload = pipeline.encode_down(g, spec_of(g), seed=0)
    back = pipeline.decode_down(pickle.loads(pickle.dumps(payload)), spec_of(g))
    assert list(back) == list(g)
    for k in g:
        np.testing.assert_array_equal(back[k], g[k])


def test_state_dict_round_trip() -> None:
    pipeline = _pipeline()
    pipeline.load_state_dict(pipeline.state_dict())
