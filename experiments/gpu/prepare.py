"""Prepare the GPU check's inputs on a machine with the full fedray install.

Writes DIR/w1.npz (the W1 training pool, tokenized as fedray's actors tokenize it) and
DIR/minilm/ (all-MiniLM-L6-v2 with its weights stored in float16, so that the folder fits the
GPU machine's transfer limit; the check loads them back as float32).

Usage: python experiments/gpu/prepare.py DIR
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fedray.app.cli import compose
from fedray.data import build_federated_data
from fedray.models import encode, load_tokenizer, resolve_model_path


def main(out: Path) -> None:
    cfg = compose(["experiment=w1"])
    data = build_federated_data(cfg.data, cfg.partition, cfg.seed)
    idx = np.concatenate([np.asarray(c) for c in data.clients])
    tokenizer = load_tokenizer(cfg.model)
    enc = encode(tokenizer, [data.corpus.texts[i] for i in idx], cfg.data.max_length)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "w1.npz",
        input_ids=np.asarray(enc["input_ids"], dtype=np.int32),
        attention_mask=np.asarray(enc["attention_mask"], dtype=np.int8),
        labels=np.asarray(data.corpus.labels[idx], dtype=np.int64),
        num_labels=np.int64(data.corpus.num_labels()),
    )
    src = Path(resolve_model_path("builtin:minilm"))
    dst = out / "minilm"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "*.md"))
    weights = load_file(src / "model.safetensors")
    save_file({k: v.to(torch.float16) for k, v in weights.items()}, dst / "model.safetensors")
    print(f"{len(idx)} samples, {data.corpus.num_labels()} labels -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
