"""Command-line entry points.

`fedray [overrides...]` runs an experiment (Hydra: `-m` for sweeps, `--cfg job` to print the
composed config); `fedray resume RUN_DIR|RUN_ID` continues a checkpointed run in the same MLflow
run.

Every configuration is composed and validated before Hydra runs a job and before Ray starts,
for each combination of a sweep, so bad input costs a second and one line of error, exit 2.
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedray.app.preflight import check_overrides, check_writable_dir
from fedray.app.spec import register_configs, validate
from fedray.core.errors import ConfigError, FedrayError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
MAX_PRECHECK = 256  # sweep combinations validated up front
_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--info",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--shell-completion",
    "-sc",
}


def fail(message: str) -> None:
    """Print one line to stderr and exit with status 2."""
    print(f"fedray: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def condense(text: str) -> str:
    """One line out of a multi-line Hydra/OmegaConf message."""
    skip = ("full_key", "reference_type", "object_type", "config search path", "set the env")
    lines = [ln.strip().rstrip(":") for ln in str(text).splitlines()]
    keep: list[str] = []
    for ln in lines:
        if not ln:
            continue
        if ln.lower().startswith(skip) or ln.startswith(("provider=", "path=")):
            if ln.lower().startswith("config search path"):
                break
            continue
        keep.append(ln)
    if len(keep) > 1 and keep[1].lower().startswith("available options"):
        return f"{keep[0]}; {keep[1]}: {', '.join(keep[2:])}"
    return "; ".join(keep[:4]) if keep else "invalid configuration"


def compose(overrides: list[str]) -> DictConfig:
    """Compose `conf/config.yaml` with overrides; ConfigError on any composition problem."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not CONF_DIR.is_dir():
        raise ConfigError(f"config directory {CONF_DIR} is missing; install fedray with -e")
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        text, cause = str(exc), exc.__cause__
        while cause is not None:
            text, cause = f"{text}\n{cause}", cause.__cause__
        raise ConfigError(condense(text)) from None


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra flags with their values, config overrides)."""
    flags, overrides = [], []
    it = iter(argv)
    for arg in it:
        name = arg.split("=", 1)[0]
        if arg.startswith("-"):  # every Hydra flag starts with "-", no override does
            flags.append(arg)
            if name in _FLAGS_WITH_VALUE and "=" not in arg:
                flags.append(next(it, ""))
        else:
            overrides.append(arg)
    return flags, overrides


def sweep_combinations(overrides: list[str]) -> list[list[str]]:
    """Every override list a basic-sweeper multirun would compose (at most MAX_PRECHECK)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [combo for batch in batches for combo in batch][:MAX_PRECHECK]


def precheck(argv: list[str]) -> None:
    """Compose and validate every configuration the command line asks for."""
    flags, overrides = split_argv(argv)
    if any(
        f in ("--help", "-h", "--hydra-help", "--info", "--shell-completion", "-sc") for f in flags
    ):
        return
    check_overrides(overrides)
    for override in overrides:
        key, _, value = override.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and "$" not in value:
            check_writable_dir(value, key)
    check_writable_dir(os.getcwd(), "the working directory")
    job_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    combos = [job_overrides]
    if any(f in ("-m", "--multirun") for f in flags):
        try:
            combos = sweep_combinations(job_overrides)
        except Exception as exc:
            if "sweep" not in str(exc).lower() and "parse" in str(exc).lower():
                raise ConfigError(condense(str(exc))) from None
            combos = [[o for o in job_overrides if "," not in o and "(" not in o]]
    for combo in combos:
        validate(compose(combo))


def _task(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from fedray.app.run import run_experiment

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        overrides = " ".join(hc.overrides.task)
        name = f"{cfg.name}-{hc.job.num}" if multirun and not cfg.tracking.run_name else None
        tags = {"fedray.overrides": overrides, "fedray.run_dir": hc.runtime.output_dir}
        if multirun:
            tags["fedray.sweep_dir"] = str(hc.sweep.dir)
        return run_experiment(
            cfg, hc.runtime.output_dir, cwd=hc.runtime.cwd, run_name=name, tags=tags
        ).metric
    except FedrayError as exc:
        if not multirun:
            fail(condense(str(exc)))
        print(f"fedray: job {hc.job.num} failed: {condense(str(exc))}", file=sys.stderr)
        return math.nan


def _run_hydra() -> None:
    import hydra

    register_configs()
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_task)()


def resume(target: str) -> None:
    """`fedray resume RUN_DIR|RUN_ID`: continue a checkpointed run in the same MLflow run."""
    import json

    from fedray.app.resume import run_dir_of
    from fedray.app.run import RUN_INFO, run_experiment

    try:
        path = run_dir_of(target, os.getcwd())
    except FedrayError as exc:
        fail(str(exc))
    run_dir = str(path)
    cfg_file, info_file = path / ".hydra" / "config.yaml", path / RUN_INFO
    if not cfg_file.exists() or not info_file.exists():
        fail(f"{run_dir}: not a fedray run directory (needs .hydra/config.yaml and {RUN_INFO})")
    if not (path / "checkpoint").exists():
        fail(f"{run_dir}: no checkpoint; run with mode.checkpoint_every=N to make runs resumable")
    try:
        cfg = OmegaConf.load(cfg_file)
        info = json.loads(info_file.read_text())
    except Exception as exc:
        fail(
            f"{run_dir}: cannot read {cfg_file.name} or {RUN_INFO} ({condense(str(exc))}); "
            "restore them (the MLflow run keeps config.yaml as an artifact)"
        )
    if cfg.tracking.enabled and info.get("tracking_uri"):
        cfg.tracking.uri = info["tracking_uri"]
    try:
        run_experiment(cfg, path, cwd=os.getcwd(), resume_run_id=info.get("run_id"))
    except FedrayError as exc:
        fail(condense(str(exc)))


def main() -> None:
    """The `fedray` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # `kill` / `docker stop` send SIGTERM: turn it into SystemExit so every `finally` runs
    # (the MLflow run ends FAILED, Ray shuts down) instead of dying mid-write.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    argv = sys.argv[1:]
    if argv and argv[0] == "submit":  # a run or sweep as a job on a Ray cluster
        # by name: fedray.app.submit builds on this module's helpers, not the other way round
        submit = importlib.import_module("fedray.app.submit")
        try:
            raise SystemExit(submit.main(argv[1:]))
        except FedrayError as exc:
            fail(condense(str(exc)))
    if argv and argv[0] == "resume":
        if len(argv) != 2:
            fail("usage: fedray resume RUN_DIR|MLFLOW_RUN_ID")
        resume(argv[1])
        return
    try:
        precheck(argv)
    except FedrayError as exc:
        fail(str(exc))
    _run_hydra()


if __name__ == "__main__":
    main()
