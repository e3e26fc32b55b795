"""`fedray submit` without a cluster: flags, the job's command, what ships, the submission id,
the upload limit, and one-line errors before anything is uploaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedray.app import package, submit
from fedray.core.errors import ConfigError


def test_flags_are_submits_and_the_rest_goes_to_the_job() -> None:
    options, rest = submit.parse(
        ["--address", "http://h:8265", "--wait", "-m", "partition.alpha=0.1,1.0", "--env", "A=b"]
    )
    assert (options.address, options.wait, options.env) == ("http://h:8265", True, {"A": "b"})
    assert rest == ["-m", "partition.alpha=0.1,1.0"]
    assert submit.job_args(rest) == [*rest, "cluster.address=auto"]
    assert submit.job_args(["cluster.address=ray://x:1"]) == ["cluster.address=ray://x:1"]
    assert submit.job_args(["resume", "abc"]) == ["resume", "abc"]


def test_address_default_comes_from_ray_address(monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert submit.parse([])[0].address == "http://head:8265"
    monkeypatch.delenv("RAY_ADDRESS")
    assert submit.parse([])[0].address == "http://127.0.0.1:8265"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--address", "127.0.0.1:6379"], "give the job server's URL"),
        (["--env", "NOVALUE"], "write KEY=VALUE"),
        (["--root", "$HOME/x"], "plain directory path"),
    ],
)
def test_bad_flags_are_one_line(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        submit.parse(argv)


def test_entrypoint_runs_fedray_from_the_runs_dir_quoted(tmp_path: Path) -> None:
    entry = submit.entrypoint(["mode.rounds=3", "data.path=/d/my file.csv"], "~/fedray runs")
    assert entry == (
        "mkdir -p ~/'fedray runs' && cd ~/'fedray runs' && exec python -m fedray.app.cli "
        "mode.rounds=3 'data.path=/d/my file.csv'"
    )
    shown = entry.replace("exec python -m fedray.app.cli", "pwd && printf '%s\\n'")
    out = subprocess.run(
        ["sh", "-c", shown], env={"HOME": str(tmp_path)}, capture_output=True, text=True
    )
    assert out.stdout.splitlines() == [
        f"{tmp_path}/fedray runs",  # ~ expanded by the head's shell, the rest kept whole
        "mode.rounds=3",
        "data.path=/d/my file.csv",
    ]


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    for rel, size in {
        "fedray/__init__.py": 10,
        "conf/config.yaml": 10,
        "big/weights.bin": 3000,
        "big/other.bin": 2000,
        ".git/objects/pack": 50_000,
        "outputs/2026/run/ckpt.npz": 50_000,
        "mlflow.db": 50_000,
        ".venv/lib/x.py": 50_000,
        "fedray/__pycache__/x.pyc": 50_000,
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    return root


def test_shipped_files_leave_out_git_outputs_stores_and_venvs(tmp_path: Path) -> None:
    root = _project(tmp_path)
    shipped = sorted(p for _, p in package.shipped_files(root))
    assert shipped == [
        "big/other.bin",
        "big/weights.bin",
        "conf/config.yaml",
        "fedray/__init__.py",
    ]
    assert package.check_size(root, limit=10_000) == 5020


def test_over_the_upload_limit_names_the_largest_files(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (root / "big" / "weights.bin").write_bytes(bytes(range(256)) * 400)  # barely compressible
    with pytest.raises(ConfigError) as err:
        package.check_size(root, limit=1000)
    message = str(err.value)
    assert "over Ray's upload limit" in message
    assert message.index("big/weights.bin") < message.index("big/other.bin")
    assert "\n" not in message


def test_submission_id_is_stable_and_tracks_command_and_tree(tmp_path: Path) -> None:
    root = _project(tmp_path)
    options, _ = submit.parse([])
    tree = package.tree_uri(root)
    a = submit.submission_id(["mode.rounds=3"], options, tree)
    assert a == submit.submission_id(["mode.rounds=3"], options, package.tree_uri(root))
    assert a.startswith("fedray-") and len(a) == len("fedray-") + 12
    assert a != submit.submission_id(["mode.rounds=4"], options, tree)
    (root / "fedray" / "__init__.py").write_text("changed")
    assert a != submit.submission_id(["mode.rounds=3"], options, package.tree_uri(root))
    (root / "outputs" / "new.txt").write_text("outputs do not ship")
    tree2 = package.tree_uri(root)
    (root / "outputs" / "newer.txt").write_text("nor change the id")
    assert package.tree_uri(root) == tree2


def test_the_project_itself_ships_under_the_limit() -> None:
    size = package.check_size(package.PROJECT)
    shipped = {p for _, p in package.shipped_files(package.PROJECT)}
    assert "conf/config.yaml" in shipped and "fedray/app/submit.py" in shipped
    assert not any(p.startswith((".git/", "outputs/")) or p == ".git" for p in shipped)
    assert 0 < size < 50 * 2**20


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedray.app.cli", "submit", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_bad_override_fails_before_contacting_any_cluster() -> None:
    out = _cli("--address", "http://127.0.0.1:9", "mode.rounds=0")
    assert out.returncode == 2
    assert out.stderr.strip() == "fedray: error: mode.rounds=0 must be >= 1"


def test_no_job_server_is_one_line(unused_port: int) -> None:
    out = _cli("--address", f"http://127.0.0.1:{unused_port}", "mode.rounds=1")
    assert out.returncode == 2, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Ray job server answers" in lines[0], out.stderr


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_k8s_writes_a_rayjob_for_the_command(tmp_path: Path) -> None:
    import yaml

    out = _cli("--k8s", str(tmp_path / "job.yaml"), "--image", "reg/fedray:1", "mode.rounds=2")
    assert out.returncode == 0, out.stderr
    job = yaml.safe_load((tmp_path / "job.yaml").read_text())
    assert job["kind"] == "RayJob" and job["metadata"]["name"].startswith("fedray-")
    assert job["spec"]["entrypoint"] == (
        "mkdir -p /runs && cd /runs && exec python -m fedray.app.cli mode.rounds=2 "
        "cluster.address=auto"
    )
    images = {
        c["image"]
        for g in [
            job["spec"]["rayClusterSpec"]["headGroupSpec"],
            *job["spec"]["rayClusterSpec"]["workerGroupSpecs"],
        ]
        for c in g["template"]["spec"]["containers"]
    }
    assert images == {"reg/fedray:1"}


def test_a_token_in_the_environment_turns_token_auth_on(monkeypatch) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    submit.enable_token_auth()
    assert submit.os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit mode is left alone
    submit.enable_token_auth()
    assert submit.os.environ["RAY_AUTH_MODE"] == "disabled"
