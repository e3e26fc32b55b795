"""Encoding the federated data once, off the coordinator, into the arrays the actors share."""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedray.core import registry
from fedray.core.errors import FedrayError
from fedray.data.base import EncodedData, FederatedData


def encode(task: str, model_cfg: Any, data: FederatedData, max_length: int) -> EncodedData:
    """The registered task's arrays of the federated data (e.g. token ids for text tasks)."""
    return registry.build("task", {"name": task}).encode(data, model_cfg, max_length)


class EncodeJob:
    """:func:`encode` started now, its arrays collected with :meth:`result`.

    Encoding text loads a Hugging Face tokenizer, which imports transformers and torch (about
    300 MB of resident memory that stays for the life of the process). The process that runs
    an experiment only coordinates, so a child (`python -m fedray.client.dataset`, which never
    re-imports the caller's script) pays for that and hands the arrays back, while the caller
    goes on (starting Ray, say). Errors raised there (a bad model path, a tokenizer that cannot
    load) are raised by :meth:`result` as the same exceptions. `child=None` uses a child unless
    torch is already loaded here (a child would only add start-up time); then the work is done
    at once, in this process. Use as a context manager: leaving it stops a child that is still
    running and removes its files.
    """

    def __init__(
        self,
        task: str,
        model_cfg: Any,
        data: FederatedData,
        max_length: int,
        child: bool | None = None,
    ) -> None:
        self._value: EncodedData | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if not (child if child is not None else "torch" not in sys.modules):
            self._value = encode(task, model_cfg, data, max_length)
            return
        self._tmp = tempfile.TemporaryDirectory(prefix="fedray-encode-")
        job = Path(self._tmp.name) / "job.pkl"
        job.write_bytes(pickle.dumps((task, model_cfg, data, max_length)))
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
        raise what the encoder raised."""
        if self._value is None:
            if self._proc is None or self._tmp is None:
                raise RuntimeError("TokenizeJob.result() hands the arrays over once")
            self._proc.wait()
            if not self._result.is_file():
                lines = self._stderr.read_text(errors="replace").strip().splitlines()
                raise FedrayError(
                    f"encoding process exited with code {self._proc.returncode}: "
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

    def __enter__(self) -> EncodeJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode_isolated(task: str, model_cfg: Any, data: FederatedData, max_length: int) -> EncodedData:
    """:func:`encode`, in a short-lived child process unless torch is already loaded here."""
    with EncodeJob(task, model_cfg, data, max_length) as job:
        return job.result()


def encode_in_child(task: str, model_cfg: Any, data: FederatedData, max_length: int) -> EncodedData:
    """:func:`encode` in a child Python process; its exceptions are re-raised here."""
    with EncodeJob(task, model_cfg, data, max_length, child=True) as job:
        return job.result()


def _child(job: str, result: str) -> None:
    """Entry point of the encoding child: encode the pickled job, pickle the outcome."""
    from fedray.client import dataset  # this file runs as __main__; pickle the real classes

    task, model_cfg, data, max_length = pickle.loads(Path(job).read_bytes())
    try:
        outcome: tuple[bool, Any] = (True, dataset.encode(task, model_cfg, data, max_length))
    except Exception as exc:  # handed back to the parent and raised there
        outcome = (False, exc)
    Path(result).write_bytes(pickle.dumps(outcome))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
