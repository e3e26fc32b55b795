"""The sources of the non-text tasks: digits, Synthetic(alpha, beta), MovieLens, image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedray.core.config import DataConfig, PartitionConfig, RatingsConfig, SyntheticConfig
from fedray.core.errors import ConfigError, DataError
from fedray.data import build_federated_data, load_source
from fedray.data.sources.movielens import leave_one_out
from fedray.data.sources.synthetic import generate


def test_digits_images_labels_and_a_per_class_test_set() -> None:
    cfg = DataConfig(name="digits", task="image_classification", max_test=0)
    corpus, pool, test = load_source(cfg, 0)
    images = corpus.features["image"]
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 255
    assert len(corpus) == 1797 and corpus.texts == [] and corpus.label_names == list("0123456789")
    assert sorted([*pool.tolist(), *test.tolist()]) == list(range(1797))
    per_class = np.bincount(corpus.labels[test], minlength=10)
    assert per_class.sum() == 269 and set(per_class.tolist()) == {26, 27}  # 15% of 174..183
    _, _, test1 = load_source(cfg, 1)
    assert not np.array_equal(test, test1)  # the hold-out follows the run seed


def test_dirichlet_digits_clients_are_label_skewed() -> None:
    cfg = DataConfig(name="digits", task="image_classification", max_test=0)
    skewed = build_federated_data(cfg, PartitionConfig(num_clients=20, alpha=0.1), 0)
    even = build_federated_data(cfg, PartitionConfig(name="iid", num_clients=20), 0)

    def top_share(data) -> float:  # mean share of each client's most common class
        hist = data.label_histogram()
        return float((hist.max(1) / hist.sum(1).clip(1)).mean())

    assert top_share(skewed) > 0.6 > 0.25 > top_share(even)


def test_synthetic_follows_the_fedprox_generator() -> None:
    x, y, device = generate(1.0, 1.0, False, 30, 60, 10, seed=0)
    sizes = np.bincount(device)
    assert x.shape == (len(y), 60) and x.dtype == np.float32 and sizes.min() >= 50
    assert sizes.max() > 5 * np.median(sizes)  # power-law (lognormal) size skew
    # feature variance decays as j^-1.2 inside a device: the first coordinate varies most
    first = x[device == int(np.argmax(sizes))]
    assert first[:, 0].var() > 10 * first[:, -1].var()
    again = generate(1.0, 1.0, False, 30, 60, 10, seed=0)
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])


def test_beta_shifts_the_features_and_alpha_cannot_change_a_label() -> None:
    """beta moves each device's feature mean; alpha only adds u_k to every entry of W_k and b_k,
    which shifts all ten logits of a sample by the same amount u_k * (sum(x) + 1): argmax, the
    label, cannot change (a property of the FedProx generator itself)."""

    def device_means(beta: float) -> float:
        x, _, device = generate(0.0, beta, False, 30, 60, 10, seed=0)
        means = np.stack([x[device == k].mean(0) for k in range(30)])
        return float(np.abs(means - means.mean(0)).mean())

    assert device_means(1.0) > 1.2 * device_means(0.0)
    labels = [generate(a, 1.0, False, 30, 60, 10, seed=0)[1] for a in (0.0, 0.5, 1.0)]
    assert np.array_equal(labels[0], labels[1]) and np.array_equal(labels[0], labels[2])
    _, iid_y, iid_device = generate(0.0, 0.0, True, 30, 60, 10, seed=0)
    hist = np.stack([np.bincount(iid_y[iid_device == k], minlength=10) for k in range(30)])
    niid = generate(0.0, 0.0, False, 30, 60, 10, seed=0)
    hist_n = np.stack([np.bincount(niid[1][niid[2] == k], minlength=10) for k in range(30)])
    spread = [float((h.max(1) / h.sum(1)).mean()) for h in (hist, hist_n)]
    assert spread[0] < 0.5 < spread[1]  # iid: no device dominated by one class


def test_synthetic_source_holds_out_per_device_and_groups_by_device() -> None:
    cfg = DataConfig(
        name="synthetic",
        task="vector_classification",
        test_fraction=0.2,
        max_test=0,
        synthetic=SyntheticConfig(alpha=0.5, beta=0.5),
    )
    data = build_federated_data(cfg, PartitionConfig(name="natural"), 0)
    groups = np.array(data.corpus.groups)
    assert data.num_clients() == 30
    for k, rows in enumerate(data.clients):
        assert set(groups[rows]) == {f"device{k:03d}"}
        held = np.sum(groups[data.test_idx] == f"device{k:03d}")
        assert held == np.floor(0.2 * (len(rows) + held) + 0.5)


@pytest.mark.parametrize("key", ["alpha", "devices", "classes"])
def test_bad_synthetic_options_name_the_key(key: str) -> None:
    with pytest.raises(ConfigError, match=f"data.synthetic.{key}="):
        SyntheticConfig(**{key: -1})


def test_leave_one_out_takes_each_users_last_sample() -> None:
    user = np.array([0, 0, 0, 1, 2, 2])
    pool, test = leave_one_out(user)
    assert test.tolist() == [2, 5]  # user 1 has a single rating: kept for training
    assert pool.tolist() == [0, 1, 3, 4]


def _ratings_csv(tmp_path: Path) -> Path:
    rows = [  # user, item, rating, time; item 30 has one rating only
        (7, 10, 4.0, 3), (7, 20, 3.0, 1), (7, 30, 5.0, 2),
        (9, 10, 2.0, 5), (9, 20, 1.0, 9),
        (8, 20, 5.0, 1), (8, 10, 4.5, 2),
    ]  # fmt: skip
    path = tmp_path / "ratings.csv"
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(path)
    return path


def test_movielens_file_dense_ids_filter_and_latest_rating_held_out(tmp_path: Path) -> None:
    cfg = DataConfig(
        name="movielens",
        task="recommendation",
        path=str(_ratings_csv(tmp_path)),
        max_test=0,
        ratings=RatingsConfig(min_item_ratings=2),
    )
    corpus, _, test = load_source(cfg, 0)
    f = corpus.features
    assert f["user"].tolist() == [0, 0, 1, 1, 2, 2]  # users 7, 8, 9 -> 0, 1, 2; item 30 gone
    assert f["item"].tolist() == [1, 0, 1, 0, 0, 1]  # sorted by (user, time)
    assert test.tolist() == [1, 3, 5]  # each user's latest rating
    assert f["rating"][test].tolist() == [4.0, 4.5, 1.0]
    data = build_federated_data(cfg, PartitionConfig(name="natural"), 0)
    assert [c.tolist() for c in data.clients] == [[0], [2], [4]]  # one client per user


def test_builtin_movielens_has_one_client_per_user() -> None:
    cfg = DataConfig(name="movielens", task="recommendation", max_test=0)
    data = build_federated_data(cfg, PartitionConfig(name="natural"), 0)
    f = data.corpus.features
    assert data.num_clients() == 671 and len(data.test_idx) == 671
    assert int(f["item"].max()) + 1 == 3496  # movies with >= 5 ratings
    last = {
        int(u): int(t)
        for u, t in zip(f["user"][data.test_idx], f["time"][data.test_idx], strict=True)
    }
    for k in (0, 300, 670):
        rows = data.clients[k]
        (user,) = set(f["user"][rows].tolist())
        assert f["time"][rows].max() <= last[user]


def test_movielens_names_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    pd.DataFrame({"user": [1], "item": [2]}).to_csv(path)
    cfg = DataConfig(name="movielens", task="recommendation", path=str(path))
    with pytest.raises(DataError, match=r"data\.ratings: columns"):
        load_source(cfg, 0)


def _image_folder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    from PIL import Image

    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((5, 7, 3), 40 * c + i, dtype=np.uint8)).save(
                folder / f"{i}.png"
            )
    return root


def test_image_folder_labels_are_sorted_class_folders(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "train")
    cfg = DataConfig(name="image_folder", path=str(root), task="image_classification")
    corpus, pool, test = load_source(cfg, 0)
    assert corpus.label_names == ["class0", "class1", "class2"]
    assert np.bincount(corpus.labels).tolist() == [4, 4, 4]
    assert len(test) == 3 and sorted(corpus.labels[test].tolist()) == [0, 1, 2]
    assert all(Path(p).is_file() for p in corpus.features["image"])
    split = _image_folder(tmp_path / "test", per_class=1)
    corpus, pool, test = load_source(
        DataConfig(name="image_folder", path=str(root), test_split=str(split)), 0
    )
    assert len(pool) == 12 and len(test) == 3


def test_image_folder_errors_say_what_layout_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"needs data\.path"):
        load_source(DataConfig(name="image_folder"), 0)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="DIR/<class>/<image>"):
        load_source(DataConfig(name="image_folder", path=str(tmp_path / "empty")), 0)


def test_files_with_an_image_column_resolve_relative_paths(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs")
    table = pd.DataFrame(
        {
            "file": [str(p.relative_to(tmp_path)) for p in sorted(root.rglob("*.png"))],
            "label": [p.parent.name for p in sorted(root.rglob("*.png"))],
        }
    )
    table.to_csv(tmp_path / "index.csv", index=False)
    cfg = DataConfig(
        name="files",
        path=str(tmp_path / "index.csv"),
        image_column="file",
        task="image_classification",
        min_words=0,
    )
    corpus, _, _ = load_source(cfg, 0)
    assert corpus.texts == [] and len(corpus) == 12 and corpus.label_names[0] == "class0"
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in corpus.features["image"])
