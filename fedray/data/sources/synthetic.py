"""Source ``synthetic``: Synthetic(alpha, beta) of Li et al. (2020, FedProx), after Shamir et al.

A faithful re-implementation of the FedProx repository's generator (``generate_synthetic``)
with numpy's ``default_rng(data.synthetic.seed)``, so the samples differ from the paper's files
but follow the same law. Per device k (``data.synthetic.devices``, 30 in the paper):

    n_k = floor(lognormal(4, 2)) + 50                        (power-law size skew)
    u_k ~ N(0, alpha);  B_k ~ N(0, beta)
    W_k ~ N(u_k, 1) [dim x classes],  b_k ~ N(u_k, 1) [classes]   (iid: one shared W, b ~ N(0, 1))
    v_k ~ N(B_k, 1) [dim]  (iid: v_k = B_k, every coordinate)
    x ~ N(v_k, diag(j^-1.2)), j = 1..dim;   y = argmax(x W_k + b_k)

Li et al. describe alpha as model and beta as data heterogeneity. As generated, alpha cannot
change a label: u_k is added to every entry of W_k and b_k, so all ten logits of a sample move
by the same u_k * (sum(x) + 1) and the argmax stays (tested). The devices' models differ through
their own draws W_k, b_k at any alpha, so even Synthetic(0, 0) is strongly non-IID; beta moves
each device's feature mean v_k. Samples are ``features["x"]``
(float32 [N, dim]); each sample's group is its device (``partition=natural``: one client per
device); ``data.test_fraction`` of each device's samples is held out (the paper's test data is
per device too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedray.data.base import Corpus
from fedray.data.sources import register_source
from fedray.data.split import holdout


def generate(
    alpha: float, beta: float, iid: bool, devices: int, dim: int, classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x float32 [N, dim], y int64 [N], device int64 [N]), devices in order."""
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, devices).astype(np.int64) + 50
    mean_w = rng.normal(0, alpha, devices)
    shift = rng.normal(0, beta, devices)
    std_x = np.power(np.arange(1, dim + 1, dtype=np.float64), -1.2) ** 0.5
    shared_w, shared_b = rng.normal(0, 1, (dim, classes)), rng.normal(0, 1, classes)
    xs, ys, ds = [], [], []
    for k in range(devices):
        mean_x = np.full(dim, shift[k]) if iid else rng.normal(shift[k], 1, dim)
        w = shared_w if iid else rng.normal(mean_w[k], 1, (dim, classes))
        b = shared_b if iid else rng.normal(mean_w[k], 1, classes)
        x = mean_x + rng.standard_normal((int(sizes[k]), dim)) * std_x
        xs.append(x.astype(np.float32))
        ys.append(np.argmax(x @ w + b, axis=1).astype(np.int64))
        ds.append(np.full(int(sizes[k]), k, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ds)


@register_source("synthetic")
def synthetic(cfg: Any, seed: int) -> tuple[Corpus, np.ndarray, np.ndarray]:
    """Synthetic(alpha, beta) (``data.synthetic.*``); the hold-out is per device."""
    s = cfg.synthetic
    x, y, device = generate(
        float(s.alpha),
        float(s.beta),
        bool(s.iid),
        int(s.devices),
        int(s.dim),
        int(s.classes),
        int(s.seed),
    )
    strata = [np.flatnonzero(device == k) for k in range(int(s.devices))]
    pool, test = holdout(strata, float(cfg.test_fraction), int(cfg.max_test), seed)
    corpus = Corpus(
        texts=[],
        labels=y,
        groups=[f"device{k:03d}" for k in device.tolist()],
        label_names=[str(c) for c in range(int(s.classes))],
        task=str(cfg.task),
        features={"x": x},
    )
    return corpus, pool, test
