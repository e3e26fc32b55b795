"""KubeRay manifests for `fedray submit --k8s FILE`: a RayJob that runs one command of fedray
on a RayCluster shaped like `docker/k8s/raycluster.yaml` (KubeRay >= 1.3, apiVersion ray.io/v1).

The job's code is the image's (`docker/Dockerfile`), not uploaded; the cluster is created for
the job and deleted `ttlSecondsAfterFinished` after it ends; a failed job is not retried
(`backoffLimit: 0`: a retry would start the run again from scratch; resume it instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedray.core.errors import ConfigError

CLUSTER_TEMPLATE = Path(__file__).resolve().parents[2] / "docker" / "k8s" / "raycluster.yaml"
TTL_S = 600
TOKEN_ENV = [
    {"name": "RAY_AUTH_MODE", "value": "token"},
    {
        "name": "RAY_AUTH_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "fedray-ray-token", "key": "token"}},
    },
]


def k8s_name(name: str) -> str:
    """A DNS-1123 name (lowercase letters, digits and '-', at most 63 characters)."""
    out = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:63]
    if not out:
        raise ConfigError(f"{name!r} gives no usable Kubernetes name")
    return out


def cluster_spec(image: str) -> dict[str, Any]:
    """The RayCluster spec of `docker/k8s/raycluster.yaml`, every container on `image`."""
    if not CLUSTER_TEMPLATE.is_file():
        raise ConfigError(f"{CLUSTER_TEMPLATE} is missing; run fedray submit --k8s from a checkout")
    spec = yaml.safe_load(CLUSTER_TEMPLATE.read_text())["spec"]
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            container["image"] = image
    return spec


def rayjob(name: str, entrypoint: str, env: dict[str, str], image: str) -> dict[str, Any]:
    """The RayJob manifest that runs `entrypoint` on a fresh cluster."""
    spec: dict[str, Any] = {
        "entrypoint": entrypoint,
        "submissionMode": "K8sJobMode",
        "backoffLimit": 0,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": TTL_S,
        "submitterPodTemplate": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "ray-job-submitter", "image": image, "env": TOKEN_ENV}],
            }
        },
        "rayClusterSpec": cluster_spec(image),
    }
    if env:
        spec["runtimeEnvYAML"] = yaml.safe_dump({"env_vars": dict(env)}, sort_keys=True)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": k8s_name(name), "labels": {"app.kubernetes.io/name": "fedray"}},
        "spec": spec,
    }


def write_rayjob(
    path: str | Path, name: str, entrypoint: str, env: dict[str, str], image: str
) -> Path:
    """Write :func:`rayjob` as YAML to `path`; returns the path."""
    path = Path(path)
    manifest = rayjob(name, entrypoint, env, image)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(manifest, sort_keys=False, width=100))
    except OSError as exc:
        raise ConfigError(f"--k8s={path}: cannot write it ({exc.strerror})") from None
    return path
