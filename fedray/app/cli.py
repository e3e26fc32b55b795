"""Command-line entry points.

`fedray [overrides...]` runs an experiment (Hydra: `-m` for sweeps, `--cfg job` to print the
composed config); the other verbs live in their own modules, listed in :data:`VERBS`, and each
takes `--help`.

Every configuration is composed and validated before Hydra runs a job and before Ray starts,
for each combination of a sweep, so bad input costs a second and one line of error, exit 2.
A sweep runs every job even when some fail, then exits 1 naming the failed jobs.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import threading
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedray.app.console import (
    EXIT_FAILED,
    condense,
    fail,
    install_signal_handlers,
    interrupted,
)
from fedray.app.preflight import check_overrides, check_tracking_uri, check_writable_dir
from fedray.app.space import CONF_DIR, parse_space
from fedray.app.spec import build_spec, register_configs
from fedray.core.errors import ConfigError, FedrayError

# `fedray VERB ...` -> "module:function"; the function takes the arguments after the verb.
# One line per verb, so verbs added on different branches merge without touching each other.
VERBS: dict[str, str] = {
    "resume": "fedray.app.resume:main",
    "submit": "fedray.app.submit:main",  # a run or sweep as a job on a Ray cluster
    "tune": "fedray.app.tune:main",
    "report": "fedray.app.report:main",
}

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
_COMPOSE_LOCK = threading.Lock()  # Hydra's compose API is process-global (`fedray tune` threads)
_NO_PRECHECK = ("--help", "-h", "--hydra-help", "--info", "--shell-completion", "-sc")

log = logging.getLogger(__name__)

__all__ = ["CONF_DIR", "VERBS", "compose", "condense", "fail", "main", "precheck"]


def compose(overrides: list[str], *, hydra: bool = False) -> DictConfig:
    """Compose `conf/config.yaml` with overrides (with the `hydra` node if `hydra`).

    Raises ConfigError (one line) on any composition problem.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not CONF_DIR.is_dir():
        raise ConfigError(f"config directory {CONF_DIR} is missing; install fedray with -e")
    register_configs()
    try:
        with _COMPOSE_LOCK, initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose("config", overrides=overrides, return_hydra_config=hydra)
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


def _flag_value(flags: list[str], *names: str) -> str | None:
    for i, flag in enumerate(flags):
        name, _, value = flag.partition("=")
        if name in names:
            return value or (flags[i + 1] if i + 1 < len(flags) else "")
    return None


def _is_hydra_key(override: str) -> bool:
    return override.lstrip("+~").startswith("hydra")


def sweep_combinations(overrides: list[str]) -> list[list[str]]:
    """The job overrides of every combination a sweep of `overrides` composes (a preset's axes
    included, an interval at both ends; at most MAX_COMBINATIONS)."""
    combos = sweep_space(overrides).check_combinations()
    return [[o for o in combo if not _is_hydra_key(o)] for combo in combos]


def sweep_space(overrides: list[str]):
    """The sweep's axes: the command line's plus the composed config's `hydra.sweeper.params`.

    Composing with the command line's single values and hydra overrides (sweeps left out) also
    checks `hydra/sweeper=...` and `hydra.*` keys, so a bad one is one line here, not a
    multi-line Hydra error after the sweep has started.
    """
    for override in overrides:
        if override.lstrip("+").startswith("hydra.sweeper.params="):
            raise ConfigError(
                f"{override}: Hydra cannot take a search space as one dict on the command line; "
                "sweep each key on its own (client.lr='interval(1e-4,1e-2)' "
                "partition.alpha=0.1,1.0) or declare hydra.sweeper.params in a conf/experiment/ "
                "preset"
            )
    first = parse_space(overrides, conf_dir=CONF_DIR)
    hydra_cfg = compose(first.fixed, hydra=True).hydra
    params = hydra_cfg.sweeper.get("params")
    if params is None:
        params = {}
    elif not isinstance(params, DictConfig):
        raise ConfigError(
            "hydra.sweeper.params must map keys to sweep strings; declare it in a "
            "conf/experiment/ preset, or sweep on the command line (key=a,b or interval(lo,hi))"
        )
    params = {str(k): str(v) for k, v in params.items()}
    return parse_space(overrides, params, conf_dir=CONF_DIR)


def precheck(argv: list[str]) -> None:
    """Compose and validate every configuration the command line asks for.

    With `--cfg` and `-m`, print the config of each combination instead (Hydra refuses that
    pair), and exit.
    """
    flags, overrides = split_argv(argv)
    if any(f.split("=")[0] in _NO_PRECHECK for f in flags):
        return
    check_overrides(overrides)
    for override in overrides:
        key, _, value = override.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and "$" not in value:
            check_writable_dir(value, key)
    check_writable_dir(os.getcwd(), "the working directory")
    multirun = any(f in ("-m", "--multirun") for f in flags)
    cfg_mode = _flag_value(flags, "--cfg", "-c")
    if multirun:
        space = sweep_space(overrides)
        combos = [[o for o in c if not _is_hydra_key(o)] for c in space.check_combinations()]
    else:
        space = None
        combos = [[o for o in overrides if not _is_hydra_key(o)]]
        compose(overrides, hydra=True)  # hydra.* overrides and hydra/ groups, one line each
    uris = set()
    for combo in combos:
        cfg = compose(combo)
        spec = build_spec(cfg)
        if spec.tracking.enabled:
            uris.add(spec.tracking.uri)
        if multirun and cfg_mode is not None:
            _print_config(cfg, combo, cfg_mode, space)
    if multirun and cfg_mode is not None:
        raise SystemExit(0)
    for uri in sorted(u for u in uris if u):
        check_tracking_uri(uri)


def _print_config(cfg: DictConfig, combo: list[str], mode: str, space) -> None:
    if mode != "job":
        fail(f"--cfg {mode} -m: only --cfg job can be printed per sweep combination")
    values = [o for o in combo if o.split("=")[0].lstrip("+~") in space.axes]
    print(f"# {' '.join(values) or '(no swept key)'}")
    print(OmegaConf.to_yaml(cfg), end="")
    print("---")


def _task(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from fedray.app.run import RUN_INFO, run_experiment
    from fedray.app.sweep import JobOutcome, child_tags, record_failed_job
    from fedray.tracking.tracker import one_line

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    name = f"{cfg.name}-{hc.job.num}" if multirun and not cfg.tracking.run_name else None
    tags = {"fedray.overrides": " ".join(overrides), "fedray.run_dir": hc.runtime.output_dir}
    if multirun:
        tags["fedray.sweep_dir"] = str(hc.sweep.dir)
        tags["fedray.job"] = str(hc.job.num)
        tags.update(child_tags(overrides))
    if not multirun:
        try:
            return run_experiment(
                cfg, hc.runtime.output_dir, cwd=hc.runtime.cwd, run_name=name, tags=tags
            ).metric
        except FedrayError as exc:
            fail(condense(str(exc)))
    try:
        result = run_experiment(
            cfg, hc.runtime.output_dir, cwd=hc.runtime.cwd, run_name=name, tags=tags
        )
        return JobOutcome(result.metric)
    except Exception as exc:  # the sweep goes on; KeyboardInterrupt / SIGTERM end it
        error = condense(str(exc)) if isinstance(exc, FedrayError) else one_line(exc)
        if not isinstance(exc, FedrayError):
            log.exception("job %s failed", hc.job.num)  # the traceback, in the job's log file
        print(f"fedray: job {hc.job.num} failed: {error}", file=sys.stderr, flush=True)
        if not (Path(hc.runtime.output_dir) / RUN_INFO).exists():  # no MLflow run was opened
            record_failed_job(cfg, hc.runtime.cwd, name or cfg.name, tags, error)
        return JobOutcome(math.nan, ok=False, error=error)


def _run_hydra() -> None:
    import hydra

    register_configs()
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_task)()


def _report_sweep() -> None:
    """After a sweep: exit 1 naming the failed jobs (each already printed its error)."""
    from fedray.app.sweep import STATE

    failed = STATE.failed
    if not STATE.jobs:
        return
    where = f"; MLflow parent run {STATE.parent_run_id}" if STATE.parent_run_id else ""
    if failed:
        names = ", ".join(f"#{j.num} ({_axis_values(j.overrides, STATE.axes)})" for j in failed)
        fail(f"{len(failed)} of {len(STATE.jobs)} sweep jobs failed: {names}{where}", EXIT_FAILED)
    print(f"sweep: {len(STATE.jobs)} jobs finished{where}")


def _axis_values(overrides: list[str], axes: list[str]) -> str:
    picked = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in axes]
    return " ".join(picked or overrides)


# Hydra's Optuna sweeper with fedray's defaults (the task's direction, a seeded TPE, storage
# under the sweep dir): conf/hydra/sweeper/fedray_optuna.yaml extends the plugin's `optuna`.
SWEEPER_ALIASES = {"hydra/sweeper=optuna": "hydra/sweeper=fedray_optuna"}


def run(argv: list[str]) -> None:
    """The default verb: one experiment, or a sweep with -m."""
    argv = [SWEEPER_ALIASES.get(a, a) for a in argv]
    try:
        precheck(argv)
    except FedrayError as exc:
        fail(str(exc))
    sys.argv = [sys.argv[0], *argv]
    _run_hydra()
    flags, _ = split_argv(argv)
    if any(f in ("-m", "--multirun") for f in flags):
        _report_sweep()


def dispatch(verb: str, args: list[str]) -> None:
    """Run `fedray VERB ARGS...` (by name: verbs build on this module, not the other way round).

    A verb's non-zero return value is the exit status; a FedrayError is one line, exit 2.
    """
    module, _, function = VERBS[verb].partition(":")
    try:
        code = getattr(importlib.import_module(module), function)(args)
    except FedrayError as exc:
        fail(condense(str(exc)))
    if code:
        raise SystemExit(code)


def main() -> None:
    """The `fedray` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # fedray prints each run's UI link itself (in the model-training view); MLflow's own
    # "View run ... at" lines for http stores would repeat it on every run end.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    install_signal_handlers()
    argv = sys.argv[1:]
    try:
        if argv and argv[0] in VERBS:
            dispatch(argv[0], argv[1:])
        else:
            run(argv)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (Terminated)
        interrupted(exc)


if __name__ == "__main__":
    main()
