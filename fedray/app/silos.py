"""The data of a cross-silo run, seen from the process that starts it: figures, never samples.

:class:`SiloRun` starts one :class:`~fedray.client.silo.SiloData` actor per silo on the silo's
nodes, gathers their summaries (client sizes, label names and counts, fingerprints), agrees on
one class list, has each silo encode its own samples into its own node's object store, and
hands the coordinator one :class:`~fedray.client.silo.ActorGroup` per silo. After the run,
:meth:`SiloRun.report` says where each client trained and which nodes hold each silo's arrays
(the `silos.json` artifact).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from fedray.client.silo import ActorGroup, SiloSummary, merge_label_names, start_silos
from fedray.core.config import FedrayConfig
from fedray.core.errors import DataError, FedrayError


def _get(refs: list[Any]) -> list[Any]:
    """ray.get; an error raised in a silo's actor (its constructor included) is one line."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    from fedray.server.pool import creation_error, error_line

    try:
        return ray.get(refs)
    except RayActorError as exc:
        raise DataError(creation_error(exc)) from None
    except RayTaskError as exc:
        cause = exc.cause
        raise DataError(str(cause) if isinstance(cause, FedrayError) else error_line(exc)) from None


class SiloRun:
    """The silos of `spec.cluster.silos`, loaded and encoded on their own nodes."""

    def __init__(self, spec: FedrayConfig) -> None:
        self.spec = spec
        self.holders = start_silos(spec)
        self.summaries: list[SiloSummary] = _get([h.summary.remote() for h in self.holders])
        self.label_names = merge_label_names([s.label_names for s in self.summaries])
        sizes = [s.client_sizes for s in self.summaries]
        self.sizes = [n for silo in sizes for n in silo]
        self.groups: list[ActorGroup] = []

    def client_sizes(self) -> list[int]:
        return list(self.sizes)

    def label_histogram(self) -> np.ndarray:
        """int64 ``[clients, labels]`` per-client class counts, columns in the run's order."""
        names = self.label_names or []
        rows = []
        for s in self.summaries:
            local = np.array(s.histogram or [], dtype=np.int64).reshape(len(s.client_sizes), -1)
            hist = np.zeros((len(s.client_sizes), len(names)), dtype=np.int64)
            for j, name in enumerate(s.label_names or []):
                hist[:, names.index(name)] += local[:, j]
            rows.append(hist)
        return np.concatenate(rows)

    def encode(self) -> list[ActorGroup]:
        """Each silo encodes its samples on its node; one actor group per silo."""
        refs = _get([h.encode.remote(self.label_names) for h in self.holders])
        first = 0
        for silo, summary, ref in zip(self.spec.cluster.silos, self.summaries, refs, strict=True):
            n = len(summary.client_sizes)
            group = ActorGroup(silo.name, ref, first, n, silo.actors, dict(silo.labels))
            self.groups.append(group)
            first += n
        return self.groups

    def fingerprint(self, schedule: list[list[int]]) -> str:
        """16 hex digits identifying every silo's split and the client schedule."""
        payload = json.dumps([[s.fingerprint for s in self.summaries], schedule])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def report(self, nodes: dict[int, set[str]]) -> dict[str, Any]:
        """Per silo: its labels, the node that loaded it, its clients, the nodes that trained
        each of them (`nodes`: client id -> node ids of its updates) and the nodes whose object
        store holds its arrays."""
        try:
            where = _get([h.locations.remote() for h in self.holders])
        except FedrayError as exc:
            where = [{"error": str(exc)}] * len(self.holders)
        out = []
        for silo, summary, group, loc in zip(
            self.spec.cluster.silos, self.summaries, self.groups, where, strict=True
        ):
            clients = range(group.first_client, group.first_client + group.num_clients)
            out.append(
                {
                    "name": silo.name,
                    "labels": dict(silo.labels),
                    "data_node": summary.node,
                    "clients": list(clients),
                    "test_samples": summary.test_size,
                    "trained_on": {str(c): sorted(nodes.get(c, ())) for c in clients},
                    "data_in_object_store_of": loc,
                }
            )
        return {"silos": out}
