"""Embedding-row lookups (`client.embedding_rows=lookups`) and the row-weighted mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.client.rows import count_lookups, trainable_embeddings
from fedray.core.statemath import mean_of, row_weighted_mean
from fedray.core.types import Contribution
from fedray.models.nets import MatrixFactorization


def _mf() -> MatrixFactorization:
    torch.manual_seed(0)
    return MatrixFactorization(users=3, items=7, dim=4, std=0.1, mean=3.0)


def test_counts_are_the_training_lookups_of_each_trainable_table() -> None:
    model = _mf()
    assert set(trainable_embeddings(model)) == {
        "user.weight",
        "user_bias.weight",
        "item.weight",
        "item_bias.weight",
    }
    users, items = torch.tensor([0, 0, 2]), torch.tensor([1, 5, 5])
    with count_lookups(model) as lookups:
        model.train()
        model(users, items)
        model(torch.tensor([2]), torch.tensor([6]))
        model.eval()
        model(torch.tensor([1]), torch.tensor([0]))  # evaluation passes do not count
    rows, counts = lookups.sparse()["item.weight"]
    np.testing.assert_array_equal(rows, [1, 5, 6])
    np.testing.assert_array_equal(counts, [1, 2, 1])
    rows, counts = lookups.sparse()["user_bias.weight"]
    np.testing.assert_array_equal(rows, [0, 2])
    np.testing.assert_array_equal(counts, [2, 2])
    model.train()
    model(users, items)  # the hooks are gone after the block
    assert lookups.sparse()["item.weight"][1].sum() == 4


def test_frozen_tables_and_disabled_counting_count_nothing() -> None:
    model = _mf()
    model.item.weight.requires_grad_(False)
    assert "item.weight" not in trainable_embeddings(model)
    with count_lookups(model, enabled=False) as lookups:
        assert lookups is None


def test_each_row_is_averaged_over_the_clients_that_looked_it_up() -> None:
    d1 = np.array([[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]], np.float32)
    d2 = np.array([[3.0, 3.0], [0.0, 0.0], [9.0, 9.0]], np.float32)
    counts = [
        (np.array([0, 1]), np.array([1.0, 4.0], np.float32)),
        (np.array([0]), np.array([3.0], np.float32)),
    ]
    out = row_weighted_mean([d1, d2], counts)
    # row 0: (1*1 + 3*3) / 4; row 1: only client 1 looked it up; row 2: nobody (no move)
    np.testing.assert_allclose(out, [[2.5, 2.5], [2.0, 2.0], [0.0, 0.0]])
    assert out.dtype == np.float32


def test_mean_of_weights_counted_tables_by_rows_and_the_rest_by_samples() -> None:
    def contribution(cid: int, table: list[float], bias: float, n: int, rows, cnt) -> Contribution:
        delta = {"item": np.array(table, np.float32)[:, None], "b": np.array([bias], np.float32)}
        counts = {"item": (np.array(rows), np.array(cnt, np.float32))}
        return Contribution(cid, delta, n, row_counts=counts)

    agg = mean_of(
        [
            contribution(0, [4.0, 0.0, 0.0], 1.0, 1, [0], [2.0]),
            contribution(1, [0.0, 6.0, 0.0], 5.0, 3, [1, 2], [1.0, 1.0]),
        ]
    )
    np.testing.assert_allclose(agg.mean["item"][:, 0], [4.0, 6.0, 0.0])
    np.testing.assert_allclose(agg.mean["b"], [0.25 * 1.0 + 0.75 * 5.0])  # sample weights
    assert agg.weight == 4


def test_row_counts_on_some_updates_only_or_out_of_range_are_refused() -> None:
    delta = {"item": np.zeros((2, 1), np.float32)}
    counted = Contribution(0, delta, 1, row_counts={"item": (np.array([0]), np.ones(1))})
    with pytest.raises(ValueError, match="some updates carry embedding row counts"):
        mean_of([counted, Contribution(1, delta, 1)])
    with pytest.raises(ValueError, match="outside"):
        row_weighted_mean([delta["item"]], [(np.array([2]), np.ones(1))])


def test_a_client_that_never_looked_a_table_up_does_not_move_its_rows() -> None:
    delta = {"item": np.ones((2, 1), np.float32)}
    looked = Contribution(0, delta, 1, row_counts={"item": (np.array([1]), np.ones(1))})
    idle = Contribution(1, {"item": 5 * np.ones((2, 1), np.float32)}, 1, row_counts={})
    np.testing.assert_allclose(mean_of([looked, idle]).mean["item"][:, 0], [0.0, 1.0])
