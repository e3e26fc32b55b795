"""`fedray submit [flags] [-m] [overrides...]`: a run or a sweep as a job on an existing Ray
cluster, through Ray's job submission API (the cluster's dashboard, port 8265).

The job ships this project (the `fedray/` package and `conf/`) as its working directory, less
`.git`, run outputs, MLflow stores, virtual environments and caches (:mod:`fedray.app.package`).
On the cluster it runs ``python -m fedray.app.cli ... cluster.address=auto`` from a runs
directory on the head (`--root`), exactly as a local run started there: Hydra's run
directories, checkpoints and the default MLflow store (`mlflow.db`) land in that directory, and
`fedray submit resume RUN_ID` finds them. The submission id is derived from the command line
and the shipped tree, so submitting the same thing twice finds the job of the first submission
instead of starting a second one. `--k8s FILE` writes a KubeRay RayJob for the same command
instead of submitting.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedray.app.package import EXCLUDES, PROJECT, check_size, tree_uri
from fedray.core.errors import ConfigError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
DEFAULT_ROOT = "~/fedray-runs"
K8S_ROOT = "/runs"  # the runs volume of docker/k8s/raycluster.yaml's head
AGENT_WAIT_S = 60.0  # a cluster that just started has no job agent for a few seconds
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class SubmitOptions:
    """What `fedray submit` takes besides the run's own overrides."""

    address: str = field(
        default=DEFAULT_ADDRESS, metadata={"help": "The cluster's job server (dashboard) URL."}
    )
    root: str = field(
        default=DEFAULT_ROOT,
        metadata={"help": "Runs directory on the head: Hydra outputs, checkpoints, mlflow.db."},
    )
    wait: bool = field(default=False, metadata={"help": "Follow the logs until the job ends."})
    rerun: bool = field(
        default=False, metadata={"help": "Start a new job even if this one was submitted before."}
    )
    env: dict[str, str] = field(
        default_factory=dict, metadata={"help": "Environment variables of the job (KEY=VALUE)."}
    )
    k8s: str | None = field(
        default=None, metadata={"help": "Write a KubeRay RayJob manifest here; submit nothing."}
    )
    image: str = field(
        default="fedray:cpu", metadata={"help": "--k8s: the image holding fedray (docker/)."}
    )

    def check(self) -> None:
        if not self.address.startswith(("http://", "https://")):
            raise ConfigError(
                f"--address={self.address}: give the job server's URL, e.g. {DEFAULT_ADDRESS} "
                "(the dashboard port, not the GCS port 6379 or ray://)"
            )
        if not self.root or any(c in self.root for c in "\n'\"$`"):
            raise ConfigError(f"--root={self.root!r}: give a plain directory path on the head")


def parse(argv: list[str]) -> tuple[SubmitOptions, list[str]]:
    """(submit options, the arguments the job's `fedray` gets)."""
    parser = argparse.ArgumentParser(
        prog="fedray submit",
        description="Submit a fedray run or sweep (-m) to an existing Ray cluster as a job.",
        epilog="Anything else is passed to the job's `fedray` (overrides, -m, Hydra flags).",
    )
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS)
    parser.add_argument("--root", default=DEFAULT_ROOT, help=_help("root"))
    parser.add_argument("--wait", action="store_true", help=_help("wait"))
    parser.add_argument("--rerun", action="store_true", help=_help("rerun"))
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--k8s", metavar="FILE", help=_help("k8s"))
    parser.add_argument("--image", default="fedray:cpu", help=_help("image"))
    args, rest = parser.parse_known_args(argv)
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {item}: write KEY=VALUE")
        env[key] = value
    options = SubmitOptions(
        address=args.address,
        root=args.root,
        wait=args.wait,
        rerun=args.rerun,
        env=env,
        k8s=args.k8s,
        image=args.image,
    )
    options.check()
    return options, rest


def _help(name: str) -> str:
    return next(
        f.metadata["help"] for f in SubmitOptions.__dataclass_fields__.values() if f.name == name
    )


# -- what the job runs -----------------------------------------------------------------------
def job_args(rest: list[str]) -> list[str]:
    """The job's `fedray` arguments: the user's, plus `cluster.address=auto` (join the cluster
    the job runs on) unless an address was given."""
    from fedray.app.cli import split_argv

    if rest and rest[0] == "resume":
        return rest
    _, overrides = split_argv(rest)
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    return rest if "cluster.address" in keys else [*rest, "cluster.address=auto"]


def shell_dir(path: str) -> str:
    """`path` for a POSIX shell, quoted, with a leading `~/` left for the shell to expand."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def entrypoint(args: list[str], root: str) -> str:
    """The job's shell command: run `fedray` from the runs directory on the head."""
    where = shell_dir(root)
    command = shlex.join(["python", "-m", "fedray.app.cli", *args])
    return f"mkdir -p {where} && cd {where} && exec {command}"


def precheck_job(rest: list[str]) -> None:
    """Compose and validate every configuration the job will run, here, before any upload.

    Paths in the overrides are the cluster's: a local sqlite/file tracking store is not
    checked for writability here (the job checks it on the head).
    """
    from fedray.app.cli import compose, split_argv, sweep_combinations
    from fedray.app.preflight import check_overrides
    from fedray.app.spec import validate

    if rest and rest[0] == "resume":
        if len(rest) != 2:
            raise ConfigError("usage: fedray submit [flags] resume RUN_DIR|MLFLOW_RUN_ID")
        return
    flags, overrides = split_argv(rest)
    check_overrides(overrides)
    job = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    combos = sweep_combinations(job) if any(f in ("-m", "--multirun") for f in flags) else [job]
    for combo in combos:
        local = [o for o in combo if not o.startswith("tracking.uri=")]
        validate(compose([*local, "tracking.uri=null"]))


def submission_id(args: list[str], options: SubmitOptions, tree: str) -> str:
    """`fedray-<12 hex>` from the job's arguments, runs directory, environment and tree."""
    payload = json.dumps([args, options.root, sorted(options.env.items()), tree])
    return "fedray-" + hashlib.sha256(payload.encode()).hexdigest()[:12]


def runtime_env(root: Path, options: SubmitOptions) -> dict:
    """The job's runtime environment: this project as working directory, the user's env."""
    env: dict = {"working_dir": str(root), "excludes": list(EXCLUDES)}
    if options.env:
        env["env_vars"] = dict(options.env)
    return env


# -- talking to the job server ----------------------------------------------------------------
def enable_token_auth() -> None:
    """A token given in the environment means token authentication (Ray needs the mode too)."""
    if os.environ.get("RAY_AUTH_MODE") is None and (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def connect(address: str):
    """A JobSubmissionClient; ConfigError with one line when the server is unusable."""
    from ray.exceptions import AuthenticationError

    try:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(address)
    except AuthenticationError:
        raise ConfigError(
            f"--address={address}: the cluster requires token authentication; export "
            "RAY_AUTH_TOKEN=<the cluster's token> (or RAY_AUTH_TOKEN_PATH=<file>) and retry"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"--address={address}: no Ray job server answers ({_first(exc)}); start the "
            "cluster's head with its dashboard (`ray start --head --dashboard-host=0.0.0.0`, "
            "needs `pip install 'fedray[cluster]'`) or fix the address"
        ) from None


def _first(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def existing(client, sid: str):
    """The job info of submission `sid`, or None."""
    try:
        return client.get_job_info(sid)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            return None
        raise


def submit_job(client, sid: str, entry: str, env: dict) -> None:
    """Submit, waiting out the few seconds a new cluster has no job agent yet."""
    end = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            client.submit_job(entrypoint=entry, runtime_env=env, submission_id=sid)
            return
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > end:
                raise ConfigError(f"the job server refused the job: {_first(exc)}") from None
            time.sleep(2.0)


def follow(client, sid: str, out=sys.stdout) -> str:
    """Print the job's logs as they come until it ends; its final status."""
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(sid):
            print(lines, end="", file=out, flush=True)

    asyncio.run(tail())
    status = str(client.get_job_status(sid).value)
    while status not in TERMINAL:  # logs end a moment before the status is final
        time.sleep(0.5)
        status = str(client.get_job_status(sid).value)
    return status


def mlflow_lines(logs: str) -> list[str]:
    """The `MLflow run ...` lines a job printed (one per run of a sweep)."""
    return [ln.strip() for ln in logs.splitlines() if ln.strip().startswith("MLflow run ")]


def where_tracked(args: list[str], root: str) -> str:
    """Where the job's MLflow runs go, as far as can be told before it runs."""
    uri = next((a.split("=", 1)[1] for a in args if a.startswith("tracking.uri=")), None)
    if uri:
        return uri
    return f"$MLFLOW_TRACKING_URI on the head if set, else sqlite:///{root}/mlflow.db there"


def main(argv: list[str], out=sys.stdout) -> int:
    """`fedray submit`; returns the exit status (0: submitted, or succeeded with --wait)."""
    import logging

    enable_token_auth()  # before Ray reads its configuration
    import ray  # noqa: F401 (it sets up its loggers on import: quiet them after)

    logging.getLogger("ray").setLevel(logging.WARNING)  # fedray prints what happens
    options, rest = parse(argv)
    args = job_args(rest)
    precheck_job(args)
    if options.k8s:
        from fedray.app.k8s import write_rayjob

        root = K8S_ROOT if options.root == DEFAULT_ROOT else options.root
        name = submission_id(args, options, "image:" + options.image)
        entry = entrypoint(args, root)
        path = write_rayjob(options.k8s, name, entry, options.env, options.image)
        print(f"wrote {path}; start it with: kubectl apply -f {path}", file=out)
        return 0
    root = PROJECT
    if not (root / "conf").is_dir() or not (root / "fedray").is_dir():
        raise ConfigError(
            f"{root} does not hold fedray/ and conf/; run fedray submit from a source checkout "
            "(pip install -e .)"
        )
    check_size(root)
    client = connect(options.address)
    sid = submission_id(args, options, tree_uri(root))
    if options.rerun:
        base, n = sid, 2
        while existing(client, sid) is not None:
            sid, n = f"{base}-{n}", n + 1
    info = existing(client, sid)
    if info is None:
        submit_job(client, sid, entrypoint(args, options.root), runtime_env(root, options))
        print(f"submitted job {sid} to {options.address}", file=out)
    else:
        print(
            f"job {sid} was already submitted ({info.status.value}); not starting another "
            "(pass --rerun to start a new one)",
            file=out,
        )
    print(f"follow its logs: ray job logs --address {options.address} --follow {sid}", file=out)
    print(f"its MLflow runs go to {where_tracked(args, options.root)}", file=out)
    if not options.wait:
        return 0
    status = follow(client, sid, out)
    for line in mlflow_lines(client.get_job_logs(sid)):
        print(line, file=out)
    print(f"job {sid} {status}", file=out)
    return 0 if status == "SUCCEEDED" else 1
