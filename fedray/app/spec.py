"""One typed run spec, built and validated once, before anything starts.

:func:`build_spec` turns a composed (or reloaded) config into a :class:`FedrayConfig` whose
plugin groups (algorithm, selection, compression, privacy) hold their options' dataclasses, and
checks everything that can be checked without data: each value, each plugin's own options
(``check()``), options that depend on other groups (``check_against(spec)``), and combinations
of stages that cannot work. Every failure is one line naming the key (ConfigError).
"""

from __future__ import annotations

import logging
import math

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from fedray.app import preflight
from fedray.client import attack, faults
from fedray.client.speed import check_speed
from fedray.core import registry
from fedray.core.config import FedrayConfig
from fedray.core.errors import ConfigError
from fedray.models import groups
from fedray.pipeline import check_pipeline

log = logging.getLogger(__name__)

PLUGIN_GROUPS = ("algorithm", "selection", "compression", "privacy")


def objective_direction(task: str) -> str:
    """`maximize` or `minimize`: the direction of the objective of the registered task `task`."""
    return str(registry.entry("task", task).factory.objective.direction)


def register_configs() -> None:
    """Register the root schema so `conf/config.yaml` can name it in its defaults list, and the
    `${fedray_direction:TASK}` resolver (the sweep direction a task's objective declares)."""
    ConfigStore.instance().store(name="fedray_schema", node=FedrayConfig)
    if not OmegaConf.has_resolver("fedray_direction"):
        OmegaConf.register_new_resolver("fedray_direction", objective_direction)


def _plugin_node(cfg: DictConfig, group: str) -> DictConfig:
    node = cfg.get(group)
    if node is None or "name" not in node:
        raise ConfigError(f"{group}: missing `name`; pick an option, e.g. {group}=<option>")
    return node


def build_spec(cfg: DictConfig) -> FedrayConfig:
    """The typed, validated run spec of a composed config (ConfigError on the first problem)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required; set it, e.g. {missing[0]}=VALUE")
    preflight.check_known_keys(cfg, FedrayConfig)
    plugins = {group: registry.parse(group, _plugin_node(cfg, group)) for group in PLUGIN_GROUPS}
    spec = registry.typed(FedrayConfig, cfg, "")
    for group, options in plugins.items():
        setattr(spec, group, options)
    registry.entry("task", spec.data.task)  # unknown task: one line listing the known ones
    _check_values(spec)
    for group in PLUGIN_GROUPS:
        check_against = getattr(plugins[group], "check_against", None)
        if check_against is not None and (problem := check_against(spec)):
            raise ConfigError(f"{group}.{problem}")
    check_pipeline(spec)
    if (warning := oversubscription(spec)) is not None:
        log.warning(warning)
    if spec.tracking.enabled:
        preflight.check_tracking_store(spec.tracking.uri)
    return spec


def validate(cfg: DictConfig) -> None:
    """:func:`build_spec`, for its checks only."""
    build_spec(cfg)


def _check_values(spec: FedrayConfig) -> None:
    """Single values and cross-group rules of the fixed-shape groups."""
    p, m, c, d = spec.partition, spec.mode, spec.client, spec.data
    checks: list[tuple[bool, str]] = [
        (p.num_clients >= 1, f"partition.num_clients={p.num_clients} must be >= 1"),
        (p.name != "dirichlet" or p.alpha > 0, f"partition.alpha={p.alpha} must be > 0"),
        (p.classes_per_client >= 1, "partition.classes_per_client must be >= 1"),
        (p.power > 0, f"partition.power={p.power} must be > 0"),
        (p.max_samples_per_client >= 0, "partition.max_samples_per_client must be >= 0"),
        (m.rounds >= 1, f"mode.rounds={m.rounds} must be >= 1"),
        (m.clients_per_round >= 1, f"mode.clients_per_round={m.clients_per_round} must be >= 1"),
        (
            p.name == "natural" or bool(spec.cluster.silos) or m.clients_per_round <= p.num_clients,
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
        (
            d.name not in ("hf", "files") or bool(d.path) or bool(spec.cluster.silos),
            f"data.path is required with data={d.name}; set data.path=<dataset name or file>",
        ),
        (
            bool(spec.model.name_or_path),
            "model.name_or_path is required; set it to a hub name or a local model directory",
        ),
        (spec.model.finetune in ("lora", "full"), "model.finetune must be lora or full"),
        (
            spec.model.dtype in ("float32", "bfloat16", "float16"),
            "model.dtype must be float32, bfloat16 or float16",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    problem = (
        groups.spec_problem(spec)
        or check_speed(spec.speed)
        or _mode_problem(spec)
        or _reliability_problem(spec)
        or _silo_problem(spec)
        or _rows_problem(spec)
        or faults.check(spec.faults, m.client_timeout_s)
        or attack.check(spec.attack)
    )
    if problem:
        raise ConfigError(problem)


def _mode_problem(spec: FedrayConfig) -> str | None:
    """Sync-only and async-only options and algorithms used in the wrong mode, or None."""
    m, algo = spec.mode, spec.algorithm.name
    algo_mode = registry.entry("algorithm", algo).factory.mode
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
    return None


def _silo_problem(spec: FedrayConfig) -> str | None:
    """Cross-silo settings (`cluster.silos`), or None."""
    silos = spec.cluster.silos
    if not silos:
        return None
    if not spec.cluster.address:
        return (
            "cluster.silos needs an existing cluster whose nodes carry the silos' labels; set "
            "cluster.address (fedray submit sets it) or drop cluster.silos"
        )
    if spec.client.num_actors is not None:
        return "client.num_actors does not apply with cluster.silos; set cluster.silos[i].actors"
    names = [s.name for s in silos]
    for i, s in enumerate(silos):
        key = f"cluster.silos[{i}]"
        if not s.name or not s.name.replace("-", "_").isidentifier():
            return f"{key}.name={s.name!r}: use letters, digits, - and _"
        if s.name in names[:i]:
            return f"{key}.name={s.name!r} is used twice; give each silo its own name"
        source = s.source or spec.data.name
        if source in ("hf", "files") and not (s.path or spec.data.path):
            return f"{key}.path is required with data={source}; set it to the file on that node"
        if not s.labels or not all(s.labels.values()):
            return (
                f"{key}.labels is empty; name the Ray node labels of the silo's nodes, e.g. "
                f"labels: {{silo: {s.name}}} with `ray start --labels silo={s.name}` there"
            )
        if s.clients < 1 or s.actors < 1:
            return f"{key}: clients={s.clients} and actors={s.actors} must be >= 1"
    total = sum(s.clients for s in silos)
    if spec.mode.clients_per_round > total:
        return (
            f"mode.clients_per_round={spec.mode.clients_per_round} exceeds the {total} clients "
            "of cluster.silos; lower it or raise cluster.silos[i].clients"
        )
    return None


def _reliability_problem(spec: FedrayConfig) -> str | None:
    """Retries, quorum policy and update filtering, or None."""
    m = spec.mode
    if m.max_retries < 0:
        return f"mode.max_retries={m.max_retries} must be >= 0"
    if m.on_quorum_loss not in ("stop", "skip"):
        return f"mode.on_quorum_loss={m.on_quorum_loss!r}: use stop or skip"
    if not (m.max_norm_ratio == 0 or m.max_norm_ratio > 1):
        return f"mode.max_norm_ratio={m.max_norm_ratio} must be 0 (off) or > 1"
    if m.client_timeout_s < 0:
        return "mode.client_timeout_s must be >= 0"
    return None


def oversubscription(spec: FedrayConfig) -> str | None:
    """A warning when a CPU actor runs more torch threads than the CPUs it reserves, else None.

    Such threads compete with the other actors' for the same cores: on a 2-core machine, two
    1-CPU actors with 2 threads each trained W2's clients 3-6x slower than with 1 thread each.
    """
    c = spec.client
    if c.torch_threads is None or c.num_gpus > 0 or c.device == "cuda":
        return None
    if c.torch_threads <= math.ceil(c.num_cpus):
        return None
    return (
        f"client.torch_threads={c.torch_threads} exceeds client.num_cpus={c.num_cpus:g}: each "
        "actor runs more torch threads than the CPUs it reserves, and actors sharing cores this "
        "way slow each other down; set client.torch_threads=null to match the CPU slot"
    )


def _rows_problem(spec: FedrayConfig) -> str | None:
    """`client.embedding_rows=lookups` needs a plaintext sync mean (:func:`mean_of`)."""
    if spec.client.embedding_rows != "lookups":
        return None
    algorithm = registry.entry("algorithm", spec.algorithm.name).factory
    if spec.privacy.name != "none":
        return (
            f"client.embedding_rows=lookups cannot run with privacy={spec.privacy.name}: the row "
            "counts travel in plaintext beside the update; use client.embedding_rows=samples"
        )
    if spec.mode.name != "sync" or algorithm.requires_individual_updates:
        return (
            f"client.embedding_rows=lookups needs the synchronous weighted mean; "
            f"algorithm={spec.algorithm.name} (mode={spec.mode.name}) aggregates otherwise; use "
            "client.embedding_rows=samples"
        )
    if len(groups.architectures(spec.model)) > 1:
        return "client.embedding_rows=lookups needs one model architecture (model.groups)"
    return None
