"""docker/ and docker/k8s/ without a Docker engine or a Kubernetes cluster (none here): the
files parse, every file, port, volume and command they reference exists, and the KubeRay
manifests keep to the fields of the CRD versions we target (tests/k8s_schema.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from k8s_schema import check

from fedray.app import submit

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_dockerfile_builds_cpu_and_cuda_from_one_build_argument() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    stages = re.findall(r"^FROM \S+ AS (base-\w+)$", text, re.M)
    assert stages == ["base-cpu", "base-cuda"]
    assert re.search(r"^FROM base-\$\{VARIANT\}$", text, re.M)
    for source in re.findall(r"^COPY (\S+) ", text, re.M):  # every copied path exists
        for part in source.split():
            assert (ROOT / part).exists(), part
    assert "pip install -e '.[cluster]'" in text  # the job server (dashboard) on every node


def test_the_cluster_extra_pins_the_ray_job_server() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_dep = next(d for d in project["dependencies"] if d.startswith("ray"))
    assert project["optional-dependencies"]["cluster"] == [f"ray[default]{ray_dep[3:]}"]


def test_compose_references_exist() -> None:
    doc = _compose()
    services, volumes = doc["services"], set(doc["volumes"])
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "submit"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context == ROOT, name
            assert (context / build["dockerfile"]).is_file(), name
        else:
            assert ":" in service["image"], name  # a pinned public image
        for mount in service.get("volumes", []):
            volume, _, target = mount.partition(":")
            assert volume in volumes and target.startswith("/"), (name, mount)
        for dep in service.get("depends_on", {}):
            assert dep in services, (name, dep)
    fedray = [services[n] for n in ("ray-head", "ray-worker", "submit")]
    assert len({(s["image"], s["build"]["dockerfile"]) for s in fedray}) == 1  # one image


def test_compose_ports_match_the_commands() -> None:
    services = _compose()["services"]
    published = {
        name: [p.rsplit(":", 1)[1] for p in s.get("ports", [])] for name, s in services.items()
    }
    head = _command(services["ray-head"])
    assert "--dashboard-port=8265" in head and "--port=6379" in head and "--head" in head
    assert published["ray-head"] == ["8265"]
    assert "--address=ray-head:6379" in _command(services["ray-worker"])
    mlflow = _command(services["mlflow"])
    assert mlflow[mlflow.index("--port") + 1] == "5000" and published["mlflow"] == ["5000"]
    backend = mlflow[mlflow.index("--backend-store-uri") + 1]
    env = services["postgres"]["environment"]
    assert backend == (
        f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{env['POSTGRES_DB']}"
    )
    assert services["ray-head"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    for p in services.values():  # UIs only on this host
        assert all(port.startswith("127.0.0.1:") for port in p.get("ports", []))


def test_compose_submit_command_parses_and_its_config_validates() -> None:
    services = _compose()["services"]
    command = _command(services["submit"])
    assert command[:2] == ["fedray", "submit"]
    options, rest = submit.parse(command[2:])
    assert options.address == "http://ray-head:8265" and options.root == "/runs"
    assert options.wait
    head_volumes = dict(v.split(":")[::-1] for v in services["ray-head"]["volumes"])
    assert head_volumes["/runs"] == "runs"  # the runs dir survives the head container
    submit.precheck_job(submit.job_args(rest))  # raises ConfigError on a bad override


def test_compose_keeps_ray_token_authentication_on() -> None:
    services = _compose()["services"]
    for name in ("ray-head", "ray-worker", "submit"):
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name


def _k8s_docs() -> list[tuple[str, dict]]:
    return [
        (f.name, doc)
        for f in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(f.read_text())
        if doc is not None
    ]


@pytest.mark.parametrize(
    ("name", "doc"),
    _k8s_docs(),
    ids=[f"{n}:{d['kind']}:{d['metadata']['name']}" for n, d in _k8s_docs()],
)
def test_k8s_manifests_keep_to_the_schema(name: str, doc: dict) -> None:
    assert check(doc) == []


def test_k8s_schema_catches_typos() -> None:
    job = next(d for _, d in _k8s_docs() if d["kind"] == "RayJob")
    bad = yaml.safe_load(yaml.safe_dump(job))
    bad["spec"]["ttlSecondAfterFinished"] = 10  # missing an s
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName")
    assert sorted(check(bad)) == [
        "RayJob.spec.rayClusterSpec.workerGroupSpecs[0].groupName: required",
        "RayJob.spec.ttlSecondAfterFinished: unknown field",
    ]


def test_rayjob_sweep_cleans_up_and_is_not_retried() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in _k8s_docs()}
    job = docs[("RayJob", "fedray-sweep")]["spec"]
    assert job["backoffLimit"] == 0 and job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] > 0
    assert " -m " in job["entrypoint"] and "cluster.address=auto" in job["entrypoint"]
    deployment, service = docs[("Deployment", "fedray-mlflow")], docs[("Service", "fedray-mlflow")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    port = service["spec"]["ports"][0]["targetPort"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert port in [p["containerPort"] for p in container["ports"]]
    assert f"--port={port}" in container["command"]
    claims = {d["metadata"]["name"] for (k, _), d in docs.items() if k == "PersistentVolumeClaim"}
    mounted = {
        v["persistentVolumeClaim"]["claimName"]
        for _, d in _k8s_docs()
        for spec in _pod_specs(d)
        for v in spec.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    assert mounted - claims == {"silo-a-data"}  # a silo's data volume is the site's own


def _pod_specs(doc: dict) -> list[dict]:
    spec = doc["spec"]
    if doc["kind"] == "Deployment":
        return [spec["template"]["spec"]]
    cluster = spec.get("rayClusterSpec", spec) if doc["kind"] in ("RayJob", "RayCluster") else None
    if cluster is None:
        return []
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [g["template"]["spec"] for g in groups]


def test_generated_rayjob_keeps_to_the_schema(tmp_path: Path) -> None:
    from fedray.app.k8s import write_rayjob

    path = write_rayjob(tmp_path / "j.yaml", "fedray-abc", "true", {"A": "1"}, "img:1")
    doc = yaml.safe_load(path.read_text())
    assert check(doc) == []
    assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"]) == {"env_vars": {"A": "1"}}
