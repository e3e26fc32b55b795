"""A codec chain: at most one sparsifier, then at most one quantizer, with optional error feedback.

Wire format: `payload = [index section of the sparsifier] [value section of the quantizer]`, no
other framing (no key names, shapes or chain id: both ends hold the chain and the
:class:`StateSpec`). The value section's length follows from the spec and the index section, so a
payload of any other length is rejected. An empty chain sends the flat update as little-endian
float32 (`4 d` bytes). Bytes counted = `len(payload)`.

Error feedback (Seide et al. 2014; Stich et al. 2018; Karimireddy et al. 2019), codec-agnostic:

    x_t = delta_t + e_t,   payload_t = enc(x_t),   e_{t+1} = x_t - dec(payload_t)

so `sum_t dec(payload_t) + e_{T+1} = sum_t delta_t + e_1` telescopes exactly (up to float32
rounding of the two additions per round). `e` is a plain :data:`State` (float32, spec keys).

Randomness: the sparsifier draws from `default_rng([seed, 0])`, the quantizer from
`default_rng([seed, 1])`; same input and seed, same bytes.
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedray.compression.lib.bits import Reader
from fedray.compression.lib.spec import StateSpec
from fedray.compression.lib.stages import (
    DOWNLINK_HELP,
    CodecOptions,
    Float32,
    Quantizer,
    Sparsifier,
)
from fedray.core.registry import register
from fedray.core.types import State

Stage = Quantizer | Sparsifier
S = TypeVar("S", bound=type)

_STAGES: dict[str, tuple[type[CodecOptions], type]] = {}


def codec(name: str, options: type[CodecOptions]) -> Callable[[S], S]:
    """Class decorator for a stage: records it for chains and registers `name` in the
    `compression` group, whose factory builds the one-stage :class:`Chain`."""

    def wrap(cls: S) -> S:
        _STAGES[name] = (options, cls)

        def factory(opts: CodecOptions) -> Chain:
            return Chain([cls(opts)], error_feedback=opts.error_feedback)

        factory.__name__ = factory.__qualname__ = f"{name}_chain"
        factory.__doc__ = f"`compression={name}`: a one-stage chain."
        register("compression", name, options)(factory)
        return cls

    return wrap


def stage_names() -> list[str]:
    """Names a chain may contain, sorted."""
    importlib.import_module("fedray.compression")
    return sorted(_STAGES)


def parse_codec(node: Any, where: str = "") -> CodecOptions:
    """A codec node (mapping, DictConfig or options dataclass) as its checked options object.

    Errors are one-line ValueErrors prefixed by `where` (e.g. `codecs[1].`).
    """
    if is_dataclass(node) and not isinstance(node, type):
        opts = node
        if opts.name not in stage_names():
            raise ValueError(f"{where}name={opts.name!r} is not a codec stage")
    else:
        if not isinstance(node, Mapping | DictConfig):
            raise ValueError(f"{where[:-1] or 'codec'} must be a mapping like {{name: int8}}")
        name = node.get("name")
        if name not in stage_names():
            raise ValueError(
                f"{where}name={name!r} is not a codec stage; choose one of: "
                f"{', '.join(stage_names())}"
            )
        schema = _STAGES[name][0]
        known = [f.name for f in fields(schema)]
        unknown = sorted(set(node) - set(known))
        if unknown:
            raise ValueError(
                f"{where}{unknown[0]} is not an option of {name} (options: "
                f"{', '.join(k for k in known if k != 'name')})"
            )
        try:
            plain = OmegaConf.to_container(node) if isinstance(node, DictConfig) else dict(node)
            opts = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), plain))
        except OmegaConfBaseException as exc:
            key = f"{where}{exc.full_key}: " if getattr(exc, "full_key", None) else where
            raise ValueError(f"{key}{_first_line(exc)}") from None
    try:
        opts.check()
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None
    return opts  # type: ignore[return-value]


def build_chain(codec_nodes: Sequence[Any], error_feedback: bool = False) -> Chain:
    """The chain of `codec_nodes` (e.g. `[{name: topk, fraction: 0.1}, {name: int8}]`).

    Raises a one-line ValueError for an unknown codec, a bad option, or a misordered chain.
    """
    if isinstance(codec_nodes, Mapping | DictConfig | str):
        raise ValueError("codecs must be a list of codec nodes, e.g. [{name: topk}, {name: int8}]")
    opts = [parse_codec(node, f"codecs[{i}].") for i, node in enumerate(codec_nodes)]
    for i, o in enumerate(opts):
        for key, default in (("error_feedback", False), ("down", "none")):
            if getattr(o, key) != default:
                raise ValueError(
                    f"codecs[{i}].{key}: set {key} on the chain node, not on its codecs"
                )
    return Chain([_STAGES[o.name][1](o) for o in opts], error_feedback=bool(error_feedback))


def chain_from_node(node: Any) -> Chain:
    """The chain a `compression` config node selects: a single codec (`{name: int8, ...}`), a
    chain (`{name: chain, codecs: [...], error_feedback: ...}`), or `{name: none}` (empty)."""
    if isinstance(node, ChainOptions):
        return build_chain(node.codecs, node.error_feedback)
    name = node.name if is_dataclass(node) else node.get("name")
    if name == "none":
        return Chain()
    if name == "chain":
        opts = node if is_dataclass(node) else _typed_chain(node)
        return build_chain(opts.codecs, opts.error_feedback)
    opts = parse_codec(node)
    return Chain([_STAGES[opts.name][1](opts)], error_feedback=opts.error_feedback)


def downlink_chain(down: Any) -> Chain | None:
    """The downlink codec a compression node's `down` selects: None for `none` (dense float32),
    else a one-quantizer chain. The downlink carries the global *state*, whole, every round
    (sampled clients keep no model between their rounds), so sparsifiers are refused, and so is
    any stage whose :meth:`down_problem` says it cannot encode a state; error feedback too (it is
    per client, on the uplink). One-line ValueErrors prefixed `down`.
    """
    if isinstance(down, str):
        down = {"name": down}
    if not isinstance(down, Mapping | DictConfig):
        raise ValueError("down must be a codec name (fp16) or node ({name: int8, block: 64})")
    name = down.get("name")
    if name == "none":
        if set(down) - {"name"}:
            raise ValueError("down=none takes no options")
        return None
    if name == "chain":
        raise ValueError("down takes one quantizer (fp16 | bf16 | int8 | int4 | nf4), not a chain")
    opts = parse_codec(down, "down.")
    for key, default in (("error_feedback", False), ("down", "none")):
        if getattr(opts, key) != default:
            raise ValueError(f"down.{key} is an uplink setting; remove it from the down node")
    stage = _STAGES[opts.name][1](opts)
    if problem := stage.down_problem():
        raise ValueError(f"down={opts.name}: {problem}")
    return Chain([stage])


class Chain:
    """Sparsifier then quantizer, optional error feedback; see the module docstring.

    Attributes:
        summable: True iff decode is linear in the payload for payloads made with the same seed
            (`decode(sum_payloads(ps)) == sum(decode(p))`): only the empty chain and `[randk]`.
        can_grow_norm: True iff `||decode(encode(x))||` can exceed `||x||` (rounding up, random
            levels, unbiased rescaling): DP must then clip after decoding.
        error_feedback: whether :meth:`encode` takes and returns a residual.
    """

    def __init__(self, stages: Sequence[Stage] = (), error_feedback: bool = False) -> None:
        self.stages = tuple(stages)
        names = [s.options.name for s in self.stages]
        listed = f"codecs=[{', '.join(names)}]"
        kinds = [s.kind for s in self.stages]
        if kinds.count("sparsifier") > 1 or kinds.count("quantizer") > 1:
            kind = "sparsifier" if kinds.count("sparsifier") > 1 else "quantizer"
            raise ValueError(f"{listed}: at most one {kind} per chain")
        if kinds == ["quantizer", "sparsifier"]:
            raise ValueError(f"{listed}: the sparsifier ({names[1]}) must come first")
        self.sparsifier: Sparsifier | None = (
            self.stages[0] if kinds[:1] == ["sparsifier"] else None  # type: ignore[assignment]
        )
        quantizers = [s for s in self.stages if s.kind == "quantizer"]
        self.quantizer: Quantizer = quantizers[0] if quantizers else Float32(CodecOptions("fp32"))
        self.error_feedback = bool(error_feedback)
        problems = [p for s in self.stages if (p := s.ef_problem())] if error_feedback else []
        if problems:
            raise ValueError(f"{listed}: {problems[0]}")
        self.names = tuple(names)
        parts: list[Any] = [self.quantizer, *([self.sparsifier] if self.sparsifier else [])]
        self.summable = all(p.summable for p in parts)
        self.can_grow_norm = any(p.can_grow_norm for p in parts)

    def __repr__(self) -> str:
        return f"Chain([{', '.join(self.names)}], error_feedback={self.error_feedback})"

    @np.errstate(invalid="ignore", divide="ignore", over="ignore")  # NaN/inf input stays visible
    def encode(
        self, delta: State, *, spec: StateSpec, seed: int, residual: State | None = None
    ) -> tuple[bytes, State | None]:
        """(payload, new residual); the residual is None unless error feedback is on.

        With error feedback, `residual` is the previous round's (None: zero) and the update
        encoded is `delta + residual`; the new residual is what the decoder will miss.
        """
        x = spec.flatten(delta)
        if self.error_feedback:
            if residual is not None:
                x = x + spec.flatten(residual)
        elif residual is not None:
            raise ValueError("a residual was given but this chain has error_feedback off")
        payload = self._encode_flat(x, spec, _seed(seed))
        if not self.error_feedback:
            return payload, None
        return payload, spec.unflatten(x - self.decode_flat(payload, spec))

    def decode(self, payload: bytes, spec: StateSpec) -> State:
        """The update a payload stands for, as a :data:`State` (writable float32 arrays)."""
        return spec.unflatten(self.decode_flat(payload, spec))

    def _encode_flat(self, x: np.ndarray, spec: StateSpec, seed: int) -> bytes:
        q_rng = np.random.default_rng([seed, 1])
        if self.sparsifier is None:
            return self.quantizer.encode(x, spec.sizes, q_rng)
        head, sel = self.sparsifier.select(x, spec, seed)
        return head + self.quantizer.encode(x[sel.positions], sel.seg, q_rng)

    @np.errstate(invalid="ignore", divide="ignore", over="ignore")
    def decode_flat(self, payload: bytes | memoryview, spec: StateSpec) -> np.ndarray:
        """The decoded update as one float32 vector in spec order."""
        reader = Reader(payload)
        sel = self.sparsifier.parse(reader, spec) if self.sparsifier else None
        seg = spec.sizes if sel is None else sel.seg
        need = reader.pos + self.quantizer.nbytes(seg)
        if len(reader.buf) != need:
            raise ValueError(
                f"payload has {len(reader.buf)} bytes; {self!r} needs {need} for this state spec"
            )
        values = self.quantizer.decode(reader, seg)
        reader.done()
        if sel is None:
            return values
        if sel.gain is not None:
            values = values * np.repeat(sel.gain.astype(np.float32), sel.seg)
        out = np.zeros(spec.size, np.float32)
        out[sel.positions] = values
        return out

    def sum_payloads(self, payloads: Sequence[bytes], spec: StateSpec) -> bytes:
        """The payload of the sum (summable chains only): the index sections must be equal (same
        seed), the float32 value sections are added."""
        if not self.summable:
            raise ValueError(f"{self!r} is not summable")
        if not payloads:
            raise ValueError("sum_payloads needs at least one payload")
        heads = set()
        total: np.ndarray | None = None
        for p in payloads:
            reader = Reader(p)
            if self.sparsifier is not None:
                self.sparsifier.parse(reader, spec)
            heads.add(bytes(reader.buf[: reader.pos]))
            values = np.frombuffer(reader.take(reader.rest()), "<f4")
            total = values.astype(np.float32) if total is None else total + values
        if len(heads) != 1:
            raise ValueError("payloads select different positions (made with different seeds)")
        assert total is not None
        return heads.pop() + total.astype("<f4").tobytes()


@dataclass
class ChainOptions:
    """Options of `compression=chain`: a list of codec nodes and one error-feedback switch."""

    name: str = "chain"
    codecs: list[Any] = field(default_factory=list)
    error_feedback: bool = False
    down: Any = field(default="none", metadata={"help": DOWNLINK_HELP})

    def check(self) -> None:
        """Build once to reject unknown codecs, bad options and misordered chains."""
        build_chain(self.codecs, self.error_feedback)


@register("compression", "chain", ChainOptions)
def chain_factory(options: ChainOptions) -> Chain:
    """`compression=chain`: the chain of `options.codecs`."""
    return build_chain(options.codecs, options.error_feedback)


def _typed_chain(node: Mapping[str, Any] | DictConfig) -> ChainOptions:
    unknown = sorted(set(node) - {f.name for f in fields(ChainOptions)})
    if unknown:
        raise ValueError(f"{unknown[0]} is not an option of chain (codecs, error_feedback, down)")
    try:
        plain = OmegaConf.to_container(node) if isinstance(node, DictConfig) else dict(node)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ChainOptions), plain))
    except OmegaConfBaseException as exc:
        raise ValueError(_first_line(exc)) from None


def _seed(seed: int) -> int:
    seed = operator.index(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed={seed} must be in [0, 2**64)")
    return seed


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
