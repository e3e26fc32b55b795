"""Source ``digits``: scikit-learn's bundled handwritten digits (offline), 10 classes.

1,797 grey 8x8 images (values 0..16, scaled here to uint8 0..255) as ``features["image"]``
[N, 8, 8]; labels 0..9. The test set is held out per class like every labelled source
(``data.test_fraction``, ``data.max_test``); partition with any partitioner (Dirichlet label
skew, shards, iid).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedray.core.errors import DataError
from fedray.data.base import Corpus
from fedray.data.sources import register_source
from fedray.data.split import by_label, holdout


@register_source("digits")
def digits(cfg: Any, seed: int) -> tuple[Corpus, np.ndarray, np.ndarray]:
    """``sklearn.datasets.load_digits``: images [1797, 8, 8] uint8, labels 0..9."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise DataError("data.name=digits needs scikit-learn; pip install scikit-learn") from None
    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images) * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    names = [str(c) for c in range(10)]
    pool, test = holdout(
        by_label(labels, len(names)), float(cfg.test_fraction), int(cfg.max_test), seed
    )
    corpus = Corpus([], labels, None, names, str(cfg.task), features={"image": images})
    return corpus, pool, test
