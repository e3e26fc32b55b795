"""The typed run configuration: one dataclass per config group, the root :class:`FedrayConfig`.

Groups with a fixed shape (data, partition, model, client, mode, cluster, tracking, speed,
faults, attack) are typed here, so Hydra rejects a misspelt key or a wrong type while
composing. Groups whose options carry different fields (algorithm, selection, compression,
privacy) hold the option's own dataclass, registered beside its implementation (see
:mod:`fedray.core.registry`); :func:`fedray.app.spec.build_spec` parses them once, before Ray
starts, and every part of fedray then reads the typed objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from fedray.core.config_data import (
    DataConfig,
    PartitionConfig,
    RatingsConfig,
    SyntheticConfig,
)
from fedray.core.config_model import (
    ClientGroupConfig,
    LoraConfig,
    ModelConfig,
    model_task_problem,
    parse_arch,
)
from fedray.core.errors import ConfigError

__all__ = [
    "OPTIMIZERS",
    "AttackConfig",
    "ClientConfig",
    "ClientGroupConfig",
    "ClusterConfig",
    "DataConfig",
    "FaultsConfig",
    "FedrayConfig",
    "LoraConfig",
    "ModeConfig",
    "ModelConfig",
    "PartitionConfig",
    "RatingsConfig",
    "SiloConfig",
    "SpeedConfig",
    "SyntheticConfig",
    "TrackingConfig",
    "model_task_problem",
    "parse_arch",
]

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class ClientConfig:
    """Client actor resources and the local training recipe."""

    num_actors: int | None = field(
        default=None, metadata={"help": "Client actors; null: as many as the cluster's slots fit."}
    )
    num_cpus: float = field(default=2.0, metadata={"help": "CPUs reserved per client actor."})
    num_gpus: float = field(default=0.0, metadata={"help": "GPUs per actor (fractional ok)."})
    device: str = field(
        default="auto",
        metadata={"help": "auto: cuda if the actor holds a GPU, else cpu | cpu | cuda."},
    )
    torch_threads: int | None = field(
        default=None, metadata={"help": "torch threads per actor; null: num_cpus rounded up."}
    )
    epochs: int = field(default=1, metadata={"help": "Local epochs per round."})
    batch_size: int = field(default=16, metadata={"help": "Local batch size."})
    max_steps: int = field(default=0, metadata={"help": "Cap on local steps (0: no cap)."})
    lr: float = field(default=5e-4, metadata={"help": "Local learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "Local weight decay."})
    optimizer: str = field(
        default="adamw",
        metadata={"help": "adamw | sgd (a fresh optimizer per client and round)."},
    )
    momentum: float = field(default=0.0, metadata={"help": "sgd: heavy-ball momentum."})
    eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    seed_scheme: str = field(
        default="hash",
        metadata={
            "help": "hash: SeedSequence(seed, round, client), any number of clients | linear: "
            "seed*1e6 + round*round_stride + cid (the benchmark workloads' scheme)."
        },
    )
    round_stride: int = field(default=1000, metadata={"help": "linear seed scheme stride."})
    embedding_rows: str = field(
        default="samples",
        metadata={
            "help": "samples: every row of an update is weighted by the client's samples "
            "(FedAvg) | lookups: each row of a trainable embedding table is averaged over the "
            "clients that looked it up in training, weighted by their lookups (sparse tables: "
            "a recommender's items)."
        },
    )

    def __post_init__(self) -> None:
        if self.embedding_rows not in ("samples", "lookups"):
            raise ConfigError(
                f"client.embedding_rows={self.embedding_rows!r} is unknown; use samples or lookups"
            )
        if self.optimizer not in OPTIMIZERS:
            choices = ", ".join(OPTIMIZERS)
            raise ConfigError(f"client.optimizer={self.optimizer!r} is unknown; use {choices}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"client.momentum={self.momentum} must be in [0, 1)")


@dataclass
class ModeConfig:
    """The coordinator's loop."""

    name: str = field(default="sync", metadata={"help": "sync | async."})
    rounds: int = field(
        default=5,
        metadata={
            "help": "Federated rounds. async: the budget is rounds * clients_per_round client "
            "updates (applied, buffered or dropped), reported in periods of clients_per_round."
        },
    )
    clients_per_round: int = field(default=5, metadata={"help": "Clients trained per round."})
    min_clients: int = field(
        default=1, metadata={"help": "Quorum: fewer successful updates fail the round."}
    )
    eval_every: int = field(default=1, metadata={"help": "Evaluate every N rounds (and last)."})
    eval_initial: bool = field(
        default=False, metadata={"help": "Also evaluate the initial model (logged as round 0)."}
    )
    client_timeout_s: float = field(
        default=0.0, metadata={"help": "Per-client timeout in seconds (0: none)."}
    )
    checkpoint_every: int = field(default=0, metadata={"help": "Checkpoint every N rounds."})
    round_deadline_s: float = field(
        default=0.0,
        metadata={"help": "sync: drop clients not done this many seconds into a round (0: off)."},
    )
    max_concurrency: int = field(
        default=5, metadata={"help": "async: client jobs in flight at most."}
    )
    max_staleness: int | None = field(
        default=None, metadata={"help": "async: drop updates staler than this (null: keep all)."}
    )
    max_retries: int = field(
        default=0, metadata={"help": "Retries of a failed client within its round."}
    )
    on_quorum_loss: str = field(
        default="stop",
        metadata={"help": "Fewer than min_clients valid updates: stop | skip (global unchanged)."},
    )
    max_norm_ratio: float = field(
        default=0.0,
        metadata={"help": "Reject updates with norm > this x the cohort's median (0: off)."},
    )


@dataclass
class SiloConfig:
    """A data silo: clients whose samples stay on the Ray node(s) carrying `labels`."""

    name: str = field(default=MISSING, metadata={"help": "The silo's name (messages, reports)."})
    labels: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Ray node labels of the silo's node(s) (`ray start --labels silo=a`); its "
            "data holder and client actors run only there (a Ray label selector)."
        },
    )
    source: str | None = field(
        default=None, metadata={"help": "data.name on the silo (null: the run's data.name)."}
    )
    path: str | None = field(
        default=None,
        metadata={
            "help": "data.path on the silo's node, read there only; ~ and $VARS expand there."
        },
    )
    test_split: str | None = field(
        default=None,
        metadata={"help": "data.test_split on the silo (null: hold out data.test_fraction)."},
    )
    clients: int = field(
        default=1, metadata={"help": "Virtual clients the silo's samples are partitioned into."}
    )
    actors: int = field(default=1, metadata={"help": "Client actors on the silo's node(s)."})


@dataclass
class ClusterConfig:
    """Which Ray cluster runs the experiment."""

    address: str | None = field(
        default=None, metadata={"help": "null: start a local Ray; 'auto' or 'ray://host:port'."}
    )
    num_cpus: int | None = field(default=None, metadata={"help": "Local Ray CPUs (null: all)."})
    num_gpus: int | None = field(
        default=None, metadata={"help": "Local Ray GPUs (null: detect). Logical GPUs allowed."}
    )
    object_store_memory: int | None = field(
        default=None, metadata={"help": "Local object store bytes (null: Ray's default)."}
    )
    namespace: str = field(default="fedray", metadata={"help": "Ray namespace."})
    worker_niceness: int = field(
        default=0,
        metadata={
            "help": "Local Ray only: nice value of worker processes; Ray's own default of 15 "
            "puts the client actors below every other process on a shared machine."
        },
    )
    lean: bool = field(
        default=True,
        metadata={
            "help": "Local Ray only: skip the autoscaler monitor, the log monitor and the "
            "dashboard-less API server (about 230 MB); worker output stays in Ray's session "
            "log files."
        },
    )
    silos: list[SiloConfig] = field(
        default_factory=list,
        metadata={
            "help": "Cross-silo runs: each silo's data is loaded and kept on its own node(s); "
            "empty: the head loads all data and every actor may train every client."
        },
    )


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    enabled: bool = field(default=True, metadata={"help": "Record an MLflow run."})
    uri: str | None = field(
        default=None, metadata={"help": "Tracking URI; null: sqlite store under the working dir."}
    )
    experiment: str = field(default="fedray", metadata={"help": "MLflow experiment name."})
    run_name: str | None = field(default=None, metadata={"help": "MLflow run name."})
    log_model: bool = field(default=True, metadata={"help": "Log the final adapter/model."})


@dataclass
class SpeedConfig:
    """Simulated client heterogeneity (works in sync and async modes)."""

    kind: str = field(default="none", metadata={"help": "none | lognormal | slow_fraction."})
    sigma: float = field(default=0.5, metadata={"help": "lognormal: std of log(factor)."})
    slow_fraction: float = field(
        default=0.3, metadata={"help": "slow_fraction: share of clients that are slow."}
    )
    slowdown: float = field(
        default=5.0, metadata={"help": "slow_fraction: how many times slower a slow client is."}
    )
    stragglers: float = field(
        default=0.0,
        metadata={
            "help": "Share of each round's clients that straggle (Li et al. 2020): they do a "
            "uniformly random part of the local work, 1..E-1 epochs (1..S-1 steps if E = 1)."
        },
    )
    partial_work: str = field(
        default="auto",
        metadata={
            "help": "What happens to a straggler's partial update: keep | drop | auto (the "
            "algorithm decides: fedprox and fednova keep it, the others drop it)."
        },
    )


@dataclass
class FaultsConfig:
    """Which client calls fail, and how (off by default)."""

    schedule: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Entries 'ROUND:CLIENT:KIND[:ATTEMPTS]', KIND one of raise|hang|die|delay; "
            "ATTEMPTS (default faults.attempts): how many tries of that call fail."
        },
    )
    rate: float = field(
        default=0.0, metadata={"help": "Probability that a (round, client) call gets `kind`."}
    )
    kind: str = field(default="raise", metadata={"help": "Fault drawn by `rate`."})
    seed: int = field(default=0, metadata={"help": "Seed of the `rate` draws."})
    attempts: int = field(
        default=1, metadata={"help": "Tries of a faulty call that fail (1: a retry succeeds)."}
    )
    hang_s: float = field(default=3600.0, metadata={"help": "How long a `hang` sleeps."})
    delay_s: float = field(
        default=2.0, metadata={"help": "How long a `delay` sleeps before training (no failure)."}
    )


@dataclass
class AttackConfig:
    """Which clients attack and how (none by default)."""

    kind: str = field(
        default="none", metadata={"help": "none | sign_flip | scale | gaussian | nan."}
    )
    fraction: float = field(default=0.2, metadata={"help": "Fraction of clients attacking."})
    scale: float = field(default=10.0, metadata={"help": "scale: delta * scale."})
    noise_std: float = field(
        default=0.1, metadata={"help": "gaussian: the delta becomes N(0, noise_std^2) noise."}
    )
    seed: int | None = field(
        default=None, metadata={"help": "Seed choosing the attackers (null: the run seed)."}
    )


@dataclass
class FedrayConfig:
    """The root of a composed fedray configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    mode: ModeConfig = field(default_factory=ModeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    algorithm: Any = MISSING
    selection: Any = MISSING
    compression: Any = MISSING
    privacy: Any = MISSING
    seed: int = field(default=0, metadata={"help": "The one seed all randomness flows from."})
    name: str = field(default="fedray", metadata={"help": "Run name prefix."})

    def __post_init__(self) -> None:
        if problem := model_task_problem(self.model, str(self.data.task)):
            raise ConfigError(problem)
