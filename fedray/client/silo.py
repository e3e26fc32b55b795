"""Where client actors run and which data they read: one group for data the head loaded, or one
group per data silo whose samples never leave its node.

A silo (`cluster.silos[i]`) is served by a :class:`SiloData` actor started on a node carrying
the silo's Ray labels. It reads the silo's files there (the path need exist nowhere else),
holds out its test set, partitions its samples into the silo's clients, and encodes them into
that node's object store; the coordinator only ever holds a reference. The silo's client
actors start on nodes with the same labels and map the arrays from their local store.
Only figures leave the silo: client sizes, label names and per-client label counts (for the
selector, the model head and the label histogram), and a fingerprint of its split.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedray.core.config import FedrayConfig
from fedray.core.errors import ConfigError, DataError


@dataclass(frozen=True)
class ActorGroup:
    """Client actors that share one copy of some clients' data.

    `data` is a one-element list holding the object ref of an
    :class:`~fedray.data.base.EncodedData` (a list, so Ray hands the ref on instead of the
    arrays); its `clients[k]` is global client `first_client + k`. `labels` is the Ray label
    selector of the group's nodes (None: any node); `actors` None means as many as fit.
    """

    name: str
    data: list[Any]
    first_client: int
    num_clients: int
    actors: int | None = None
    labels: dict[str, str] | None = None

    def holds(self, client_id: int) -> bool:
        return self.first_client <= client_id < self.first_client + self.num_clients


@dataclass(frozen=True)
class SiloSummary:
    """What leaves a silo before training: figures, never samples."""

    name: str
    node: str
    client_sizes: list[int]
    label_names: list[str] | None
    histogram: list[list[int]] | None
    test_size: int
    fingerprint: str


def silo_data_config(run: FedrayConfig, index: int) -> tuple[Any, Any]:
    """The data and partition configs of silo `index`, its paths expanded on this node."""
    silo = run.cluster.silos[index]

    def here(path: str | None) -> str | None:
        return None if path is None else os.path.expandvars(os.path.expanduser(path))

    data = replace(
        run.data,
        name=silo.source or run.data.name,
        path=here(silo.path) if silo.path is not None else run.data.path,
        test_split=here(silo.test_split) if silo.test_split is not None else run.data.test_split,
    )
    return data, replace(run.partition, num_clients=silo.clients)


def merge_label_names(names: list[list[str] | None]) -> list[str] | None:
    """One class list for all silos: the longest when every silo's is a prefix of it (integer
    labels), else the sorted union (string labels, each silo's sorted)."""
    lists = [n for n in names if n is not None]
    if not lists:
        return None
    longest = max(lists, key=len)
    if all(longest[: len(n)] == n for n in lists):
        return list(longest)
    return sorted({x for n in lists for x in n})


class SiloData:
    """One silo's data, loaded, split, partitioned and encoded on the silo's node.

    Wrapped by ``ray.remote`` (no CPU, the silo's label selector) by the process that starts
    the run; it lives as long as the run and owns the encoded arrays in its node's store.
    """

    def __init__(self, run: FedrayConfig, index: int) -> None:
        import ray

        from fedray.data import build_federated_data

        self.run, self.index = run, index
        self.name = run.cluster.silos[index].name
        self.node = ray.get_runtime_context().get_node_id()
        data_cfg, partition = silo_data_config(run, index)
        try:
            self.data = build_federated_data(data_cfg, partition, run.seed)
        except DataError as exc:
            raise DataError(f"silo {self.name} (node {self.node[:12]}): {exc}") from None
        self.ref: Any = None

    def summary(self) -> SiloSummary:
        d = self.data
        labels = d.corpus.labels
        payload = f"{self.name}:{d.fingerprint([])}".encode()
        return SiloSummary(
            name=self.name,
            node=self.node,
            client_sizes=d.client_sizes().tolist(),
            label_names=d.corpus.label_names,
            histogram=None if labels is None else d.label_histogram().tolist(),
            test_size=len(d.test_idx),
            fingerprint=hashlib.sha256(payload).hexdigest()[:16],
        )

    def encode(self, label_names: list[str] | None) -> list[Any]:
        """Encode with the run's class list `label_names`; the arrays' ref, in a list."""
        import ray

        from fedray.client.dataset import encode_isolated

        corpus = self.data.corpus
        if label_names is not None and corpus.labels is not None:
            local = corpus.label_names or []
            to_global = np.array([label_names.index(n) for n in local], dtype=np.int64)
            corpus.labels = to_global[corpus.labels] if len(local) else corpus.labels
            corpus.label_names = list(label_names)
        run = self.run
        encoded = encode_isolated(run.data.task, run.model, self.data, run.data.max_length)
        self.ref = ray.put(encoded)
        return [self.ref]

    def locations(self) -> dict[str, Any]:
        """The nodes whose object store holds the silo's arrays, and their size in bytes."""
        import ray

        where = ray.experimental.get_object_locations([self.ref])[self.ref]
        return {"node_ids": sorted(where["node_ids"]), "object_size": where["object_size"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a node with `labels` satisfies a Ray label selector (`v`, `!v`, `in(a,b)`,
    `!in(a,b)` values)."""
    for key, want in selector.items():
        have = labels.get(key)
        negate = want.startswith("!")
        want = want[1:] if negate else want
        options = [v.strip() for v in want[3:-1].split(",")] if want.startswith("in(") else [want]
        if (have in options) == negate:
            return False
    return True


def check_silo_nodes(run: FedrayConfig, nodes: list[dict[str, Any]]) -> None:
    """Every silo has alive nodes carrying its labels, with CPUs for its client actors.

    `nodes` as `ray.nodes()` lists them. Raises DataError naming the silo and the fix.
    """
    alive = [n for n in nodes if n.get("Alive")]
    need = run.client.num_cpus
    for i, silo in enumerate(run.cluster.silos):
        key = f"cluster.silos[{i}] ({silo.name})"
        matching = [n for n in alive if selects(dict(silo.labels), n.get("Labels") or {})]
        if not matching:
            flags = ",".join(f"{k}={v}" for k, v in silo.labels.items())
            raise DataError(
                f"{key}: no alive node carries the labels {dict(silo.labels)}; start the "
                f"silo's node with `ray start --address=<head> --labels {flags}`"
            )
        cpus = sum(float(n.get("Resources", {}).get("CPU", 0)) for n in matching)
        if silo.actors * need > cpus:
            raise DataError(
                f"{key}: {silo.actors} actors x client.num_cpus={need:g} need "
                f"{silo.actors * need:g} CPUs but its nodes have {cpus:g}; lower "
                "cluster.silos[i].actors or client.num_cpus"
            )


def start_silos(run: FedrayConfig) -> list[Any]:
    """One :class:`SiloData` actor per silo, each on a node carrying its labels."""
    import ray

    check_silo_nodes(run, ray.nodes())
    holders = []
    for i, silo in enumerate(run.cluster.silos):
        try:
            cls = ray.remote(SiloData).options(num_cpus=0, label_selector=dict(silo.labels))
        except (TypeError, ValueError) as exc:  # a Ray without actor label selectors
            raise ConfigError(
                f"cluster.silos needs Ray node labels (actor label_selector), which Ray "
                f"{ray.__version__} refuses ({str(exc).splitlines()[0]}); use Ray 2.60"
            ) from None
        holders.append(cls.remote(run, i))
    return holders
