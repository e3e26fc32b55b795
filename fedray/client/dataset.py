"""Tokenized federated data as the client actors hold it: encoded once, shared zero-copy."""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedray.data import FederatedData
from fedray.errors import FedrayError


@dataclass
class EncodedData:
    """Token arrays for every training row any client uses, the test rows, and who owns what."""

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    clients: list[np.ndarray]  # client id -> rows of `train`, in training order

    def client_batch(self, client_id: int) -> dict[str, np.ndarray]:
        """The arrays of one client's samples, in its training order."""
        rows = self.clients[client_id]
        return {k: v[rows] for k, v in self.train.items()}

    def num_samples(self, client_id: int) -> int:
        """How many samples a client holds."""
        return len(self.clients[client_id])


def encode_federated(data: FederatedData, tokenizer, max_length: int) -> EncodedData:
    """Tokenize the samples that some client or the test set uses, once."""
    from fedray.models import encode

    used = np.unique(np.concatenate([c for c in data.clients if len(c)] or [np.empty(0, int)]))
    row_of = np.full(len(data.corpus.texts), -1, dtype=np.int64)
    row_of[used] = np.arange(len(used))
    texts = data.corpus.texts
    task = data.corpus.task
    train = encode(tokenizer, [texts[i] for i in used], max_length, task)
    test = encode(tokenizer, [texts[i] for i in data.test_idx], max_length, task)
    if task == "classification":
        assert data.corpus.labels is not None
        train["labels"] = data.corpus.labels[used].astype(np.int64)
        test["labels"] = data.corpus.labels[data.test_idx].astype(np.int64)
    clients = [row_of[c] for c in data.clients]
    return EncodedData(train=train, test=test, clients=clients)


def tokenize(model_cfg: Any, data: FederatedData, max_length: int) -> EncodedData:
    """Load the model's tokenizer and encode the federated data with it."""
    from fedray.models import load_tokenizer

    return encode_federated(data, load_tokenizer(model_cfg), max_length)


class TokenizeJob:
    """:func:`tokenize` started now, its arrays collected with :meth:`result`.

    Loading a Hugging Face tokenizer imports transformers and torch (about 300 MB of resident
    memory that stays for the life of the process). The process that runs an experiment only
    coordinates, so a child (`python -m fedray.client.dataset`, which never re-imports the
    caller's script) pays for that and hands the arrays back, while the caller goes on (starting
    Ray, say). Errors raised there (a bad model path, a tokenizer that cannot load) are raised by
    :meth:`result` as the same exceptions. `child=None` uses a child unless torch is already
    loaded here (a child would only add start-up time); then the work is done at once, in this
    process. Use as a context manager: leaving it stops a child that is still running and
    removes its files.
    """

    def __init__(
        self, model_cfg: Any, data: FederatedData, max_length: int, child: bool | None = None
    ) -> None:
        self._value: EncodedData | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if not (child if child is not None else "torch" not in sys.modules):
            self._value = tokenize(model_cfg, data, max_length)
            return
        self._tmp = tempfile.TemporaryDirectory(prefix="fedray-tokenize-")
        job = Path(self._tmp.name) / "job.pkl"
        job.write_bytes(pickle.dumps((model_cfg, data, max_length)))
        self._result = Path(self._tmp.name) / "result.pkl"
        self._stderr = Path(self._tmp.name) / "stderr.txt"
        with self._stderr.open("w") as err:  # a file: a full pipe would stall the child
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "fedray.client.dataset", str(job), str(self._result)],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def result(self) -> EncodedData:
        """Wait for the arrays and hand them over (once: the job keeps no reference to them);
        raise what the tokenizer raised."""
        if self._value is None:
            if self._proc is None or self._tmp is None:
                raise RuntimeError("TokenizeJob.result() hands the arrays over once")
            self._proc.wait()
            if not self._result.is_file():
                lines = self._stderr.read_text(errors="replace").strip().splitlines()
                raise FedrayError(
                    f"tokenizer process exited with code {self._proc.returncode}: "
                    f"{lines[-1] if lines else 'no output'}"
                )
            ok, value = pickle.loads(self._result.read_bytes())
            self.close()
            if not ok:
                raise value
            self._value = value
        value, self._value = self._value, None
        return value

    def close(self) -> None:
        """Stop the child if it still runs and remove its files."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> TokenizeJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tokenize_isolated(model_cfg: Any, data: FederatedData, max_length: int) -> EncodedData:
    """:func:`tokenize`, in a short-lived child process unless torch is already loaded here."""
    with TokenizeJob(model_cfg, data, max_length) as job:
        return job.result()


def tokenize_in_child(model_cfg: Any, data: FederatedData, max_length: int) -> EncodedData:
    """:func:`tokenize` in a child Python process; its exceptions are re-raised here."""
    with TokenizeJob(model_cfg, data, max_length, child=True) as job:
        return job.result()


def _child(job: str, result: str) -> None:
    """Entry point of the tokenizer child: tokenize the pickled job, pickle the outcome."""
    from fedray.client import dataset  # this file runs as __main__; pickle the real classes

    model_cfg, data, max_length = pickle.loads(Path(job).read_bytes())
    try:
        outcome: tuple[bool, Any] = (True, dataset.tokenize(model_cfg, data, max_length))
    except Exception as exc:  # handed back to the parent and raised there
        outcome = (False, exc)
    Path(result).write_bytes(pickle.dumps(outcome))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
