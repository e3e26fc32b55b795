"""The update pipeline of a run: the downlink codec, the uplink codec and the privacy mechanism,
composed once from the spec.

Downlink (server, once per round): ``shared global state -> down.encode`` (`compression.down`, a
quantizer or dense float32), put in the object store once; each client trains from
``down.decode`` of it, and its delta is taken against what it received. Client half (in the
client actor): ``delta -> mechanism.client_transform (clip | mask | encrypt) -> codec.encode``
(a sum-only mechanism's transform is already the payload). Server half (in the round protocol):
``codec.decode`` of each plaintext update. Neither the actor nor the coordinator knows which
codec or mechanism is on; combinations that cannot work are refused by :func:`check_pipeline`
before anything starts. :class:`~fedray.pipeline.traffic.Traffic` counts the bytes.

Seeds: a client's uplink codec draws from its job seed (run seed, round, client id; the chain
derives streams apart from training's); the downlink from :func:`broadcast_seed` (run seed,
round).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedray.compression import downlink_chain
from fedray.core import registry
from fedray.core.config import FedrayConfig
from fedray.core.errors import ConfigError
from fedray.core.types import ClientState, Contribution, State, StateSpec, Update
from fedray.pipeline.traffic import Traffic
from fedray.privacy.base import Mechanism

Wire = np.ndarray
"""What travels: a flat uint8 array (zero-copy through Ray's object store); its length is the
number of bytes counted up or down."""


def as_wire(data: Any) -> Wire:
    """A payload (bytes, memoryview or uint8 array) as a flat uint8 array, without a copy."""
    return data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)


def broadcast_seed(seed: int, round: int) -> int:
    """The downlink codec's seed for round (async: global version) `round` of a run seeded
    `seed`: fresh stochastic rounding each round, the same on every rerun."""
    return int(np.random.SeedSequence([seed, round, 0xD0]).generate_state(1, np.uint64)[0])


class Pipeline:
    """The codecs and the mechanism of one run.

    A codec (:class:`~fedray.compression.lib.chain.Chain` or `none`) has ``encode(state, *,
    spec, seed, residual) -> (payload, residual)`` and ``decode(payload, spec) -> state``.
    """

    def __init__(self, up: Any, down: Any, mechanism: Mechanism) -> None:
        self.up, self.down, self.mechanism = up, down, mechanism
        self.traffic = Traffic()

    @classmethod
    def from_spec(cls, spec: FedrayConfig) -> Pipeline:
        """Build the stages the `compression` (with its `down`) and `privacy` groups select."""
        up = registry.build("compression", spec.compression)
        down = downlink_chain(spec.compression.down) or registry.build(
            "compression", {"name": "none"}
        )
        return cls(up, down, registry.build("privacy", spec.privacy))

    @property
    def sum_only(self) -> bool:
        """Whether the server sees only the cohort's sum (secure or encrypted aggregation)."""
        return self.mechanism.sum_only

    # -- downlink --------------------------------------------------------------------------
    def encode_down(self, state: State, spec: StateSpec, *, seed: int) -> Wire:
        """The broadcast payload of the (shared) global state, encoded once per round (`seed`:
        :func:`broadcast_seed`)."""
        payload, _ = self.down.encode(state, spec=spec, seed=seed)
        return as_wire(payload)

    def decode_down(self, payload: Any, spec: StateSpec) -> State:
        """The global state a client trains from."""
        return self.down.decode(as_wire(payload), spec)

    # -- uplink, client half ----------------------------------------------------------------
    def client(
        self,
        delta: State,
        *,
        spec: StateSpec,
        weight: float,
        client_id: int,
        round: int,
        seed: int,
        round_message: Any,
        client_message: Any,
        client_state: ClientState,
        session: dict[str, Any],
    ) -> tuple[Wire, ClientState]:
        """(payload, the client's stored state after this round's transforms)."""
        sent = self.mechanism.client_transform(
            delta,
            weight=weight,
            client_id=client_id,
            round=round,
            seed=seed,
            round_message=round_message,
            client_message=client_message,
            session=session,
        )
        if self.sum_only:
            return as_wire(sent), client_state
        payload, residual = self.up.encode(
            sent, spec=spec, seed=seed, residual=client_state.get("codec")
        )
        payload = as_wire(payload)
        new_state = dict(client_state)
        if residual is None:
            new_state.pop("codec", None)
        else:
            new_state["codec"] = residual
        return payload, new_state

    # -- uplink, server half ----------------------------------------------------------------
    def decode(self, update: Update, spec: StateSpec) -> Contribution:
        """The plaintext delta of one update."""
        delta = self.up.decode(as_wire(update.payload), spec)
        return Contribution(
            update.client_id, delta, update.num_samples, update.extra, update.row_counts
        )

    # -- state ----------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Per-round figures of the stages (epsilon, ...)."""
        return dict(self.mechanism.metrics())

    def state_dict(self) -> dict[str, Any]:
        """The stages' server-side state for checkpoints (client-side state, such as the
        error-feedback residuals, is per client) and the byte totals."""
        return {"privacy": self.mechanism.state_dict(), "traffic": self.traffic.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. A checkpoint written before byte totals were kept has
        only "privacy": its totals then count from the resumed round on."""
        if set(state) not in ({"privacy", "traffic"}, {"privacy"}):
            raise KeyError(f"Pipeline.load_state_dict: unexpected keys {sorted(state)}")
        self.mechanism.load_state_dict(state["privacy"])
        if "traffic" in state:
            self.traffic.load_state_dict(state["traffic"])


def check_pipeline(spec: FedrayConfig) -> None:
    """Refuse stage combinations that cannot work, in one line naming both options."""
    try:
        downlink_chain(spec.compression.down)
    except ValueError as exc:
        raise ConfigError(f"compression.{exc}") from None
    algo = registry.entry("algorithm", spec.algorithm.name).factory
    mechanism = registry.entry("privacy", spec.privacy.name).factory
    privacy, algorithm = f"privacy={spec.privacy.name}", f"algorithm={spec.algorithm.name}"
    if mechanism.sum_only:
        if algo.requires_individual_updates:
            raise ConfigError(
                f"{algorithm} needs individual updates but {privacy} reveals only their sum; "
                "pick another pair"
            )
        if algo.sends_extra:
            raise ConfigError(
                f"{algorithm} sends extra state beside each update, which {privacy} cannot "
                "hide; use a FedAvg-style algorithm"
            )
        if spec.mode.name == "async":
            raise ConfigError(f"{privacy} needs mode=sync: async mode has no buffered secure sum")
        if spec.compression.name != "none":
            raise ConfigError(
                f"compression={spec.compression.name} cannot run behind {privacy}, which "
                "quantizes updates into its own field; use compression=none"
            )
        if spec.mode.max_norm_ratio > 0:
            raise ConfigError(
                f"mode.max_norm_ratio={spec.mode.max_norm_ratio} screens each update's norm but "
                f"{privacy} hides every single update; set mode.max_norm_ratio=0 (clip on the "
                "client instead: privacy.clip_norm)"
            )
