"""The typed `data` and `partition` config groups (re-exported by :mod:`fedray.core.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
