"""The operations configuration: Kubernetes manifests, Prometheus alerts, the Grafana dashboard.

Offline and in-process: manifests are validated against the Kubernetes JSON schemas bundled with
kubernetes-validate, settings against the service's own `Settings.from_env`, and every metric
name in a PromQL expression against what the app's `/metrics` really serves (scraped over ASGI,
no server started).
"""

from __future__ import annotations

import ast
import copy
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import uvicorn
import yaml  # type: ignore[import-untyped]
from fastapi import FastAPI
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import (
    DEFAULT_DOCUMENT_STORE,
    MIN_PRODUCTION_SECRET_BYTES,
    POSTGRES_SCHEMES,
    Settings,
    SettingsError,
    parse_duration,
)
from app.upgrade.server import uvicorn_config

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "config" / "kubernetes"
ALERTS = ROOT / "config" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "config" / "grafana" / "texflow-websocket-dashboard.json"
SETTINGS_SOURCE = ROOT / "app" / "settings.py"
DOCKERFILE = ROOT / "Dockerfile"

# A Prometheus scrape_configs entry kept next to the manifests; not a Kubernetes object.
SCRAPE_CONFIG = KUBERNETES / "prometheus-scrape.yaml"
# The oldest and the newest minor the manifests are meant for; both are bundled with
# kubernetes-validate (autoscaling/v2 and policy/v1 exist in both).
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")
# CRDs have no schema in kubernetes-validate: checked structurally below.
CRD_GROUPS = ("monitoring.coreos.com/",)

JOB = "texflow-websocket"
IMAGE_USER = 10001  # Dockerfile: useradd --uid 10001
CONTAINER = "texflow-websocket"

# Labels Prometheus attaches to every series of a target (scrape config / ServiceMonitor).
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
)


# ---------------------------------------------------------------------------------------------
# Loading


def _load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for document in documents:
        assert isinstance(document, dict), f"{path.name}: a document is not a mapping"
    return documents


def _manifest_paths() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p != SCRAPE_CONFIG)


def _all_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in _manifest_paths() for doc in _load_yaml_documents(path)]


def _manifest_id(item: tuple[str, dict[str, Any]]) -> str:
    name, document = item
    return f"{name}:{document.get('kind')}"


def _is_crd(document: Mapping[str, Any]) -> bool:
    return str(document.get("apiVersion", "")).startswith(CRD_GROUPS)


MANIFESTS = _all_manifests()
CORE_MANIFESTS = [item for item in MANIFESTS if not _is_crd(item[1])]


def _only(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in MANIFESTS if doc.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in config/kubernetes, found {len(found)}"
    return found[0]


def _dig(document: Any, *path: str | int) -> Any:
    """document[path[0]][path[1]]…, failing with the path that is missing."""
    value = document
    for depth, key in enumerate(path):
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            trail = ".".join(str(k) for k in path[: depth + 1])
            pytest.fail(f"missing {trail}")
    return value


def _container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    containers = _dig(deployment, "spec", "template", "spec", "containers")
    matching = [c for c in containers if c.get("name") == CONTAINER]
    assert len(matching) == 1, f"expected one container named {CONTAINER}"
    container: dict[str, Any] = matching[0]
    return container


def _container_port(container: Mapping[str, Any], name_or_number: str | int) -> int:
    for port in container.get("ports", []):
        if name_or_number in (port.get("name"), port.get("containerPort")):
            number: int = port["containerPort"]
            return number
    pytest.fail(f"the container has no port {name_or_number!r}")


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return _only("Deployment")


@pytest.fixture(scope="module")
def configmap() -> dict[str, Any]:
    return _only("ConfigMap")


@pytest.fixture(scope="module")
def secret() -> dict[str, Any]:
    return _only("Secret")


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    return _only("Service")


@pytest.fixture(scope="module")
def config_env(configmap: Mapping[str, Any]) -> dict[str, str]:
    data: dict[str, str] = configmap["data"]
    return dict(data)


# ---------------------------------------------------------------------------------------------
# Kubernetes schemas


def test_every_expected_object_is_there() -> None:
    kinds = sorted(str(doc.get("kind")) for _, doc in MANIFESTS)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceMonitor",
        ]
    )
    for name, document in MANIFESTS:
        assert {"apiVersion", "kind", "metadata"} <= document.keys(), name
        assert "namespace" not in document["metadata"], f"{name}: apply with -n instead"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", CORE_MANIFESTS, ids=_manifest_id)
def test_manifest_matches_the_kubernetes_schema(
    item: tuple[str, dict[str, Any]], version: str
) -> None:
    _, document = item
    # strict: unknown fields (a typo such as `livenesProbe`) fail too.
    kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"), "8082"),
        (("spec", "template", "spec", "containers", 0, "livenesProbe"), {}),
        (("spec", "template", "spec", "securityContext", "runAsNonRoot"), "yes"),
    ],
    ids=["port-as-string", "misspelt-field", "bool-as-string"],
)
def test_schema_validation_rejects_a_broken_deployment(
    deployment: dict[str, Any], path: tuple[str | int, ...], value: object
) -> None:
    broken = copy.deepcopy(deployment)
    _dig(broken, *path[:-1])[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def servicemonitor_problems(monitor: Mapping[str, Any], service: Mapping[str, Any]) -> list[str]:
    """What is wrong with a ServiceMonitor for this Service (no CRD schema offline)."""
    problems: list[str] = []
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {monitor.get('apiVersion')!r}")
    if monitor.get("kind") != "ServiceMonitor":
        problems.append(f"kind {monitor.get('kind')!r}")
    if not isinstance(monitor.get("metadata"), dict) or not monitor["metadata"].get("name"):
        problems.append("metadata.name missing")
    spec = monitor.get("spec")
    if not isinstance(spec, dict):
        return [*problems, "spec missing"]
    unknown = spec.keys() - {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    if unknown:
        problems.append(f"unexpected spec fields {sorted(unknown)}")
    selector = spec.get("selector")
    match_labels = selector.get("matchLabels") if isinstance(selector, dict) else None
    if not isinstance(match_labels, dict) or not _matches(
        match_labels, service["metadata"].get("labels", {})
    ):
        problems.append("spec.selector.matchLabels does not select the Service's labels")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        return [*problems, "spec.endpoints must be a non-empty list"]
    port_names = {p.get("name") for p in service["spec"]["ports"]}
    for index, endpoint in enumerate(endpoints):
        if not isinstance(endpoint, dict):
            problems.append(f"endpoints[{index}] is not a mapping")
            continue
        if endpoint.get("port") not in port_names:
            problems.append(f"endpoints[{index}].port is not a named Service port {port_names}")
        if endpoint.get("path", "/metrics") != "/metrics":
            problems.append(f"endpoints[{index}].path {endpoint.get('path')!r} is not /metrics")
        if endpoint.get("scheme", "http") not in {"http", "https"}:
            problems.append(f"endpoints[{index}].scheme {endpoint.get('scheme')!r}")
        for field in ("interval", "scrapeTimeout"):
            if field in endpoint and not re.fullmatch(r"(\d+(ms|s|m|h))+", endpoint[field]):
                problems.append(f"endpoints[{index}].{field} {endpoint[field]!r}")
    return problems


def test_servicemonitor_scrapes_the_service(service: Mapping[str, Any]) -> None:
    assert servicemonitor_problems(_only("ServiceMonitor"), service) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "endpoints", 0, "path"), "/metric"),
        (("spec", "endpoints", 0, "port"), "web"),
        (("spec", "selector", "matchLabels"), {"app": "other"}),
        (("apiVersion",), "monitoring.coreos.com/v1alpha1"),
        (("spec", "endpoint"), []),
    ],
    ids=["path", "port", "selector", "apiVersion", "misspelt-field"],
)
def test_servicemonitor_check_rejects_a_broken_monitor(
    service: Mapping[str, Any], path: tuple[str | int, ...], value: object
) -> None:
    broken = copy.deepcopy(_only("ServiceMonitor"))
    _dig(broken, *path[:-1])[path[-1]] = value
    assert servicemonitor_problems(broken, service) != []


# ---------------------------------------------------------------------------------------------
# The Deployment against the service


def test_probes_use_health_and_ready(deployment: Mapping[str, Any]) -> None:
    container = _container(deployment)
    liveness = _dig(container, "livenessProbe", "httpGet")
    readiness = _dig(container, "readinessProbe", "httpGet")
    assert liveness["path"] == "/health"
    assert readiness["path"] == "/ready"
    for probe in (liveness, readiness):
        assert _container_port(container, probe["port"]) == _container_port(container, "http")


def _prestop_seconds(container: Mapping[str, Any]) -> float:
    command = _dig(container, "lifecycle", "preStop", "exec", "command")
    assert command[0] == "sleep", f"expected a preStop sleep, got {command}"
    return float(command[1])


def test_grace_period_outlasts_prestop_and_drain(
    deployment: Mapping[str, Any], config_env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    container = _container(deployment)
    prestop = _prestop_seconds(container)
    assert prestop > 0
    drain = parse_duration("SHUTDOWN_DRAIN", config_env["SHUTDOWN_DRAIN"])
    # uvicorn's own grace after the drain, as the service configures it (without letting
    # uvicorn reconfigure this process's logging).
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)
    settings = Settings(shutdown_drain=drain)
    final_grace = uvicorn_config(FastAPI(), settings).timeout_graceful_shutdown or 0
    grace = _dig(deployment, "spec", "template", "spec", "terminationGracePeriodSeconds")
    assert grace > drain
    assert grace > prestop + drain + final_grace, (
        f"terminationGracePeriodSeconds {grace} must exceed preStop {prestop}s + "
        f"SHUTDOWN_DRAIN {drain}s + uvicorn's {final_grace}s"
    )


def test_runs_as_the_image_user_without_privileges(deployment: Mapping[str, Any]) -> None:
    pod = _dig(deployment, "spec", "template", "spec", "securityContext")
    container = _dig(_container(deployment), "securityContext")
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == IMAGE_USER
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container.get("runAsNonRoot", True) is True
    assert container.get("runAsUser", IMAGE_USER) == IMAGE_USER
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"]
    assert not container["capabilities"].get("add")
    assert f"--uid {IMAGE_USER}" in (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_resources_are_set(deployment: Mapping[str, Any]) -> None:
    resources = _dig(_container(deployment), "resources")
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_replicas_and_disruption_budget(deployment: Mapping[str, Any]) -> None:
    assert deployment["spec"]["replicas"] >= 2
    hpa = _only("HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 2
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    pdb = _only("PodDisruptionBudget")["spec"]
    # Evictions must stay possible (a budget that allows none blocks node drains).
    if "minAvailable" in pdb:
        assert pdb["minAvailable"] < hpa["spec"]["minReplicas"]
    else:
        assert pdb["maxUnavailable"] >= 1


def test_env_comes_from_the_configmap_the_secret_and_the_pod_name(
    deployment: Mapping[str, Any], configmap: Mapping[str, Any], secret: Mapping[str, Any]
) -> None:
    container = _container(deployment)
    sources = container["envFrom"]
    assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in sources
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in sources
    env = {item["name"]: item for item in container.get("env", [])}
    assert env["INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def _image_workdir() -> PurePosixPath:
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert workdirs, "the Dockerfile sets no WORKDIR"
    return PurePosixPath(workdirs[-1])


def _sqlite_folder(store: str, working_directory: PurePosixPath) -> PurePosixPath:
    """The folder of a sqlite:///PATH store, PATH relative to the working directory unless it
    is absolute (sqlite:////abs)."""
    assert store.startswith("sqlite:///"), f"expected a sqlite:/// store, got {store!r}"
    return (working_directory / store.removeprefix("sqlite:///")).parent


def _document_store_source(container: Mapping[str, Any]) -> dict[str, Any]:
    env = {item["name"]: item for item in container.get("env", [])}
    assert "DOCUMENT_STORE" in env, "set DOCUMENT_STORE explicitly in the container's env"
    item: dict[str, Any] = env["DOCUMENT_STORE"]
    return item


def document_store_problems(deployment: Mapping[str, Any], store: str) -> list[str]:
    """What keeps `store` from serving this Deployment's replicas: several of them share
    documents only through PostgreSQL; SQLite needs a writable volume at its folder, since the
    root filesystem is read-only."""
    problems: list[str] = []
    replicas = deployment["spec"].get("replicas", 1)
    shared = store.startswith(POSTGRES_SCHEMES)
    if replicas > 1 and not shared:
        problems.append(f"{replicas} replicas on {store.split(':')[0]} would not share documents")
    if not store.startswith("sqlite:///"):
        return problems
    container = _container(deployment)
    folder = _sqlite_folder(store, PurePosixPath(container.get("workingDir", _image_workdir())))
    mounts = [
        mount
        for mount in container.get("volumeMounts", [])
        if folder == PurePosixPath(mount["mountPath"])
        or PurePosixPath(mount["mountPath"]) in folder.parents
    ]
    if len(mounts) != 1:
        return [*problems, f"no volume is mounted at {folder} (or above it)"]
    (mount,) = mounts
    if mount.get("readOnly"):
        problems.append("SQLite writes its database, -wal and -shm files there: not readOnly")
    volumes = {v["name"]: v for v in _dig(deployment, "spec", "template", "spec", "volumes")}
    volume = volumes.get(mount["name"], {})
    if not {"emptyDir", "persistentVolumeClaim", "ephemeral"} & volume.keys():
        problems.append(f"the volume {mount['name']!r} is not a writable kind: {volume}")
    return problems


def test_the_document_store_is_a_shared_database_from_the_secret(
    deployment: Mapping[str, Any], config_env: Mapping[str, str], secret: Mapping[str, Any]
) -> None:
    # The URL carries the database password: from the Secret, never a literal or the ConfigMap.
    source = _document_store_source(_container(deployment))
    assert "value" not in source, "a DSN with a password must not sit in the manifest"
    reference = _dig(source, "valueFrom", "secretKeyRef")
    assert reference["name"] == secret["metadata"]["name"]
    # Without the key the pod must not start (rather than on the image's default, SQLite).
    assert not reference.get("optional")
    assert "DOCUMENT_STORE" not in config_env
    store = secret["stringData"][reference["key"]]
    # Two replicas here, up to hpa.yaml's maximum: only a database they all use shares documents.
    assert store.startswith(POSTGRES_SCHEMES), f"expected a postgresql:// URL, got {store!r}"
    settings = Settings.from_env(
        {**config_env, "DOCUMENT_STORE": store, "JWT_SECRET": "s" * MIN_PRODUCTION_SECRET_BYTES}
    )
    assert settings.document_store == store
    assert document_store_problems(deployment, store) == []


def _single_replica_sqlite(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """The variant config/kubernetes/README.md ("Documents") describes: one replica, its
    documents in SQLite on a volume at /srv/data."""
    variant: dict[str, Any] = copy.deepcopy(dict(deployment))
    variant["spec"]["replicas"] = 1
    pod = variant["spec"]["template"]["spec"]
    container = _container(variant)
    source = _document_store_source(container)
    source.pop("valueFrom")
    source["value"] = "sqlite:////srv/data/documents.sqlite3"
    container["volumeMounts"].append({"name": "documents", "mountPath": "/srv/data"})
    pod["volumes"].append({"name": "documents", "emptyDir": {}})
    return variant


def test_the_single_replica_sqlite_variant_works(deployment: Mapping[str, Any]) -> None:
    variant = _single_replica_sqlite(deployment)
    kubernetes_validate.validate(variant, KUBERNETES_VERSIONS[-1], strict=True)
    store = _document_store_source(_container(variant))["value"]
    assert Settings.from_env({"DOCUMENT_STORE": store}).document_store == store
    assert document_store_problems(variant, store) == []


@pytest.mark.parametrize(
    "change",
    ["two-replicas", "no-volume", "read-only-volume", "relative-path-outside-the-volume"],
)
def test_document_store_check_rejects_a_broken_store(
    deployment: Mapping[str, Any], change: str
) -> None:
    variant = _single_replica_sqlite(deployment)
    container = _container(variant)
    store = "sqlite:////srv/data/documents.sqlite3"
    if change == "two-replicas":
        variant["spec"]["replicas"] = 2
    elif change == "no-volume":
        container["volumeMounts"] = [
            m for m in container["volumeMounts"] if m["name"] != "documents"
        ]
    elif change == "read-only-volume":
        container["volumeMounts"][-1]["readOnly"] = True
    else:
        store = "sqlite:///documents.sqlite3"  # /srv, on the read-only root filesystem
    assert document_store_problems(variant, store) != []


def test_the_image_creates_the_default_document_folder() -> None:
    # `make run` and a plain `docker run` use the default, relative to the working directory;
    # the image's user cannot create a folder in it.
    folder = _sqlite_folder(DEFAULT_DOCUMENT_STORE, _image_workdir())
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(
        rf"install -d -o texflow -g texflow .*\s{re.escape(str(folder))}$", dockerfile, re.M
    )
    assert "useradd --system --uid 10001 --no-create-home texflow" in dockerfile


def test_service_and_selectors_match_the_pods(
    deployment: Mapping[str, Any], service: Mapping[str, Any], config_env: Mapping[str, str]
) -> None:
    container = _container(deployment)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    listen_port = int(config_env["WEBSOCKET_SERVICE_PORT"])
    assert _container_port(container, "http") == listen_port == 8082

    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"].get("sessionAffinity", "None") == "None"
    (port,) = service["spec"]["ports"]
    assert port["port"] == listen_port
    assert _container_port(container, port["targetPort"]) == listen_port
    assert _matches(service["spec"]["selector"], pod_labels)
    assert _matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert _matches(_only("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(listen_port)
    assert annotations["prometheus.io/path"] == "/metrics"


# ---------------------------------------------------------------------------------------------
# ConfigMap and Secret against app/settings.py

_READERS = frozenset(
    {"get", "_integer", "_positive_duration", "_boolean", "_choice", "_networks", "parse_duration"}
)
_VARIABLE_NAME = re.compile(r"[A-Z][A-Z0-9_]+")


def settings_variables(source: str) -> set[str]:
    """The UPPER_CASE names app/settings.py passes to env.get and its parsing helpers."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        called = function.attr if isinstance(function, ast.Attribute) else None
        if isinstance(function, ast.Name):
            called = function.id
        if called not in _READERS:
            continue
        for argument in node.args[:2]:
            if (
                isinstance(argument, ast.Constant)
                and isinstance(argument.value, str)
                and _VARIABLE_NAME.fullmatch(argument.value)
            ):
                names.add(argument.value)
    return names


@pytest.fixture(scope="module")
def known_variables() -> set[str]:
    return settings_variables(SETTINGS_SOURCE.read_text(encoding="utf-8"))


def test_settings_parser_finds_the_variables(known_variables: set[str]) -> None:
    # Guards the parser itself: a few read through each kind of helper.
    assert {
        "ENVIRONMENT",
        "REDIS_ADDR",
        "SHUTDOWN_DRAIN",
        "JWT_LEEWAY",
        "WS_COMPRESSION",
        "TRUSTED_PROXIES",
        "MAX_CONNECTIONS_PER_IP",
        "LOG_LEVEL",
    } <= known_variables
    assert settings_variables('env.get("NOT_READ_ELSEWHERE")\nprint("IGNORED")') == {
        "NOT_READ_ELSEWHERE"
    }


def test_every_configured_variable_is_read_by_the_service(
    config_env: Mapping[str, str], secret: Mapping[str, Any], known_variables: set[str]
) -> None:
    assert set(config_env) - known_variables == set(), "the service does not read these"
    assert set(secret["stringData"]) - known_variables == set()
    assert "INSTANCE_ID" in known_variables
    # Secrets stay out of the ConfigMap (DOCUMENT_STORE's URL carries the database password).
    assert not {"JWT_SECRET", "REDIS_PASSWORD", "DOCUMENT_STORE"} & set(config_env)


def test_the_service_accepts_the_configmap(
    config_env: Mapping[str, str], deployment: Mapping[str, Any]
) -> None:
    env = {
        **config_env,
        "JWT_SECRET": "s" * MIN_PRODUCTION_SECRET_BYTES,
        "REDIS_PASSWORD": "password",
        "INSTANCE_ID": "texflow-websocket-7d9c-abcde",
    }
    settings = Settings.from_env(env)
    assert settings.is_production
    assert settings.host == "0.0.0.0"
    assert settings.port == _container_port(_container(deployment), "http")
    assert settings.redis_addr, "several replicas need Redis"
    assert settings.shutdown_drain > 10


def test_the_placeholder_secret_fails_closed(
    config_env: Mapping[str, str], secret: Mapping[str, Any]
) -> None:
    placeholder = secret["stringData"]["JWT_SECRET"]
    assert len(placeholder.encode()) < MIN_PRODUCTION_SECRET_BYTES
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env({**config_env, **secret["stringData"]})


# ---------------------------------------------------------------------------------------------
# What /metrics exposes

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "unknown": ("",),
}


async def _scrape(app: FastAPI) -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get("/metrics")
    response.raise_for_status()
    return response.text


def _series_of(
    family_name: str, family_type: str, labels: set[str]
) -> Iterator[tuple[str, set[str]]]:
    for suffix in _SUFFIXES[family_type]:
        extra: set[str] = set()
        if suffix == "_bucket":
            extra = {"le"}
        elif family_type == "summary" and suffix == "":
            extra = {"quantile"}
        yield family_name + suffix, labels | extra


@pytest.fixture(scope="module")
def exposed() -> dict[str, frozenset[str]]:
    """Every series name the service serves, with its label names (target labels aside)."""
    app = create_app(Settings())
    series: dict[str, set[str]] = {"up": set()}  # added by Prometheus to every target
    # Twice: the HTTP metrics of the first scrape are recorded after its response was rendered.
    anyio.run(_scrape, app)
    for family in text_string_to_metric_families(anyio.run(_scrape, app)):
        for name, labels in _series_of(family.name, family.type, set()):
            series.setdefault(name, set()).update(labels)
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    # Labelled metrics without any child yet have no samples: their label names come from the
    # collectors themselves.
    for collector in vars(app.state.container.metrics()).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                for name, labels in _series_of(
                    family.name, family.type, set(collector._labelnames)
                ):
                    series.setdefault(name, set()).update(labels)
    return {name: frozenset(labels) for name, labels in series.items()}


def test_the_exposition_has_the_documented_metrics(exposed: Mapping[str, frozenset[str]]) -> None:
    assert exposed["websocket_messages_sent_total"] == {"type"}
    assert exposed["websocket_rejected_upgrades_total"] == {"code", "protocol"}
    assert exposed["websocket_active_connections"] == {"protocol"}
    assert exposed["websocket_backlog_dropped_total"] == {"type"}
    assert exposed["websocket_connection_duration_seconds_bucket"] == {"le"}
    assert exposed["websocket_redis_connected"] == set()
    assert exposed["http_requests_total"] == {"handler", "method", "status"}
    assert exposed["http_request_duration_seconds_bucket"] == {"handler", "method", "le"}
    assert {"http_request_duration_seconds_sum", "http_request_duration_seconds_count"} <= set(
        exposed
    )


# ---------------------------------------------------------------------------------------------
# PromQL: which metrics and labels an expression uses

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"\"\s*")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_TOKEN = re.compile(
    r"(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[A-Za-z]*)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?"
)
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right"}
)
_FUNCTIONS = frozenset(
    {
        "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
        "quantile", "count_values", "abs", "absent", "absent_over_time", "avg_over_time",
        "ceil", "changes", "clamp", "clamp_max", "clamp_min", "count_over_time", "delta",
        "deriv", "exp", "floor", "histogram_quantile", "idelta", "increase", "irate",
        "label_join", "label_replace", "last_over_time", "ln", "log2", "log10",
        "max_over_time", "min_over_time", "predict_linear", "present_over_time",
        "quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc",
        "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "time", "timestamp",
        "vector",
    }
)  # fmt: skip


def _check_brackets(expr: str, text: str) -> None:
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in closing and (not stack or stack.pop() != closing[char]):
            raise ValueError(f"unbalanced {char!r} in {expr!r}")
    if stack:
        raise ValueError(f"unclosed {stack[-1]!r} in {expr!r}")


class PromQLUse:
    """Metric names (with the labels their selectors match on) and grouping labels."""

    def __init__(self, expr: str) -> None:
        self.metrics: dict[str, set[str]] = {}
        self.grouping: set[str] = set()
        self.functions: set[str] = set()
        text = _STRING.sub('""', expr)
        _check_brackets(expr, text)
        text = _GRAFANA_VARIABLE.sub(" ", text)
        for labels in _GROUPING.findall(text):
            self.grouping.update(label.strip() for label in labels.split(",") if label.strip())
        text = _GROUPING.sub(" ", text)
        text = _SELECTOR.sub(self._selector, text)
        text = _RANGE.sub(" ", text)
        for token in _TOKEN.finditer(text):
            name = token.group("name")
            if name is None or name in _KEYWORDS:
                continue
            if token.group("call"):
                self.functions.add(name)
            else:
                self.metrics.setdefault(name, set())
        if re.search(r"[{}\[\]]", text):
            raise ValueError(f"cannot read {expr!r}: nested selectors or ranges")

    def _selector(self, match: re.Match[str]) -> str:
        name, body = match.group(1), match.group(2)
        if not name:
            raise ValueError(f"selector without a metric name: {match.group(0)!r}")
        labels = self.metrics.setdefault(name, set())
        for matcher in (m for m in body.split(",") if m.strip()):
            parsed = _MATCHER.fullmatch(matcher)
            if parsed is None:
                raise ValueError(f"cannot read the label matcher {matcher!r}")
            labels.add(parsed.group(1))
        return f" {name} "


def promql_problems(expr: str, exposed: Mapping[str, frozenset[str]]) -> list[str]:
    """Unknown metrics, labels and functions in `expr`; empty when it only uses what exists."""
    try:
        use = PromQLUse(expr)
    except ValueError as exc:
        return [str(exc)]
    problems = [f"unknown function {name}()" for name in sorted(use.functions - _FUNCTIONS)]
    if not use.metrics:
        problems.append("no metric in the expression")
    available = set(TARGET_LABELS)
    for metric, labels in sorted(use.metrics.items()):
        if metric not in exposed:
            problems.append(f"the service does not expose {metric}")
            continue
        available |= exposed[metric]
        for label in sorted(labels - exposed[metric] - TARGET_LABELS):
            problems.append(f"{metric} has no label {label}")
    for label in sorted(use.grouping - available):
        problems.append(f"no metric here has the label {label} to group by")
    return problems


@pytest.mark.parametrize(
    ("expr", "metrics", "grouping"),
    [
        (
            'sum by (type) (rate(websocket_messages_sent_total{job=~"$job", type!="x,y"}[5m]))',
            {"websocket_messages_sent_total": {"job", "type"}},
            {"type"},
        ),
        (
            "histogram_quantile(0.95, sum by (le, handler) "
            "(rate(http_request_duration_seconds_bucket[$__rate_interval])))",
            {"http_request_duration_seconds_bucket": set()},
            {"le", "handler"},
        ),
        (
            "a / on (instance) group_left () b offset 1d > bool 1e3",
            {"a": set(), "b": set()},
            {"instance"},
        ),
        ('absent(up{job="texflow-websocket"})', {"up": {"job"}}, set()),
    ],
)
def test_promql_reader(expr: str, metrics: dict[str, set[str]], grouping: set[str]) -> None:
    use = PromQLUse(expr)
    assert use.metrics == metrics
    assert use.grouping == grouping


@pytest.mark.parametrize(
    "expr",
    [
        "rate(websocket_messages_sent[5m])",  # counter without _total
        "websocket_active_connection",  # typo
        'websocket_redis_connected{status="x"}',  # label it does not have
        "sum by (status) (rate(http_request_duration_seconds_count[5m]))",  # idem, grouped
        "rat(websocket_redis_reconnects_total[5m])",  # unknown function
        "sum(rate(websocket_slow_consumer_closes_total[5m])",  # unbalanced
        '{__name__="websocket_total_rooms"}',  # unreadable here: refused, not waved through
    ],
)
def test_promql_check_rejects_broken_expressions(
    expr: str, exposed: Mapping[str, frozenset[str]]
) -> None:
    assert promql_problems(expr, exposed) != []


# ---------------------------------------------------------------------------------------------
# Grafana dashboard


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def _dashboard_exprs(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    exprs = [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
        assert found, f"variable {variable['name']}: expected label_values(metric, label)"
        exprs.append((f"${variable['name']}", f"count by ({found[2]}) ({found[1]})"))
    return exprs


def test_dashboard_structure(dashboard: Mapping[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']}: no query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_queries_use_only_exposed_metrics(
    dashboard: Mapping[str, Any], exposed: Mapping[str, frozenset[str]]
) -> None:
    problems = {
        f"{title}: {expr}": found
        for title, expr in _dashboard_exprs(dashboard)
        if (found := promql_problems(expr, exposed))
    }
    assert problems == {}


def test_dashboard_covers_every_service_metric(
    dashboard: Mapping[str, Any], exposed: Mapping[str, frozenset[str]]
) -> None:
    used = {m for _, expr in _dashboard_exprs(dashboard) for m in PromQLUse(expr).metrics}
    families = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for name in exposed
        if name.startswith("websocket_") and not name.endswith("_created")
    }
    missing = {f for f in families if not any(m.startswith(f) for m in used)}
    assert missing == set(), "give every websocket_* metric a panel"
    assert "http_requests_total" in used
    assert "http_request_duration_seconds_bucket" in used


# ---------------------------------------------------------------------------------------------
# Alert rules

_PROMETHEUS_DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")
_RULE_FIELDS = frozenset({"alert", "expr", "for", "keep_firing_for", "labels", "annotations"})


@pytest.fixture(scope="module")
def alert_groups() -> list[dict[str, Any]]:
    (document,) = _load_yaml_documents(ALERTS)
    # The same text must serve as a PrometheusRule's spec: nothing but groups.
    assert set(document) == {"groups"}
    groups: list[dict[str, Any]] = document["groups"]
    return groups


def _rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_are_well_formed(alert_groups: list[dict[str, Any]]) -> None:
    group_names = [group["name"] for group in alert_groups]
    assert len(group_names) == len(set(group_names))
    names = [rule.get("alert") for rule in _rules(alert_groups)]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in _rules(alert_groups):
        name = rule.get("alert")
        assert isinstance(name, str), rule
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), rule
        assert set(rule) <= _RULE_FIELDS, f"{name}: unknown fields {set(rule) - _RULE_FIELDS}"
        assert isinstance(rule.get("expr"), str), name
        assert rule["expr"].strip(), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert all(isinstance(v, str) for v in rule["labels"].values()), name
        for annotation in ("summary", "description", "runbook"):
            assert str(rule["annotations"].get(annotation, "")).strip(), f"{name}: {annotation}"
        if "for" in rule:
            assert _PROMETHEUS_DURATION.fullmatch(rule["for"]), f"{name}: for {rule['for']!r}"


def test_alert_rules_use_only_exposed_metrics(
    alert_groups: list[dict[str, Any]], exposed: Mapping[str, frozenset[str]]
) -> None:
    problems = {
        rule["alert"]: found
        for rule in _rules(alert_groups)
        if (found := promql_problems(rule["expr"], exposed))
    }
    assert problems == {}


def test_alert_rules_cover_the_failure_modes(alert_groups: list[dict[str, Any]]) -> None:
    used = {m for rule in _rules(alert_groups) for m in PromQLUse(rule["expr"]).metrics}
    assert {
        "up",
        "websocket_redis_connected",
        "websocket_redis_reconnects_total",
        "websocket_redis_publish_dropped_total",
        "websocket_slow_consumer_closes_total",
        "websocket_backlog_dropped_total",
        "websocket_messages_received_total",
        "websocket_rejected_upgrades_total",
        "http_requests_total",
        "websocket_document_store_up",
        "websocket_document_pending_bytes",
        "websocket_document_store_errors_total",
    } <= used
    redis = [
        rule
        for rule in _rules(alert_groups)
        if re.match(r"\s*websocket_redis_connected(\{[^}]*\})?\s*==\s*0\s", rule["expr"])
    ]
    assert redis, "an alert on websocket_redis_connected == 0"
    # Only where Redis is configured: the in-memory broadcaster reports 0 by design.
    assert re.search(r'websocket_broadcaster_info\{[^}]*backend="redis"', redis[0]["expr"])
    assert "REDIS_ADDR" in redis[0]["annotations"]["description"]


def test_one_job_name_everywhere(
    alert_groups: list[dict[str, Any]], service: Mapping[str, Any]
) -> None:
    (scrape,) = _load_yaml_documents(SCRAPE_CONFIG)
    (job,) = scrape["scrape_configs"]
    assert job["job_name"] == JOB
    assert job["metrics_path"] == "/metrics"
    # The Operator names the job after the Service unless the ServiceMonitor sets jobLabel.
    assert service["metadata"]["name"] == JOB
    assert "jobLabel" not in _only("ServiceMonitor")["spec"]
    for rule in _rules(alert_groups):
        jobs = re.findall(r'\bjob\s*=\s*"([^"]*)"', rule["expr"])
        assert jobs, f"{rule['alert']}: select job={JOB!r}"
        assert set(jobs) == {JOB}, rule["alert"]


def test_scrape_config_keeps_this_service_pods(deployment: Mapping[str, Any]) -> None:
    (scrape,) = _load_yaml_documents(SCRAPE_CONFIG)
    (job,) = scrape["scrape_configs"]
    keeps = {
        tuple(step["source_labels"]): step["regex"]
        for step in job["relabel_configs"]
        if step.get("action") == "keep"
    }
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    name_label = ("__meta_kubernetes_pod_label_app_kubernetes_io_name",)
    assert re.fullmatch(keeps[name_label], pod_labels["app.kubernetes.io/name"])
    port_name = ("__meta_kubernetes_pod_container_port_name",)
    assert re.fullmatch(keeps[port_name], "http")
    assert _container_port(_container(deployment), "http")
