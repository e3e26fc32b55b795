"""Ensemble distillation (FedDF, Lin et al. 2020) on a client actor's models.

The teachers (client models) label an unlabeled public set with their averaged logits; each
architecture's student (the averaged global model) is trained towards the ensemble's softened
distribution: ``T^2 KL(softmax(z_ens / T) || softmax(z_student / T))``, Adam on the student's
trainable parameters, batches drawn by a generator seeded from (run seed, round).

The public set is text no client owns: the samples the source held out of the training pool
beyond the test set's cap (`data.max_test`), a seeded subset of `public_size` of them,
tokenized with the model's tokenizer. It is built once per actor.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedray.client.trainer import Trainer
from fedray.core.config import FedrayConfig
from fedray.core.errors import DataError
from fedray.core.statemath import nbytes
from fedray.core.types import State


def public_set(spec: FedrayConfig, size: int) -> dict[str, np.ndarray]:
    """Token arrays of `size` unlabeled public samples (held out, not in the test set)."""
    from fedray.data import load_source
    from fedray.models import encode, load_tokenizer

    corpus, pool, test = load_source(spec.data, spec.seed)
    owned = np.zeros(len(corpus), dtype=bool)
    owned[pool] = True
    owned[test] = True
    free = np.flatnonzero(~owned)
    if not len(free):
        raise DataError(
            f"feddf: data={spec.data.name} holds out no sample beyond the test set "
            f"(data.max_test={spec.data.max_test}); lower data.max_test to leave public text"
        )
    rng = np.random.default_rng([spec.seed, 0x7075626C6963])
    pick = np.sort(rng.choice(free, size=min(size, len(free)), replace=False))
    tokenizer = load_tokenizer(spec.model)
    return encode(tokenizer, [corpus.texts[i] for i in pick], spec.data.max_length)


def _logits(trainer: Trainer, public: dict[str, torch.Tensor], rows: Any, batch: int) -> Any:
    out = []
    for i in range(0, len(rows), batch):
        idx = rows[i : i + batch]
        with trainer.autocast():
            z = trainer.model(
                input_ids=public["input_ids"][idx], attention_mask=public["attention_mask"][idx]
            ).logits
        out.append(z.float())
    return torch.cat(out)


def distill(
    trainers: dict[str, Trainer],
    public: dict[str, np.ndarray],
    student: State,
    teachers: list[tuple[str, State]],
    options: Any,
    seed: list[int],
    eval_batch: int = 64,
) -> tuple[State, dict[str, float]]:
    """(student after distillation, figures). `student` and the result hold every
    architecture's keys (prefixed by architecture when there are several)."""
    start = time.perf_counter()
    multi = len(trainers) > 1
    any_trainer = next(iter(trainers.values()))
    cols = any_trainer.tensors({k: public[k] for k in ("input_ids", "attention_mask")})
    n = len(cols["input_ids"])
    rows = torch.arange(n)
    total = None
    with torch.inference_mode():
        for arch, state in teachers:
            trainer = trainers[arch]
            trainer.set_state(state)
            trainer.model.eval()
            z = _logits(trainer, cols, rows, eval_batch)
            total = z if total is None else total + z
    assert total is not None
    t = float(options.temperature)
    target = F.softmax(total / len(teachers) / t, dim=-1)
    out = dict(student)
    kl_first, kl_last = [], []
    for arch, trainer in trainers.items():
        prefix = f"{arch}/" if multi else ""
        part = {k[len(prefix) :]: v for k, v in student.items() if k.startswith(prefix)}
        trainer.set_state(part)
        model = trainer.model
        model.train()
        optimizer = torch.optim.Adam(trainer.params, lr=float(options.lr))
        g = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        torch.manual_seed(int(np.random.SeedSequence([*seed, 1]).generate_state(1)[0]))
        for step in range(int(options.steps)):
            idx = torch.randint(0, n, (int(options.batch_size),), generator=g)
            with trainer.autocast():
                z = model(
                    input_ids=cols["input_ids"][idx], attention_mask=cols["attention_mask"][idx]
                ).logits.float()
            loss = (t * t) * F.kl_div(
                F.log_softmax(z / t, dim=-1), target[idx.to(target.device)], reduction="batchmean"
            )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            (kl_first if step == 0 else kl_last).append(float(loss))
        model.eval()
        out.update({f"{prefix}{k}": v for k, v in trainer.get_state().items()})
    moved = nbytes(student) + sum(nbytes(s) for _, s in teachers) + nbytes(out)
    return out, {
        "distill_s": time.perf_counter() - start,
        "distill_teacher_passes": float(n * len(teachers)),
        "distill_steps": float(options.steps) * len(trainers),
        "distill_public_samples": float(n),
        "distill_kl_first": float(np.mean(kl_first)) if kl_first else float("nan"),
        "distill_kl_last": float(kl_last[-1]) if kl_last else float("nan"),
        "distill_bytes": float(moved),
    }
