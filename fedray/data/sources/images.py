"""Source ``image_folder``: a folder of images in class sub-folders (torchvision's ImageFolder).

``data.path=DIR``: every sub-folder of DIR is a class (sorted names = label order); its image
files (any depth below it; png, jpg, jpeg, bmp, gif, webp, tif, tiff) are its samples, in
sorted path order. ``data.test_split=DIR2`` names a second folder with the same classes as the
test set; otherwise ``data.test_fraction`` is held out per class. Images stay on disk as paths
(``features["image"]``) until the task encodes them. Tables of image paths or Hugging Face image
datasets go through ``data=files`` / ``data=hf`` with ``data.image_column``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedray.core.errors import DataError
from fedray.data.base import Corpus
from fedray.data.sources import register_source
from fedray.data.split import by_label, holdout

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def scan(
    root: str, key: str, classes: list[str] | None = None
) -> tuple[list[str], list[int], list[str]]:
    """(image paths, labels, class names) of an ImageFolder-style directory."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"{key}={root!r}: not a directory; give a folder of class sub-folders")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = classes if classes is not None else found
    if classes is not None and set(found) - set(classes):
        extra = sorted(set(found) - set(classes))
        raise DataError(f"{key}={root!r}: classes {extra[:3]} are not in data.path's classes")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        sub = folder / name
        files = (
            sorted(p for p in sub.rglob("*") if p.suffix.lower() in SUFFIXES)
            if sub.is_dir()
            else []
        )
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise DataError(
            f"{key}={root!r}: no image ({', '.join(SUFFIXES)}) in class sub-folders; expected "
            "DIR/<class>/<image>"
        )
    return paths, labels, names


@register_source("image_folder")
def image_folder(cfg: Any, seed: int) -> tuple[Corpus, np.ndarray, np.ndarray]:
    """Images under ``data.path/<class>/``; labels are the sorted class folder names."""
    if not cfg.path:
        raise DataError("data.name=image_folder needs data.path (a folder of class sub-folders)")
    paths, labels, names = scan(str(cfg.path), "data.path")
    n_train = len(paths)
    if cfg.test_split:
        test_paths, test_labels, _ = scan(str(cfg.test_split), "data.test_split", names)
        paths, labels = paths + test_paths, labels + test_labels
    label_arr = np.asarray(labels, dtype=np.int64)
    images = np.empty(len(paths), dtype=object)
    images[:] = paths
    corpus = Corpus([], label_arr, None, names, str(cfg.task), features={"image": images})
    if cfg.test_split:
        return corpus, np.arange(n_train), np.arange(n_train, len(paths))
    strata = by_label(label_arr, len(names))
    pool, test = holdout(strata, float(cfg.test_fraction), int(cfg.max_test), seed)
    return corpus, pool, test
