"""FedDF (Lin et al. 2020): ensemble distillation on the server, after averaging.

Each round: (1) the cohort's updates are averaged per architecture (FedAvg; every component
over the clients that trained it, so client groups of `model.groups` with other ranks, layers
or architectures are averaged among themselves); (2) the cohort's client models, the
teachers, label an unlabeled public set (held-out text no client owns: the samples held out of
the training pool beyond the test set's cap, `data.max_test`) with their averaged logits;
(3) every architecture's averaged model, the student, is trained for `steps` Adam steps to
match the ensemble's softened distribution (KL at `temperature`). Because only logits are
exchanged between architectures, clients may run different models in one run: groups with
different `num_layers` (e.g. MiniLM with 3 and with 6 layers); the global model evaluated
each round is the first group's architecture.

The distillation runs where the models are: on a client actor (the server's accelerator in a
deployment), through the coordinator's :class:`~fedray.strategies.base.ServerCompute`. Its
cost is logged per round: `distill_s`, `distill_teacher_passes` (public samples x teachers),
`distill_steps`, `distill_bytes` (states moved to and from the distilling worker; nothing
extra crosses the client network).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedray.core.config import FedrayConfig
from fedray.core.registry import entry, register
from fedray.core.statemath import add
from fedray.core.types import Contribution, State
from fedray.models import groups
from fedray.strategies._groups import ClientGroups, grouped_mean
from fedray.strategies.base import ServerCompute, Strategy


@dataclass
class FedDFOptions:
    """Options of `algorithm=feddf`."""

    name: str = "feddf"
    public_size: int = 256  # unlabeled public samples the ensemble labels each round
    steps: int = 20  # distillation steps per round and architecture
    batch_size: int = 32
    lr: float = 1e-3  # Adam, on the trainable (LoRA + head) parameters
    temperature: float = 1.0
    every: int = 1  # distill every N rounds (FedAvg only in the others)
    server_lr: float = 1.0

    def check(self) -> None:
        checks = [
            (self.public_size >= 1, f"public_size={self.public_size} must be >= 1"),
            (self.steps >= 0, f"steps={self.steps} must be >= 0"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (self.lr > 0, f"lr={self.lr} must be > 0"),
            (self.temperature > 0, f"temperature={self.temperature} must be > 0"),
            (self.every >= 1, f"every={self.every} must be >= 1"),
            (self.server_lr > 0, f"server_lr={self.server_lr} must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def check_against(self, spec: Any) -> str | None:
        if spec.model.finetune != "lora":
            return "name=feddf needs model.finetune=lora"
        if not entry("task", spec.data.task).factory.needs_labels:
            return (
                f"name=feddf distills one class distribution per sample; data.task="
                f"{spec.data.task} predicts a distribution per token (not supported)"
            )
        if spec.data.max_test <= 0:
            return (
                "name=feddf takes its public set from the held-out samples beyond the test "
                "set's cap; data.max_test=0 puts them all in the test set: set a cap"
            )
        return None


@register("algorithm", "feddf", FedDFOptions)
class FedDF(Strategy):
    """FedAvg per architecture, then ensemble distillation of the cohort into each."""

    requires_individual_updates = True  # the teachers are the individual client models
    reads_groups = True

    def __init__(self, options: FedDFOptions) -> None:
        self.options = options
        self.num_clients = 0
        self.of: ClientGroups | None = None
        self.compute: ServerCompute | None = None
        self.seed = 0
        self.rounds = 0
        self._metrics: dict[str, float] = {}

    def setup(self, *, num_clients: int) -> None:
        self.num_clients = num_clients

    def bind(self, spec: FedrayConfig, compute: ServerCompute) -> None:
        self.of = ClientGroups(spec, self.num_clients)
        self.compute, self.seed = compute, spec.seed

    def client_rule(self) -> dict[str, Any]:
        if self.of is None:
            raise RuntimeError("FedDF.bind(spec, compute) was not called")
        return {"name": "rank_groups", **self.of.rule_options()}

    def aggregate(self, global_state: State, contributions: list[Contribution]) -> State:
        if self.of is None or self.compute is None:
            raise RuntimeError("FedDF.bind(spec, compute) was not called")
        weights = [float(c.num_samples) for c in contributions]
        mean = grouped_mean(global_state, contributions, self.of, weights, "component")
        student = add(global_state, mean, self.options.server_lr)
        self.rounds += 1
        self._metrics = {}
        if self.options.steps == 0 or self.rounds % self.options.every:
            return student
        teachers = []
        for c in contributions:
            arch = self.of.group(c.client_id).arch
            trained = {k: global_state[k] + c.delta[k] for k in global_state}
            teachers.append((arch, _arch_part(trained, arch)))
        distilled, self._metrics = self.compute.distill(
            student, teachers, self.options, [self.seed, self.rounds]
        )
        return distilled

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"rounds"}:
            raise KeyError(f"FedDF.load_state_dict: expected keys ['rounds'], got {sorted(state)}")
        self.rounds = int(state["rounds"])


def _arch_part(state: State, arch: str) -> State:
    """The keys of architecture `arch` (unprefixed); the whole state when there is one."""
    if not arch:
        return state
    prefix = f"{arch}/"
    return {k[len(prefix) :]: v for k, v in state.items() if groups.split_arch(k)[0] == arch}
