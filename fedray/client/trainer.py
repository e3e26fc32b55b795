"""Local training and evaluation of one model in plain torch (no Ray): what a client actor runs.

`fit` performs exactly the W1 recipe (see shared/bench/WORKLOAD.md): seed right before training,
`torch.randperm(n)` batch order per epoch, a fresh AdamW per call, the model's own loss.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import peft
import torch
import torch.nn.functional as F

from fedray.config import ModelConfig
from fedray.evaluation import EvalSums, combine
from fedray.models import get_trainable_state, load_model, set_trainable_state
from fedray.types import State

_AMP = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """int64 tensor on `device`, sharing memory with `array` on CPU (read-only input is fine)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return torch.from_numpy(np.asarray(array, dtype=np.int64)).to(device)


class Trainer:
    """Holds one model (loaded once) and trains / evaluates it on in-memory token arrays."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        task: str,
        num_labels: int | None,
        seed: int,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.task = task
        self.device = torch.device(device)
        self.model = load_model(model_cfg, task, num_labels, seed).to(self.device)
        # Mixed precision only on CUDA: fp32 weights, bf16/fp16 autocast; CPU stays float32.
        cuda = self.device.type == "cuda"
        self._amp = _AMP.get(model_cfg.dtype) if cuda else None
        self._params = [p for p in self.model.parameters() if p.requires_grad]

    @property
    def uses_loss_scaling(self) -> bool:
        """True when `fit` scales the loss (float16 autocast on CUDA): gradients are scaled."""
        return self._amp is torch.float16

    def get_state(self) -> State:
        """The trainable state (float32 numpy copies)."""
        return get_trainable_state(self.model)

    def set_state(self, state: State) -> None:
        """Load a trainable state (e.g. the global one) into the model."""
        set_trainable_state(self.model, state)

    def _inputs(self, data: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        ids = _tensor(data["input_ids"], self.device)
        mask = _tensor(data["attention_mask"], self.device)
        if self.task == "classification":
            labels = _tensor(data["labels"], self.device)
        else:  # next-token targets; HF shifts them; padding is ignored
            labels = ids.masked_fill(mask == 0, -100)
        return ids, mask, labels

    def _autocast(self) -> AbstractContextManager:
        return torch.autocast("cuda", dtype=self._amp) if self._amp else nullcontext()

    def fit(
        self,
        data: dict[str, np.ndarray],
        *,
        seed: int,
        epochs: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        max_steps: int = 0,
        extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """Local training (W1 recipe); `extra_loss(model)` is added to each batch's loss.

        Returns the task loss (without `extra_loss`) averaged over batches weighted by their
        sizes, the optimizer steps, the number of samples held (`n`, the FedAvg weight), seconds.
        """
        ids, mask, labels = self._inputs(data)
        n = ids.shape[0]
        start = time.perf_counter()
        model = self.model
        model.train()
        optimizer = torch.optim.AdamW(self._params, lr=lr, weight_decay=weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=self._amp is torch.float16)
        optimizer.zero_grad()
        torch.manual_seed(seed)  # fixes batch order and dropout; nothing may draw before it
        steps, seen, loss_sum = 0, 0, 0.0
        for _ in range(epochs):
            if max_steps and steps >= max_steps:
                break
            perm = torch.randperm(n)
            for i in range(0, n, batch_size):
                if max_steps and steps >= max_steps:
                    break
                idx = perm[i : i + batch_size].to(self.device)
                with self._autocast():
                    task_loss = model(
                        input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]
                    ).loss
                    loss = task_loss if extra_loss is None else task_loss + extra_loss(model)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
                steps += 1
                seen += len(idx)
                loss_sum += task_loss.item() * len(idx)
        return {
            "loss": loss_sum / max(seen, 1),
            "steps": float(steps),
            "samples": float(n),
            "compute_s": time.perf_counter() - start,
        }

    def evaluate(self, data: dict[str, np.ndarray], batch_size: int = 64) -> dict[str, float]:
        """Classification: accuracy and mean CE; causal LM: token CE, perplexity, accuracy."""
        return combine([self.eval_sums(data, batch_size)], self.task)

    @torch.inference_mode()
    def eval_sums(
        self,
        data: dict[str, np.ndarray],
        batch_size: int = 64,
        start: int = 0,
        stop: int | None = None,
    ) -> EvalSums:
        """Summed loss per batch, correct predictions and scored targets over rows [start, stop).

        Batches start at `start`; :func:`fedray.evaluation.shard_rows` gives batch-aligned
        ranges, so that sharded and whole passes score the same batches.
        """
        rows = slice(start, stop)
        ids, mask, labels = self._inputs({k: v[rows] for k, v in data.items()})
        self.model.eval()
        loss_sums: list[float] = []
        correct, count = 0, 0
        for i in range(0, ids.shape[0], batch_size):
            batch = slice(i, i + batch_size)
            b_ids, b_mask, b_labels = ids[batch], mask[batch], labels[batch]
            with self._autocast():
                logits = self.model(input_ids=b_ids, attention_mask=b_mask).logits.float()
            if self.task == "causal_lm":  # position t predicts token t+1
                logits, b_labels = logits[:, :-1].flatten(0, 1), b_labels[:, 1:].flatten()
                keep = b_labels != -100
                logits, b_labels = logits[keep], b_labels[keep]
            loss_sums.append(F.cross_entropy(logits, b_labels, reduction="sum").item())
            correct += int((logits.argmax(-1) == b_labels).sum())
            count += b_labels.numel()
        return {"loss_sums": loss_sums, "correct": correct, "count": count}

    def export_adapter(self, state: State) -> dict[str, bytes]:
        """`state` in peft format (lora) or HF format (full) as {relative file name: bytes}."""
        self.set_state(state)
        with tempfile.TemporaryDirectory(prefix="fedray-export-") as tmp:
            if isinstance(self.model, peft.PeftModel):  # no Hub lookup for resized embeddings
                self.model.save_pretrained(tmp, save_embedding_layers=False)
            else:
                self.model.save_pretrained(tmp)
            root = Path(tmp)
            return {
                str(p.relative_to(root)): p.read_bytes()
                for p in sorted(root.rglob("*"))
                if p.is_file()
            }
