"""``deploy/`` checked without Docker or a cluster: manifests parse, Kubernetes objects validate against the
Kubernetes OpenAPI models (``kubernetes`` package: unknown fields and missing required fields fail), the compose
file against the compose-spec JSON schema (vendored by ``check-jsonschema``), and the roles the Dockerfile, compose
and Kubernetes run are the commands ``deploy/README.md`` documents and real ``stepline`` subcommands."""

from __future__ import annotations

import importlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from support.servers import need

from stepline.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
PRIMITIVES: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str, "date": str,
}


def required(module: str) -> Any:
    """The module, or skip with the reason (fail under CI=true, where the test extra installs it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        need(f"{module} is not installed (pip install -e '.[test]')")


def k8s_objects() -> list[dict[str, Any]]:
    return [d for f in K8S for d in yaml.safe_load_all(f.read_text()) if d]


def check_model(value: Any, type_name: str, path: str) -> None:
    """Every field of ``value`` exists in the model ``type_name`` (recursively), with the right shape."""
    k8s = required("kubernetes")
    # Type names are "List[X]" / "Dict[str, X]" (older releases of the package: "list[X]" / "dict(str, X)").
    if type_name.lower().startswith("list["):
        assert isinstance(value, list), f"{path}: expected a list"
        for i, v in enumerate(value):
            check_model(v, type_name[5:-1], f"{path}[{i}]")
        return
    if type_name.lower().startswith(("dict(", "dict[")):
        assert isinstance(value, dict), f"{path}: expected a map"
        inner = type_name[type_name.index(",") + 1:-1].strip()
        for k, v in value.items():
            check_model(v, inner, f"{path}.{k}")
        return
    if type_name in PRIMITIVES:
        assert isinstance(value, PRIMITIVES[type_name]), f"{path}: {value!r} is not {type_name}"
        return
    model = getattr(k8s.client.models, type_name)
    assert isinstance(value, dict), f"{path}: expected an object ({type_name})"
    fields = {v: k for k, v in model.attribute_map.items()}
    for k, v in value.items():
        assert k in fields, f"{path}: unknown field {k!r} in {type_name}"
        check_model(v, model.openapi_types[fields[k]], f"{path}.{k}")


@pytest.mark.parametrize("path", K8S, ids=[p.name for p in K8S])
def test_kubernetes_objects_validate(path: Path) -> None:
    k8s = required("kubernetes")
    api = k8s.client.ApiClient()
    for obj in yaml.safe_load_all(path.read_text()):
        if not obj:
            continue
        version = obj["apiVersion"].split("/")[-1]
        type_name = version[0].upper() + version[1:] + obj["kind"]
        check_model(obj, type_name, f"{path.name}:{obj['kind']}")
        # Deserializing runs the models' own checks (required fields, enums).
        api._ApiClient__deserialize(obj, type_name)


def test_kubernetes_shape_is_what_the_issue_asks() -> None:
    objs = {(o["kind"], o["metadata"]["name"]): o for o in k8s_objects()}
    worker = objs[("Deployment", "stepline-worker")]["spec"]["template"]["spec"]
    gateway = objs[("Deployment", "stepline-gateway")]["spec"]["template"]["spec"]
    assert ("Service", "stepline-gateway") in objs
    assert ("PodDisruptionBudget", "stepline-worker") in objs
    hpa = objs[("HorizontalPodAutoscaler", "stepline-worker")]["spec"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert "External" in (DEPLOY / "k8s" / "worker.yaml").read_text()  # documented lag metric
    assert ("ConfigMap", "stepline-config") in objs
    assert ("Secret", "stepline-secrets") in objs
    drain_s = 20  # WorkerSettings.drain_timeout_s
    assert worker["terminationGracePeriodSeconds"] > drain_s
    for spec in (worker, gateway):
        assert spec["securityContext"]["runAsNonRoot"] is True
        (c,) = spec["containers"]
        assert c["livenessProbe"] and c["readinessProbe"]
        assert not c["image"].endswith(":latest") and ":" in c["image"]


def test_compose_file_validates_against_the_compose_spec() -> None:
    jsonschema = required("jsonschema")
    required("check_jsonschema")
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    jsonschema.validate(doc, schema)
    services = doc["services"]
    assert {"redis", "postgres", "gateway", "worker"} <= services.keys()
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert "replicas" in services["worker"]["deploy"]
    assert all("healthcheck" in s for s in services.values())
    grace = int(services["worker"]["stop_grace_period"].rstrip("s"))
    assert grace > 20, "the grace period must exceed the worker's drain time"
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text and "${STEPLINE_IMAGE:?" in text
    for s in services.values():
        image = s["image"]
        assert "${" in image or (":" in image and not image.endswith(":latest")), image


def roles_in_readme() -> set[str]:
    table = (DEPLOY / "README.md").read_text().split("## Shapes")[0]
    return set(re.findall(r"\| `stepline (\w+)` \|", table))


def test_the_dockerfile_runs_the_documented_commands() -> None:
    documented = roles_in_readme()
    assert documented == {"worker", "gateway", "up"}
    sub = build_parser()._subparsers
    assert sub is not None
    choices: Any = sub._group_actions[0].choices
    assert documented <= set(choices)
    docker = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["stepline"]' in docker
    assert set(re.findall(r"docker run IMAGE (\w+)", docker)) == documented
    assert re.search(r'^CMD \["(\w+)"\]', docker, re.M).group(1) in documented  # type: ignore[union-attr]
    assert "USER 10001" in docker and docker.count("FROM ") >= 2
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    used = {compose[s]["command"][0] for s in ("gateway", "worker")}
    for obj in k8s_objects():
        if obj["kind"] == "Deployment":
            used |= {c["args"][0] for c in obj["spec"]["template"]["spec"]["containers"]}
    assert used <= documented


def test_the_kubernetes_check_catches_mistakes() -> None:
    k8s = required("kubernetes")
    with pytest.raises(AssertionError, match="unknown field 'replicaz'"):
        check_model({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicaz": 2}}, "V1Deployment", "x")
    with pytest.raises(AssertionError, match="not int"):
        check_model({"spec": {"replicas": "two"}}, "V1Deployment", "x")
    with pytest.raises(ValueError, match="containers"):  # a pod spec without containers
        k8s.client.ApiClient()._ApiClient__deserialize({"spec": {"template": {"spec": {}}, "selector": {}}},
                                                       "V1Deployment")
