"""The update pipeline with the default (identity) stages, and its byte counting."""

from __future__ import annotations

import numpy as np

from fedray.cli import compose
from fedray.pipeline import Pipeline
from fedray.types import ClientUpdate


def test_client_half_sends_delta_and_counts_bytes() -> None:
    pipeline = Pipeline.from_config(compose([]))
    g = {"a": np.ones(3, np.float32), "b": np.zeros((2, 2), np.float32)}
    trained = {"a": np.full(3, 1.5, np.float32), "b": np.ones((2, 2), np.float32)}
    payload, nbytes = pipeline.client(trained, g, client_id=3, round=1)
    np.testing.assert_array_equal(payload["a"], [0.5, 0.5, 0.5])
    assert nbytes == 4 * (3 + 4)
    assert pipeline.down_nbytes(g) == 28
    [c] = pipeline.server([ClientUpdate(3, 10, payload, nbytes)], round=1)
    assert (c.client_id, c.num_samples) == (3, 10)
    np.testing.assert_array_equal(c.delta["b"], np.ones((2, 2)))


def test_state_dict_round_trip() -> None:
    pipeline = Pipeline.from_config(compose([]))
    pipeline.load_state_dict(pipeline.state_dict())
