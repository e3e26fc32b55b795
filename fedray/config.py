"""Structured configuration: one dataclass per config group, registered in Hydra's ConfigStore.

Groups with a fixed shape (data, partition, model, client, mode, cluster, tracking) are typed here,
so Hydra rejects a misspelt key or a wrong type while composing. Groups whose options carry
different fields (algorithm, selection, compression, privacy) are typed by the option's own
dataclass, registered beside its implementation (see :mod:`fedray.registry`) and checked by
:func:`validate` before Ray starts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from fedray.client.attack import AttackConfig
from fedray.client.faults import FaultsConfig
from fedray.client.speed import SpeedConfig, check_speed, speed_config
from fedray.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where samples come from and how the held-out test set is cut."""

    name: str = field(
        default="shakespeare",
        metadata={"help": "Source: shakespeare | shakespeare_lm | hf (hub dataset) | files."},
    )
    path: str | None = field(
        default=None, metadata={"help": "HF dataset name (name=hf) or a local file/glob (files)."}
    )
    subset: str | None = field(default=None, metadata={"help": "HF dataset configuration name."})
    split: str = field(default="train", metadata={"help": "Split to read (name=hf)."})
    test_split: str | None = field(
        default=None, metadata={"help": "Separate test split; null: hold out test_fraction."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the input text."})
    label_column: str | None = field(
        default="label", metadata={"help": "Column holding the class label; null for LM data."}
    )
    id_column: str | None = field(
        default=None, metadata={"help": "Column naming each sample's natural owner (speaker...)."}
    )
    task: str = field(default="classification", metadata={"help": "classification | causal_lm."})
    test_fraction: float = field(
        default=0.15, metadata={"help": "Fraction held out per class for the test set."}
    )
    max_test: int = field(default=600, metadata={"help": "Cap on test samples (0: no cap)."})
    min_words: int = field(default=8, metadata={"help": "Drop samples with fewer words."})
    max_length: int = field(default=64, metadata={"help": "Tokens per sample after truncation."})


@dataclass
class PartitionConfig:
    """How the training pool is split across virtual clients."""

    name: str = field(
        default="dirichlet", metadata={"help": "iid | dirichlet | shard | natural | quantity."}
    )
    num_clients: int = field(default=20, metadata={"help": "Virtual clients (natural: max)."})
    alpha: float = field(
        default=0.5, metadata={"help": "Dirichlet concentration; smaller = more label skew."}
    )
    classes_per_client: int = field(default=2, metadata={"help": "shard: classes per client."})
    power: float = field(
        default=1.5, metadata={"help": "quantity: power-law exponent of client sizes."}
    )
    max_samples_per_client: int = field(
        default=0, metadata={"help": "Keep at most this many samples per client (0: all)."}
    )
    min_samples_per_client: int = field(
        default=1, metadata={"help": "Drop (natural) or reject partitions below this size."}
    )


@dataclass
class LoraConfig:
    """peft LoRA settings; see peft.LoraConfig."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    modules_to_save: list[str] | None = None
    layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "Adapt only these layer indices (null: all). Top layers only = a "
            "shorter backward pass."
        },
    )


@dataclass
class ModelConfig:
    """Which pretrained model is fine-tuned, and how."""

    name_or_path: str = field(
        default="builtin:minilm",
        metadata={"help": "HF hub name, local directory, or builtin:minilm (offline MiniLM)."},
    )
    finetune: str = field(default="lora", metadata={"help": "lora | full."})
    lora: LoraConfig = field(default_factory=LoraConfig)
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16."})


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
    lr: float = field(default=5e-4, metadata={"help": "Local AdamW learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "Local AdamW weight decay."})
    eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    seed_scheme: str = field(
        default="linear",
        metadata={"help": "linear: seed*1e6 + round*round_stride + cid | hash: SeedSequence."},
    )
    round_stride: int = field(default=1000, metadata={"help": "linear seed scheme stride."})


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


def register_configs() -> None:
    """Register the root schema so `conf/config.yaml` can name it in its defaults list."""
    ConfigStore.instance().store(name="fedray_schema", node=FedrayConfig)


def _plugin_node(cfg: DictConfig, group: str) -> DictConfig:
    node = cfg.get(group)
    if node is None or "name" not in node:
        raise ConfigError(f"{group}: missing `name`; pick an option, e.g. {group}=<option>")
    return node


def validate(cfg: DictConfig) -> None:
    """Cross-check a composed config; raise ConfigError with a one-line reason."""
    from fedray import preflight, registry

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required; set it, e.g. {missing[0]}=VALUE")
    for group in ("algorithm", "selection", "compression", "privacy"):
        registry.parse(group, _plugin_node(cfg, group))
    p, m, c, d = cfg.partition, cfg.mode, cfg.client, cfg.data
    checks: list[tuple[bool, str]] = [
        (p.num_clients >= 1, f"partition.num_clients={p.num_clients} must be >= 1"),
        (p.name != "dirichlet" or p.alpha > 0, f"partition.alpha={p.alpha} must be > 0"),
        (p.classes_per_client >= 1, "partition.classes_per_client must be >= 1"),
        (p.power > 0, f"partition.power={p.power} must be > 0"),
        (p.max_samples_per_client >= 0, "partition.max_samples_per_client must be >= 0"),
        (m.rounds >= 1, f"mode.rounds={m.rounds} must be >= 1"),
        (m.clients_per_round >= 1, f"mode.clients_per_round={m.clients_per_round} must be >= 1"),
        (
            p.name == "natural" or m.clients_per_round <= p.num_clients,
            f"mode.clients_per_round={m.clients_per_round} exceeds partition.num_clients="
            f"{p.num_clients}; lower it or add clients",
        ),
        (
            1 <= m.min_clients <= m.clients_per_round,
            f"mode.min_clients={m.min_clients} must be in [1, mode.clients_per_round]",
        ),
        (m.eval_every >= 1, f"mode.eval_every={m.eval_every} must be >= 1"),
        (m.name in ("sync", "async"), f"mode.name={m.name!r} is unknown; use mode=sync|async"),
        (c.num_cpus > 0, f"client.num_cpus={c.num_cpus} must be > 0"),
        (c.num_gpus >= 0, f"client.num_gpus={c.num_gpus} must be >= 0"),
        (c.num_actors is None or c.num_actors >= 1, "client.num_actors must be >= 1 or null"),
        (c.epochs >= 1, f"client.epochs={c.epochs} must be >= 1"),
        (c.batch_size >= 1, f"client.batch_size={c.batch_size} must be >= 1"),
        (c.lr > 0, f"client.lr={c.lr} must be > 0"),
        (c.seed_scheme in ("linear", "hash"), "client.seed_scheme must be linear or hash"),
        (c.device in ("auto", "cpu", "cuda"), f"client.device={c.device!r}: use auto, cpu or cuda"),
        (0 < d.test_fraction < 1, f"data.test_fraction={d.test_fraction} must be in (0, 1)"),
        (d.max_length >= 2, f"data.max_length={d.max_length} must be >= 2"),
        (d.task in ("classification", "causal_lm"), "data.task must be classification|causal_lm"),
        (
            d.name not in ("hf", "files") or bool(d.path),
            f"data.path is required with data={d.name}; set data.path=<dataset name or file>",
        ),
        (
            bool(cfg.model.name_or_path),
            "model.name_or_path is required; set it to a hub name or a local model directory",
        ),
        (cfg.model.finetune in ("lora", "full"), "model.finetune must be lora or full"),
        (
            cfg.model.dtype in ("float32", "bfloat16", "float16"),
            "model.dtype must be float32, bfloat16 or float16",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    problem = check_speed(speed_config(cfg.speed)) or _mode_problem(cfg)
    if problem:
        raise ConfigError(problem)
    check_reliability(cfg)
    if (warning := oversubscription(cfg)) is not None:
        log.warning(warning)
    preflight.check_known_keys(cfg, FedrayConfig)
    if cfg.tracking.enabled:
        preflight.check_tracking_store(cfg.tracking.uri)
    registry.check_combination(cfg)


def _mode_problem(cfg: DictConfig) -> str | None:
    """Sync-only and async-only options and algorithms used in the wrong mode, or None."""
    from fedray import registry

    m, algo = cfg.mode, str(cfg.algorithm.name)
    algo_mode = getattr(registry.entry("algorithm", algo).factory, "mode", "sync")
    if algo_mode != m.name:
        fix = "add mode=async" if algo_mode == "async" else "use algorithm=fedasync or fedbuff"
        return f"algorithm={algo} runs only in mode={algo_mode}, not mode={m.name}; {fix}"
    if m.round_deadline_s < 0:
        return f"mode.round_deadline_s={m.round_deadline_s} must be >= 0 (0: off)"
    if m.name == "async" and m.round_deadline_s > 0:
        return "mode.round_deadline_s applies to mode=sync only; use mode.max_staleness in async"
    if m.max_concurrency < 1:
        return f"mode.max_concurrency={m.max_concurrency} must be >= 1"
    if m.max_staleness is not None and m.max_staleness < 0:
        return f"mode.max_staleness={m.max_staleness} must be >= 0 or null (no limit)"
    d = cfg.selection.get("d")
    if d is not None and d < m.clients_per_round:
        return (
            f"selection.d={d} is below mode.clients_per_round={m.clients_per_round}; "
            "raise selection.d (candidates per round)"
        )
    return None


def check_reliability(cfg: DictConfig) -> None:
    """Cross-check retries, quorum policy, update filtering, faults and attacks."""
    from fedray.client import attack, faults

    m = cfg.mode
    problem = (
        (m.max_retries < 0 and f"mode.max_retries={m.max_retries} must be >= 0")
        or (
            m.on_quorum_loss not in ("stop", "skip")
            and f"mode.on_quorum_loss={m.on_quorum_loss!r}: use stop or skip"
        )
        or (
            not (m.max_norm_ratio == 0 or m.max_norm_ratio > 1)
            and f"mode.max_norm_ratio={m.max_norm_ratio} must be 0 (off) or > 1"
        )
        or (m.client_timeout_s < 0 and "mode.client_timeout_s must be >= 0")
        or faults.check(cfg.get("faults"), m.client_timeout_s)
        or attack.check(cfg.get("attack"))
    )
    if problem:
        raise ConfigError(problem)


def oversubscription(cfg: DictConfig) -> str | None:
    """A warning when a CPU actor runs more torch threads than the CPUs it reserves, else None.

    Such threads compete with the other actors' for the same cores: on a 2-core machine, two
    1-CPU actors with 2 threads each trained W2's clients 3-6x slower than with 1 thread each.
    """
    c = cfg.client
    if c.torch_threads is None or c.num_gpus > 0 or c.device == "cuda":
        return None
    if c.torch_threads <= math.ceil(c.num_cpus):
        return None
    return (
        f"client.torch_threads={c.torch_threads} exceeds client.num_cpus={c.num_cpus:g}: each "
        "actor runs more torch threads than the CPUs it reserves, and actors sharing cores this "
        "way slow each other down; set client.torch_threads=null to match the CPU slot"
    )
