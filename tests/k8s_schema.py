"""A minimal field schema of the Kubernetes objects in docker/k8s/, and a checker.

Targets KubeRay v1.3 / v1.4 (CRDs `rayclusters.ray.io` and `rayjobs.ray.io`, version `v1`):
the field names, types and required fields below are the json tags of RayClusterSpec,
HeadGroupSpec, WorkerGroupSpec and RayJobSpec in ray-project/kuberay,
`ray-operator/apis/ray/v1/raycluster_types.go` and `rayjob_types.go` (fields present in both
releases; later additions such as `deletionStrategy` or `schedule` are left out on purpose, so
a manifest using them fails here). The core objects (Pod template, Deployment, Service,
PersistentVolumeClaim) are the subset of Kubernetes 1.29+ `core/v1` and `apps/v1` our
manifests may use. A field not listed is an error: a typo fails the test, as the API server's
structural schema would prune or reject it.
"""

from __future__ import annotations

from typing import Any

STR, INT, BOOL, NUM = "string", "integer", "boolean", "number"
QUANTITY = "quantity"  # "2", 2, "4Gi", "250m"
ANY = "any"


def obj(fields: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "fields": fields, "required": required}


def map_of(value: Any) -> dict[str, Any]:
    return {"type": "map", "values": value}


def list_of(item: Any) -> dict[str, Any]:
    return {"type": "list", "item": item}


def enum(*values: str) -> dict[str, Any]:
    return {"type": "enum", "values": values}


META = obj({"name": STR, "namespace": STR, "labels": map_of(STR), "annotations": map_of(STR)})
ENV_VAR = obj(
    {
        "name": STR,
        "value": STR,
        "valueFrom": obj(
            {
                "secretKeyRef": obj({"name": STR, "key": STR, "optional": BOOL}, ("key",)),
                "configMapKeyRef": obj({"name": STR, "key": STR, "optional": BOOL}, ("key",)),
                "fieldRef": obj({"fieldPath": STR}, ("fieldPath",)),
            }
        ),
    },
    ("name",),
)
RESOURCES = obj({"limits": map_of(QUANTITY), "requests": map_of(QUANTITY)})
CONTAINER = obj(
    {
        "name": STR,
        "image": STR,
        "imagePullPolicy": enum("Always", "IfNotPresent", "Never"),
        "command": list_of(STR),
        "args": list_of(STR),
        "workingDir": STR,
        "env": list_of(ENV_VAR),
        "ports": list_of(
            obj(
                {"containerPort": INT, "name": STR, "protocol": enum("TCP", "UDP", "SCTP")},
                ("containerPort",),
            )
        ),
        "resources": RESOURCES,
        "volumeMounts": list_of(
            obj(
                {"name": STR, "mountPath": STR, "readOnly": BOOL, "subPath": STR},
                ("name", "mountPath"),
            )
        ),
    },
    ("name",),
)
VOLUME = obj(
    {
        "name": STR,
        "emptyDir": obj({"medium": STR, "sizeLimit": QUANTITY}),
        "persistentVolumeClaim": obj({"claimName": STR, "readOnly": BOOL}, ("claimName",)),
        "configMap": obj({"name": STR}),
        "secret": obj({"secretName": STR}),
        "hostPath": obj({"path": STR, "type": STR}, ("path",)),
    },
    ("name",),
)
POD_SPEC = obj(
    {
        "containers": list_of(CONTAINER),
        "initContainers": list_of(CONTAINER),
        "volumes": list_of(VOLUME),
        "restartPolicy": enum("Always", "OnFailure", "Never"),
        "serviceAccountName": STR,
        "nodeSelector": map_of(STR),
        "tolerations": list_of(obj({"key": STR, "operator": STR, "value": STR, "effect": STR})),
    },
    ("containers",),
)
POD_TEMPLATE = obj({"metadata": META, "spec": POD_SPEC})

# KubeRay ray.io/v1 (v1.3, v1.4)
HEAD_GROUP = obj(
    {
        "serviceType": enum("ClusterIP", "NodePort", "LoadBalancer"),
        "enableIngress": BOOL,
        "rayStartParams": map_of(STR),
        "template": POD_TEMPLATE,
    },
    ("template",),
)
WORKER_GROUP = obj(
    {
        "groupName": STR,
        "replicas": INT,
        "minReplicas": INT,
        "maxReplicas": INT,
        "numOfHosts": INT,
        "rayStartParams": map_of(STR),
        "template": POD_TEMPLATE,
        "suspend": BOOL,
    },
    ("groupName", "template"),
)
RAY_CLUSTER_SPEC = obj(
    {
        "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": list_of(WORKER_GROUP),
        "rayVersion": STR,
        "enableInTreeAutoscaling": BOOL,
        "headServiceAnnotations": map_of(STR),
        "suspend": BOOL,
    },
    ("headGroupSpec",),
)
RAY_JOB_SPEC = obj(
    {
        "activeDeadlineSeconds": INT,
        "backoffLimit": INT,
        "rayClusterSpec": RAY_CLUSTER_SPEC,
        "submitterPodTemplate": POD_TEMPLATE,
        "metadata": map_of(STR),
        "clusterSelector": map_of(STR),
        "submitterConfig": obj({"backoffLimit": INT}),
        "managedBy": enum("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"),
        "entrypoint": STR,
        "runtimeEnvYAML": STR,
        "jobId": STR,
        "submissionMode": enum("K8sJobMode", "HTTPMode", "InteractiveMode"),
        "entrypointResources": STR,
        "entrypointNumCpus": NUM,
        "entrypointNumGpus": NUM,
        "ttlSecondsAfterFinished": INT,
        "shutdownAfterJobFinishes": BOOL,
        "suspend": BOOL,
    }
)

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("ray.io/v1", "RayCluster"): obj(
        {"apiVersion": STR, "kind": STR, "metadata": META, "spec": RAY_CLUSTER_SPEC},
        ("metadata", "spec"),
    ),
    ("ray.io/v1", "RayJob"): obj(
        {"apiVersion": STR, "kind": STR, "metadata": META, "spec": RAY_JOB_SPEC},
        ("metadata", "spec"),
    ),
    ("apps/v1", "Deployment"): obj(
        {
            "apiVersion": STR,
            "kind": STR,
            "metadata": META,
            "spec": obj(
                {
                    "replicas": INT,
                    "selector": obj({"matchLabels": map_of(STR)}),
                    "strategy": obj({"type": enum("Recreate", "RollingUpdate")}),
                    "template": POD_TEMPLATE,
                },
                ("selector", "template"),
            ),
        },
        ("metadata", "spec"),
    ),
    ("v1", "Service"): obj(
        {
            "apiVersion": STR,
            "kind": STR,
            "metadata": META,
            "spec": obj(
                {
                    "type": enum("ClusterIP", "NodePort", "LoadBalancer"),
                    "selector": map_of(STR),
                    "ports": list_of(
                        obj(
                            {"name": STR, "port": INT, "targetPort": ANY, "protocol": STR},
                            ("port",),
                        )
                    ),
                }
            ),
        },
        ("metadata", "spec"),
    ),
    ("v1", "PersistentVolumeClaim"): obj(
        {
            "apiVersion": STR,
            "kind": STR,
            "metadata": META,
            "spec": obj(
                {
                    "accessModes": list_of(
                        enum("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
                    ),
                    "resources": RESOURCES,
                    "storageClassName": STR,
                },
                ("accessModes", "resources"),
            ),
        },
        ("metadata", "spec"),
    ),
}


def problems(value: Any, schema: Any, where: str = "") -> list[str]:
    """Every way `value` breaks `schema` (an empty list: it conforms)."""
    if schema == ANY:
        return []
    if isinstance(schema, str):
        ok = {
            STR: isinstance(value, str),
            INT: isinstance(value, int) and not isinstance(value, bool),
            BOOL: isinstance(value, bool),
            NUM: isinstance(value, int | float) and not isinstance(value, bool),
            QUANTITY: isinstance(value, str | int) and not isinstance(value, bool),
        }[schema]
        return [] if ok else [f"{where}: {value!r} is not a {schema}"]
    kind = schema["type"]
    if kind == "enum":
        ok = value in schema["values"]
        return [] if ok else [f"{where}: {value!r} not in {schema['values']}"]
    if kind == "list":
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        item = schema["item"]
        return [p for i, v in enumerate(value) for p in problems(v, item, f"{where}[{i}]")]
    if not isinstance(value, dict):
        return [f"{where}: not a mapping"]
    if kind == "map":
        return [p for k, v in value.items() for p in problems(v, schema["values"], f"{where}.{k}")]
    out = [f"{where}.{k}: required" for k in schema["required"] if k not in value]
    for key, v in value.items():
        if key not in schema["fields"]:
            out.append(f"{where}.{key}: unknown field")
        else:
            out += problems(v, schema["fields"][key], f"{where}.{key}")
    return out


def check(doc: dict[str, Any]) -> list[str]:
    """Problems of one manifest document, by its apiVersion and kind."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in SCHEMAS:
        return [f"{key}: no schema for this apiVersion/kind"]
    return problems(doc, SCHEMAS[key], doc.get("kind", "?"))
