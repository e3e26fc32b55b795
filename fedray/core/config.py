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

from fedray.core import registry
from fedray.core.errors import ConfigError


@dataclass
class SyntheticConfig:
    """`data=synthetic`: Synthetic(alpha, beta) of Li et al. (2020), after Shamir et al. (2014).

    Device k draws u_k ~ N(0, alpha), W_k ~ N(u_k, 1) (dim x classes), b_k ~ N(u_k, 1),
    B_k ~ N(0, beta), v_k ~ N(B_k, 1) (dim); its samples x ~ N(v_k, diag(j^-1.2)),
    y = argmax(x W_k + b_k). Sizes are lognormal(4, 2) + 50 (power-law skew).
    """

    alpha: float = field(
        default=1.0,
        metadata={"help": "Spread of the devices' model means u_k (cannot change a label)."},
    )
    beta: float = field(default=1.0, metadata={"help": "Spread of the devices' feature means."})
    iid: bool = field(
        default=False,
        metadata={"help": "One shared W, b, and v_k = B_k * ones (the paper's Synthetic-IID)."},
    )
    devices: int = field(default=30, metadata={"help": "Devices (natural clients)."})
    dim: int = field(default=60, metadata={"help": "Feature dimension."})
    classes: int = field(default=10, metadata={"help": "Number of classes."})
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the generator (fixed across run seeds, as in the paper)."},
    )

    def __post_init__(self) -> None:
        for key, ok in (
            ("alpha", self.alpha >= 0),
            ("beta", self.beta >= 0),
            ("devices", self.devices >= 1),
            ("dim", self.dim >= 1),
            ("classes", self.classes >= 2),
        ):
            if not ok:
                value = getattr(self, key)
                raise ConfigError(f"data.synthetic.{key}={value} is out of range; see its help")


@dataclass
class RatingsConfig:
    """`data=movielens`: explicit ratings, one client per user, leave-one-out test set."""

    min_item_ratings: int = field(
        default=5,
        metadata={
            "help": "Drop items with fewer ratings (before the split): ml-latest-small has "
            "9,066 items, 3,496 with >= 5 ratings."
        },
    )
    user_column: str = field(default="userId", metadata={"help": "Column of user ids."})
    item_column: str = field(default="movieId", metadata={"help": "Column of item ids."})
    rating_column: str = field(default="rating", metadata={"help": "Column of ratings."})
    time_column: str = field(
        default="timestamp", metadata={"help": "Column ordering a user's ratings (latest: test)."}
    )

    def __post_init__(self) -> None:
        if self.min_item_ratings < 1:
            raise ConfigError(f"data.ratings.min_item_ratings={self.min_item_ratings} must be >= 1")


@dataclass
class DataConfig:
    """Where samples come from and how the held-out test set is cut."""

    name: str = field(
        default="shakespeare",
        metadata={
            "help": "Source: shakespeare | shakespeare_lm | hf (hub dataset) | files | digits | "
            "image_folder | synthetic | movielens."
        },
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
    task: str = field(
        default="classification",
        metadata={
            "help": "Task plugin: classification | causal_lm | image_classification | "
            "vector_classification | recommendation."
        },
    )
    test_fraction: float = field(
        default=0.15, metadata={"help": "Fraction held out per class for the test set."}
    )
    max_test: int = field(default=600, metadata={"help": "Cap on test samples (0: no cap)."})
    min_words: int = field(default=8, metadata={"help": "Drop samples with fewer words."})
    max_length: int = field(default=64, metadata={"help": "Tokens per sample after truncation."})
    image_column: str | None = field(
        default=None,
        metadata={
            "help": "files/hf: column holding images (file paths, encoded bytes or HF Image "
            "values) instead of text; for data.task=image_classification."
        },
    )
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    ratings: RatingsConfig = field(default_factory=RatingsConfig)


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
class ClientGroupConfig:
    """A share of the clients that differ from the rest in LoRA rank, tuned layers or
    architecture (HetLoRA, FedDF). Unset fields take the model's own values."""

    name: str = field(default="", metadata={"help": "Name shown in metrics; default group<i>."})
    share: float = field(
        default=1.0, metadata={"help": "Fraction of the clients in this group (shares sum to 1)."}
    )
    r: int | None = field(default=None, metadata={"help": "LoRA rank (null: model.lora.r)."})
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "Layer indices whose adapters this group tunes (null: model.lora's)."},
    )
    num_layers: int | None = field(
        default=None,
        metadata={
            "help": "Architecture: keep only the first num_layers transformer layers of the "
            "base (null: all). Groups with different values are different models (FedDF)."
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
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Storage dtype of the frozen base on CPU and GPU: float32 | bfloat16 | "
            "float16. Trainable parameters stay float32; other than float32, forward and "
            "backward run under autocast in this dtype."
        },
    )
    num_layers: int | None = field(
        default=None,
        metadata={"help": "Keep only the first num_layers transformer layers (null: all)."},
    )
    quantize: str = field(
        default="none",
        metadata={
            "help": "none | 8bit | 4bit: load the base through bitsandbytes (4bit: QLoRA, NF4 "
            "with double quantization, compute in model.dtype); CUDA only, LoRA only."
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: less memory, ~30% slower."},
    )
    shared_base: bool = field(
        default=True,
        metadata={
            "help": "LoRA: the frozen base is loaded once and every client actor of a node "
            "maps it read-only from Ray's object store (false: each actor loads its own)."
        },
    )
    groups: list[ClientGroupConfig] = field(
        default_factory=list,
        metadata={
            "help": "Client groups with their own LoRA rank, tuned layers or architecture "
            "(empty: all clients alike). Needs an algorithm that reads groups: hetlora, feddf."
        },
    )
    arch: Any = field(
        default_factory=lambda: {"name": "hf"},
        metadata={
            "help": "Architecture node {name: ..., options}: hf (a Hugging Face checkpoint at "
            "name_or_path) | vit | mf | ncf | logreg; one module each in fedray/models/archs."
        },
    )

    def __post_init__(self) -> None:
        arch = parse_arch(self.arch)  # a bad node is a ConfigError while the config is typed
        check_against = getattr(arch, "check_against", None)
        if check_against is not None and (problem := check_against(self)):
            raise ConfigError(f"model.{problem}")

    @property
    def architecture(self) -> Any:
        """`arch` as its registered options dataclass (kept as a plain node in the config, so
        that Hydra can merge another architecture's options into it)."""
        return parse_arch(self.arch)


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

    def __post_init__(self) -> None:
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


OPTIMIZERS = ("adamw", "sgd")


def parse_arch(node: Any) -> Any:
    """A `model.arch` node as its registered options dataclass; ConfigError naming the key."""
    if not isinstance(node, dict) and not hasattr(node, "keys"):
        return node  # already typed
    try:
        return registry.parse("arch", node)
    except ConfigError as exc:
        raise ConfigError(f"model.{exc}") from None


def model_task_problem(model: ModelConfig, task: str) -> str | None:
    """One line when `model.arch` cannot build the model `data.task` needs, else None.

    A task names the kind of model it trains (`Task.model_kind`); an architecture lists the
    kinds it builds (`kinds` of its factory). An unknown task is left to the spec's own check.
    """
    try:
        kind = registry.entry("task", task).factory.model_kind
    except ConfigError:
        return None
    arch = model.architecture
    kinds = registry.entry("arch", arch.name).factory.kinds
    if kind in kinds:
        return None
    fits = [n for n in registry.names("arch") if kind in registry.entry("arch", n).factory.kinds]
    return (
        f"model.arch={arch.name} builds models of kind {', '.join(kinds)}, but data.task={task} "
        f"trains one of kind {kind}; pick a model whose arch builds it ({', '.join(fits)})"
    )
