"""The Kubernetes manifests in k8s/ are valid, and agree with the code.

Offline, without a cluster: built-in kinds are validated against Kubernetes' own JSON schemas
(bundled in kubernetes-validate) in strict mode; KEDA resources and the prometheus-operator's
PodMonitor against the openAPIV3Schema of their CRD (tests/data/crds/), refusing unknown fields
as the API server's strict field validation does. Then the manifests are checked against the
code: queue names from core.topology, worker kinds from core.verification, setting names and
types from core.settings, the health routes from the edge's router, the metrics port every
process serves and the PodMonitor scrapes.

Every checker returns its problems as strings. The tests at the end break a valid manifest in
one place each and show that the checkers report it: a check that cannot fail checks nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import posixpath
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from core import broker, topology
from core.settings import Settings, SettingsError
from core.verification import WORKER_KINDS, Check
from monitoring import k8s as monitoring_k8s
from tests.support import kustomize

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
CRDS = Path(__file__).resolve().parent / "data" / "crds"
CUSTOM_CRDS = (
    "keda.sh_scaledobjects.yaml",
    "keda.sh_triggerauthentications.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
    "rabbitmq.com_rabbitmqclusters.yaml",
    "postgresql.cnpg.io_clusters.yaml",
)
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/", "rabbitmq.com/", "postgresql.cnpg.io/")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# The processes that use PostgreSQL alone: no RabbitMQ, no metrics.
DATABASE_ONLY = frozenset({"migrate", "admin"})
# The label of the operators' pods, the only ones the admin API lets in (network.yaml).
OPERATOR_LABELS = {"intake.prakerja/role": "operator"}

# The oldest Kubernetes the manifests are for: the edge's preStop `sleep` action is on by
# default from 1.30.
KUBERNETES_VERSION = "1.30.0"

# workers/lane.py: on SIGTERM a lane worker waits this long for the tasks in hand.
LANE_DRAIN_S = 30

# Every variable the code reads: INTAKE_ + a Settings field, upper-cased.
SETTINGS_ENV = frozenset("INTAKE_" + f.name.upper() for f in dataclasses.fields(Settings))

# The parameters of KEDA's rabbitmq scaler (keda.sh/docs/2.17/scalers/rabbitmq-queue/). The
# CRD types a trigger's metadata as a map of strings, so a misspelled key passes its schema
# and KEDA ignores it: hence this list. The deprecated `queueLength` is left out on purpose.
RABBITMQ_TRIGGER_KEYS = frozenset(
    {
        "host",
        "hostFromEnv",
        "usernameFromEnv",
        "passwordFromEnv",
        "protocol",
        "mode",
        "value",
        "activationValue",
        "queueName",
        "vhostName",
        "useRegex",
        "pageSize",
        "operation",
        "timeout",
        "excludeUnacknowledged",
        "unsafeSsl",
    }
)

Doc = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """One YAML document of k8s/ and the file it came from."""

    file: str
    doc: Doc

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind"))

    @property
    def name(self) -> str:
        return str((self.doc.get("metadata") or {}).get("name"))

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}/{self.name}"


def load(directory: Path = K8S) -> list[Manifest]:
    """Every resource ``kustomize build`` renders from ``directory``, and the example Secret
    (not in the build: the real one is made out of band, from it)."""
    found = [
        Manifest(f"kustomize build {directory.name}/", doc) for doc in kustomize.build(directory)
    ]
    for path in sorted(directory.rglob("*.example.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{path}: a document that is not a mapping"
            found.append(Manifest(str(path.relative_to(directory)), doc))
    return found


def of_kind(manifests: Iterable[Manifest], kind: str) -> dict[str, Doc]:
    return {m.name: m.doc for m in manifests if m.kind == kind}


def is_custom(doc: Doc) -> bool:
    return str(doc.get("apiVersion", "")).startswith(CUSTOM_GROUPS)


# --- 1. built-in kinds against Kubernetes' schemas -----------------------------------------


def builtin_problems(doc: Doc, version: str = KUBERNETES_VERSION) -> list[str]:
    """Validate a built-in kind (Deployment, Service, ...) in strict mode: unknown fields too."""
    return list(_builtin_problems(json.dumps(doc, sort_keys=True), version))


@cache
def _builtin_problems(doc_json: str, version: str) -> tuple[str, ...]:
    # Cached by content: kubernetes-validate reads its schema files on every call.
    try:
        kubernetes_validate.validate(json.loads(doc_json), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(part) for part in exc.path) or "(document)"
        return (f"{path}: {exc.message}",)
    except kubernetes_validate.SchemaNotFoundError as exc:
        return (str(exc.message),)
    return ()


# --- 2. custom resources (KEDA, prometheus-operator) against their CRD --------------------


def _strict(schema: Any) -> Any:
    """``schema`` refusing unknown fields, as the API server's strict field validation (kubectl's
    default) does: an object with ``properties`` and neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields`` accepts no other key."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {key: _strict(sub) for key, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if "items" in out:
        out["items"] = _strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_strict(sub) for sub in out[key]]
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) to the strict schema of each served version of the CRDs."""
    schemas = {}
    for name in CUSTOM_CRDS:
        crd = yaml.safe_load((CRDS / name).read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = _strict(version["schema"]["openAPIV3Schema"])
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def crd_problems(doc: Doc) -> list[str]:
    """Validate a custom resource against its CRD's schema."""
    schema = crd_schemas().get((str(doc.get("apiVersion")), str(doc.get("kind"))))
    if schema is None:
        return [f"no CRD in {CRDS.name}/ for {doc.get('apiVersion')} {doc.get('kind')}"]
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        f"{'.'.join(str(part) for part in error.path) or '(document)'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]
    # The API server validates metadata (an ObjectMeta) for every kind; the CRD leaves it open.
    metadata = doc.get("metadata") or {}
    if not metadata.get("name"):
        problems.append("metadata.name: missing")
    for key in sorted(set(metadata) - {"name", "namespace", "labels", "annotations"}):
        problems.append(f"metadata.{key}: not expected here")
    return problems


def schema_problems(manifests: Iterable[Manifest]) -> list[str]:
    problems = []
    for m in manifests:
        found = crd_problems(m.doc) if is_custom(m.doc) else builtin_problems(m.doc)
        problems += [f"{m}: {p}" for p in found]
    return problems


# --- 3. consistency with the code -----------------------------------------------------------


def container(deployment: Doc) -> Doc:
    containers: list[Doc] = pod_spec(deployment)["containers"]
    return containers[0]


def argv(deployment: Doc) -> list[str]:
    c = container(deployment)
    return [*c.get("command", []), *c.get("args", [])]


def process(deployment: Doc) -> str | None:
    """``edge``, ``admin`` or the worker kind a Deployment runs; None if it runs something
    else."""
    match argv(deployment):
        case ["intake", "edge"]:
            return "edge"
        case ["intake", "admin"]:
            return "admin"
        case ["intake", "worker", kind] if kind in WORKER_KINDS:
            return str(kind)
    return None


def expected_queues(kind: str | None) -> set[str]:
    """The queues a worker kind consumes, from the topology; none for the others."""
    if kind == "persist":
        return {topology.PERSIST_QUEUE}
    if kind == "participation":
        return set(topology.PARTICIPATION_QUEUES)
    if kind in {c.value for c in Check}:
        return {topology.lane_queue(Check(kind))}
    return set()


def all_queues() -> set[str]:
    return (
        {topology.PERSIST_QUEUE}
        | {topology.lane_queue(c) for c in Check}
        | set(topology.PARTICIPATION_QUEUES)
    )


def pod_spec(workload: Doc) -> Doc:
    """The pod template's spec of a Deployment, a Job or a CronJob."""
    if workload.get("kind") == "CronJob":
        workload = workload["spec"]["jobTemplate"]
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


@dataclasses.dataclass(frozen=True)
class SecretFile:
    """What a container sees at a path inside a Secret volume it mounts."""

    secret: str  # the Secret's name
    key: str | None  # the key whose value the file holds; None: the Secret projects no such file
    mode: int  # the file's permission bits (the volume's defaultMode, or its item's mode)
    read_only: bool  # the mount's readOnly
    optional: bool  # the volume's optional: the pod starts without the Secret


def secret_file(pod: Doc, c: Doc, path: str) -> SecretFile | None:
    """The file of a Secret volume that container ``c`` of ``pod`` sees at ``path`` (a key named
    after it, or the key of the volume's ``items`` entry with that path; with ``subPath``, the
    one file mounted); None when ``path`` is in no Secret volume it mounts."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    path = posixpath.normpath(path)
    # The deepest mount that holds the path is the one the container sees there.
    for mount in sorted(c.get("volumeMounts", []), key=lambda m: -len(m["mountPath"])):
        root = posixpath.normpath(mount["mountPath"])
        if "subPath" in mount:
            if path != root:
                continue
            inside = posixpath.normpath(mount["subPath"])
        elif path.startswith(root.rstrip("/") + "/"):
            inside = path[len(root.rstrip("/")) + 1 :]
        else:
            continue
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            return None  # another kind of volume holds the path
        mode = int(secret.get("defaultMode", 0o644))
        key = inside if "/" not in inside else None
        if secret.get("items") is not None:
            items: list[Doc] = secret["items"]
            item = next((i for i in items if posixpath.normpath(i["path"]) == inside), {})
            key, mode = item.get("key"), int(item.get("mode", mode))
        return SecretFile(
            secret=str(secret.get("secretName")),
            key=key,
            mode=mode,
            read_only=bool(mount.get("readOnly")),
            optional=bool(secret.get("optional")),
        )
    return None


def file_setting(name: str) -> str | None:
    """The setting an ``INTAKE_<NAME>_FILE`` variable names the file of; None for another name
    (``INTAKE_WORKER_STATUS_FILE`` is a setting of its own)."""
    setting = name.removesuffix("_FILE")
    return setting if setting != name and setting in SETTINGS_ENV else None


def secret_settings(workload: Doc) -> dict[str, tuple[str, str]]:
    """The settings (``INTAKE_<NAME>``) a workload's container takes from a Secret, to that
    Secret and key: through ``INTAKE_<NAME>_FILE`` naming a file of a mounted Secret volume,
    or through a ``secretKeyRef`` env (which secret_problems refuses)."""
    pod, c = pod_spec(workload), container(workload)
    found: dict[str, tuple[str, str]] = {}
    for env in c.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            found[env["name"]] = (ref["name"], ref["key"])
        elif file_setting(env["name"]) and "value" in env:
            file = secret_file(pod, c, str(env["value"]))
            if file is not None and file.key is not None:
                found[env["name"].removesuffix("_FILE")] = (file.secret, file.key)
    return found


def effective_settings(manifests: Iterable[Manifest], deployment: Doc) -> Settings:
    """The settings a Deployment's (or Job's) process would build: its ConfigMaps, then its own
    `env` (which wins); values from Secrets are placeholders, a Secret's file (named by an
    ``INTAKE_<NAME>_FILE``) a real file holding one, read by Settings.from_env itself. Raises
    SettingsError, also for an ``INTAKE_<NAME>_FILE`` naming no file of a mounted Secret."""
    configmaps = of_kind(manifests, "ConfigMap")
    pod, c = pod_spec(deployment), container(deployment)
    environ: dict[str, str] = {}
    for source in c.get("envFrom", []):
        environ.update(
            configmaps.get(source.get("configMapRef", {}).get("name"), {}).get("data", {})
        )
    with tempfile.TemporaryDirectory() as files:
        for env in c.get("env", []):
            name = env["name"]
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                environ[name] = _secret_placeholder(ref["key"])
            elif file_setting(name) and "value" in env:
                file = secret_file(pod, c, str(env["value"]))
                if file is None or file.key is None:
                    raise SettingsError(
                        f"{name}: {env['value']} is no file of a Secret mounted in the container"
                    )
                # The file the process would read, with a placeholder for the Secret's value.
                local = Path(files) / name
                local.write_text(_secret_placeholder(file.key) + "\n")
                environ[name] = str(local)
            elif "value" in env:
                environ[name] = str(env["value"])
        return Settings.from_env(environ)


def _secret_placeholder(key: str) -> str:
    """A value in the shape the settings check (the example Secret's shape) for a Secret's key."""
    return _SECRET_PLACEHOLDERS.get(key, "placeholder-from-a-secret-0123456789abcdef")


# Secret values in the shape the settings check (the example Secret's shape).
_SECRET_PLACEHOLDERS = {
    "INTAKE_AMQP_URL": "amqp://intake:placeholder@rabbitmq.intake.svc:5672/intake",
    "INTAKE_DATABASE_URL": "postgresql://intake:placeholder@postgresql-rw.intake.svc:5432/intake",
    "INTAKE_ADMIN_TOKENS": "ops-placeholder:" + "0" * 64,
    # As after a first rotation (empty before it).
    "INTAKE_SECRET_KEYS": "2:placeholder-of-version-2-0123456789abcdef",
}


@cache
def edge_get_routes() -> frozenset[str]:
    """The paths the edge serves to GET, from its router."""
    from core.keys import Keyring
    from intake.app import create_app
    from intake.publisher import BatchPublisher

    settings = Settings()
    keyring = Keyring.from_secret(settings.secret_key)
    app = create_app(settings, keyring, BatchPublisher(settings, keyring))
    return frozenset(
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "GET" and route.resource is not None
    )


def configmap_problems(name: str, configmap: Doc) -> list[str]:
    problems = []
    data: dict[str, Any] = configmap.get("data") or {}
    for key in sorted(set(data) - SETTINGS_ENV):
        problems.append(f"ConfigMap/{name}: {key} is not a setting (core/settings.py)")
    for key, value in data.items():
        if not isinstance(value, str):
            problems.append(f"ConfigMap/{name}: {key} must be a string, not {value!r}")
    try:
        Settings.from_env({**data, "INTAKE_SECRET_KEY": "placeholder-0123456789abcdef-0123456789"})
    except SettingsError as exc:
        problems.append(f"ConfigMap/{name}: {exc}")
    return problems


def deployment_problems(manifests: list[Manifest], name: str, deployment: Doc) -> list[str]:
    where = f"Deployment/{name}"
    problems = []
    pod = deployment["spec"]["template"]["spec"]
    if len(pod["containers"]) != 1:
        problems.append(f"{where}: one container expected, found {len(pod['containers'])}")
    if not _selects(deployment["spec"]["selector"].get("matchLabels", {}), deployment):
        problems.append(f"{where}: its selector does not match its pod template's labels")
    kind = process(deployment)
    if kind is None:
        problems.append(
            f"{where}: runs {argv(deployment)}, not `intake edge`, `intake admin` nor"
            " `intake worker <kind>`"
            f" with a kind of core.verification.WORKER_KINDS {WORKER_KINDS}"
        )
    c = container(deployment)
    for env in c.get("env", []):
        if env["name"] not in SETTINGS_ENV and file_setting(env["name"]) is None:
            problems.append(
                f"{where}: env {env['name']} is not a setting (core/settings.py) nor the"
                " INTAKE_<NAME>_FILE of one"
            )
    try:
        settings = effective_settings(manifests, deployment)
    except SettingsError as exc:
        return [*problems, f"{where}: {exc}"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if kind in {c.value for c in Check} and grace <= LANE_DRAIN_S:
        problems.append(
            f"{where}: terminationGracePeriodSeconds {grace} leaves no time for the lane's"
            f" {LANE_DRAIN_S} s drain of the tasks in hand"
        )
    if kind == "edge":
        problems += edge_problems(where, pod, c, settings, grace)
    elif kind == "admin":
        problems += admin_problems(where, c, settings)
    elif kind is not None:
        problems += worker_probe_problems(where, c, settings)
    if kind in {"edge", "admin", Check.PHOTO.value}:
        # The edge writes photos where the photo lane reads them, and the admin API exports and
        # erases a person's: one shared volume.
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {
            volumes.get(mount["name"], {}).get("persistentVolumeClaim", {}).get("claimName")
            for mount in c.get("volumeMounts", [])
            if mount["mountPath"] == settings.blob_dir
        }
        if not claims - {None}:
            problems.append(f"{where}: no volume claim mounted at INTAKE_BLOB_DIR")
    if kind is not None:
        problems += network_problems(manifests, where, deployment, settings, kind)
    problems += disruption_problems(manifests, where, deployment)
    return problems


def disruption_problems(manifests: list[Manifest], where: str, deployment: Doc) -> list[str]:
    """One PodDisruptionBudget per Deployment, that lets a node drain take its pods one at a
    time (never blocks it: no minAvailable, which a one-replica Deployment could not meet)."""
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})
    budgets = [
        d
        for d in of_kind(manifests, "PodDisruptionBudget").values()
        if _selector_matches(d["spec"]["selector"], labels)
    ]
    if len(budgets) != 1:
        return [f"{where}: {len(budgets)} PodDisruptionBudgets select its pods, not one"]
    spec = budgets[0]["spec"]
    if "minAvailable" in spec or spec.get("maxUnavailable") != 1:
        return [
            f"{where}: its PodDisruptionBudget must set maxUnavailable: 1 (and no minAvailable)"
        ]
    return []


Port = tuple[int, str]  # (number, protocol)
ALL_PORTS: Port = (0, "*")  # a rule without ports


def _selector_matches(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        value, values = labels.get(e["key"]), e.get("values") or []
        if not {
            "In": value in values,
            "NotIn": value not in values,
            "Exists": value is not None,
            "DoesNotExist": value is None,
        }[e["operator"]]:
            return False
    return True


def _allowed(policies: list[Doc], direction: str, named: dict[str, int]) -> set[Port]:
    """The ports the policies open in one direction (``ingress``, ``egress``); a named port
    is this pod's container port of that name."""
    ports: set[Port] = set()
    for policy in policies:
        for rule in policy["spec"].get(direction) or []:
            if not rule.get("ports"):
                ports.add(ALL_PORTS)
            for p in rule.get("ports", []):
                number = named.get(p["port"], 0) if isinstance(p["port"], str) else p["port"]
                ports.add((int(number), p.get("protocol", "TCP")))
    return ports


def _url_port(url: str, default: int) -> int:
    parts = urllib.parse.urlsplit(url)
    return parts.port or {"https": 443, "http": 80, "amqps": 5671}.get(parts.scheme, default)


def needed_egress(settings: Settings, kind: str) -> set[Port]:
    """What a process calls: DNS, every PostgreSQL host, every RabbitMQ node (not the
    migration Job nor the admin API), and, for a lane that calls out, its ministry's API, the
    SMS gateway or the SMTP relay."""
    needed = {(53, "UDP"), (53, "TCP")}
    hosts = urllib.parse.urlsplit(settings.database_url).netloc.rpartition("@")[2]
    needed |= {(int(h.rpartition(":")[2]) if ":" in h else 5432, "TCP") for h in hosts.split(",")}
    if kind in DATABASE_ONLY:
        return needed
    needed |= {(_url_port(url, 5672), "TCP") for url in broker.nodes(settings.amqp_url)}
    outside = {
        Check.DUKCAPIL.value: settings.dukcapil_url,
        Check.DAPODIK.value: settings.dapodik_url,
        Check.DTKS.value: settings.dtks_url,
        Check.PHONE.value: settings.sms_url,
    }
    if kind in outside:
        needed.add((_url_port(outside[kind], 443), "TCP"))
    if kind == Check.EMAIL.value:
        needed.add((settings.smtp_port, "TCP"))
    if kind == "notify":  # the outcomes of a wave: by email and by SMS
        needed |= {(_url_port(settings.sms_url, 443), "TCP"), (settings.smtp_port, "TCP")}
    return needed


def network_problems(
    manifests: list[Manifest], where: str, deployment: Doc, settings: Settings, kind: str
) -> list[str]:
    """Each process isolated both ways by NetworkPolicies, reachable on its own ports (the
    metrics port; the edge's HTTP port; the admin API's port alone, from the operators' pods
    only) and allowed to call exactly what it calls."""
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})
    policies = [
        d
        for d in of_kind(manifests, "NetworkPolicy").values()
        if _selector_matches(d["spec"]["podSelector"], labels)
    ]
    problems = []
    for direction in ("Ingress", "Egress"):
        if not any(direction in d["spec"].get("policyTypes", []) for d in policies):
            problems.append(f"{where}: no NetworkPolicy isolates its {direction.lower()}")
    named = {p["name"]: p["containerPort"] for p in container(deployment).get("ports", [])}
    ingress = _allowed(policies, "ingress", named)
    wanted_in = set() if kind in DATABASE_ONLY else {(settings.metrics_port, "TCP")}
    if kind == "edge":
        wanted_in.add((settings.edge_port, "TCP"))
    if kind == "admin":
        wanted_in.add((settings.admin_port, "TCP"))
        # From the operators' pods of the namespace only: not another pod, not elsewhere.
        for who, source, ports in (
            ("the operators' pods", (NAMESPACE, OPERATOR_LABELS), wanted_in),
            ("another pod of the namespace", (NAMESPACE, {"app.kubernetes.io/name": "x"}), set()),
            ("an operator's pod of another namespace", ("default", OPERATOR_LABELS), set()),
        ):
            got = admitted(policies, source, named)
            if got != ports:
                problems.append(f"{where}: {who} let in on {sorted(got)}, not {sorted(ports)}")
    for port in sorted(wanted_in - ingress):
        problems.append(f"{where}: no NetworkPolicy lets in port {port[0]}/{port[1]}")
    for port in sorted(ingress - wanted_in):
        problems.append(f"{where}: a NetworkPolicy lets in {port}, which it does not serve")
    egress = _allowed(policies, "egress", named)
    needed = needed_egress(settings, kind)
    for port in sorted(needed - egress):
        problems.append(f"{where}: no NetworkPolicy lets it reach port {port[0]}/{port[1]}")
    for port in sorted(egress - needed):
        problems.append(f"{where}: a NetworkPolicy lets it reach {port}, which it never calls")
    return problems


def edge_problems(where: str, pod: Doc, c: Doc, settings: Settings, grace: int) -> list[str]:
    problems = []
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if settings.edge_port not in ports.values():
        problems.append(f"{where}: INTAKE_EDGE_PORT {settings.edge_port} is no container port")
    if settings.edge_host in LOOPBACK:
        problems.append(f"{where}: INTAKE_EDGE_HOST {settings.edge_host} is unreachable")
    if settings.metrics_port == settings.edge_port:
        problems.append(f"{where}: INTAKE_METRICS_PORT is the public port {settings.edge_port}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = c.get(probe, {}).get("httpGet", {})
        if http.get("path") != path or path not in edge_get_routes():
            problems.append(f"{where}: {probe} must GET {path} (intake/app.py)")
        if http.get("port") not in {*ports, *ports.values()}:
            problems.append(f"{where}: {probe} port {http.get('port')} is no container port")
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if grace <= sleep + settings.edge_shutdown_timeout_s:
        problems.append(
            f"{where}: terminationGracePeriodSeconds {grace} does not cover the preStop sleep"
            f" ({sleep} s) and INTAKE_EDGE_SHUTDOWN_TIMEOUT_S ({settings.edge_shutdown_timeout_s})"
        )
    return problems


def admin_problems(where: str, c: Doc, settings: Settings) -> list[str]:
    """The admin API listens on a container port, reachable, apart from the edge's; every path
    answers 401 without a token, so both probes connect to that port (tcpSocket)."""
    problems = []
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if settings.admin_port not in ports.values():
        problems.append(f"{where}: INTAKE_ADMIN_PORT {settings.admin_port} is no container port")
    if settings.admin_host in LOOPBACK:
        problems.append(f"{where}: INTAKE_ADMIN_HOST {settings.admin_host} is unreachable")
    for probe in ("readinessProbe", "livenessProbe"):
        port = c.get(probe, {}).get("tcpSocket", {}).get("port")
        if ports.get(port, port) != settings.admin_port:
            problems.append(
                f"{where}: {probe} must connect (tcpSocket) to INTAKE_ADMIN_PORT"
                f" {settings.admin_port}, not {port!r}"
            )
    return problems


# What a worker serves beside /metrics: readiness (a live broker session, consuming or, for the
# dispatcher, publishing) and liveness (its loop making progress).
WORKER_PROBES = (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"))


def worker_probe_problems(where: str, c: Doc, settings: Settings) -> list[str]:
    """Both probes GET their path on the container port named `metrics`, the port the process
    serves on (INTAKE_METRICS_PORT)."""
    problems = []
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for probe, path in WORKER_PROBES:
        http = c.get(probe, {}).get("httpGet", {})
        if http.get("path") != path:
            problems.append(f"{where}: {probe} must GET {path}, not {http.get('path')!r}")
        if http.get("port") != "metrics" or ports.get("metrics") != settings.metrics_port:
            problems.append(
                f"{where}: {probe} must be on the port `metrics`"
                f" (INTAKE_METRICS_PORT {settings.metrics_port}), not {http.get('port')!r}"
            )
    return problems


def scaled_object_problems(manifests: list[Manifest], name: str, so: Doc) -> list[str]:
    where = f"ScaledObject/{name}"
    problems = []
    spec = so.get("spec", {})
    deployments = of_kind(manifests, "Deployment")
    target = spec.get("scaleTargetRef", {})
    deployment = deployments.get(target.get("name"))
    if target.get("kind", "Deployment") != "Deployment" or deployment is None:
        problems.append(f"{where}: scales {target}, not a Deployment of k8s/")
        return problems
    if "replicas" in deployment["spec"]:
        problems.append(f"{where}: Deployment/{target['name']} sets replicas, which KEDA owns")
    kind = process(deployment)
    queues = expected_queues(kind)
    if not queues:
        return [*problems, f"{where}: Deployment/{target['name']} consumes no queue"]
    minimum, maximum = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if minimum > maximum:
        problems.append(f"{where}: minReplicaCount {minimum} > maxReplicaCount {maximum}")
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    down = (behavior or {}).get("scaleDown", {})
    if not down.get("policies") or not down.get("stabilizationWindowSeconds"):
        problems.append(f"{where}: no gradual scale-down (a behavior.scaleDown with policies)")
    triggers = [t for t in spec.get("triggers", []) if t.get("type") == "rabbitmq"]
    if not triggers:
        problems.append(f"{where}: no rabbitmq trigger")
    auths = of_kind(manifests, "TriggerAuthentication")
    env_names = {env["name"] for env in container(deployment).get("env", [])}
    for trigger in triggers:
        metadata = trigger.get("metadata", {})
        for key in sorted(set(metadata) - RABBITMQ_TRIGGER_KEYS):
            problems.append(f"{where}: trigger metadata {key!r} is no rabbitmq scaler parameter")
        if metadata.get("queueName") not in queues:
            problems.append(
                f"{where}: queueName {metadata.get('queueName')!r}, but"
                f" `intake worker {kind}` consumes {sorted(queues)} (core/topology.py)"
            )
        if metadata.get("mode") != "QueueLength":
            problems.append(f"{where}: mode {metadata.get('mode')!r}, not QueueLength")
        if not str(metadata.get("value", "")).isdigit() or int(metadata["value"]) < 1:
            problems.append(f"{where}: value {metadata.get('value')!r} is no positive target")
        auth = trigger.get("authenticationRef", {}).get("name")
        if auth is not None and auth not in auths:
            problems.append(f"{where}: TriggerAuthentication {auth!r} is not in k8s/")
        host_env = metadata.get("hostFromEnv")
        if host_env is not None and host_env not in env_names:
            problems.append(f"{where}: hostFromEnv {host_env!r} is not in the target's env")
        if auth is None and host_env is None and "host" not in metadata:
            problems.append(f"{where}: no host (authenticationRef or hostFromEnv)")
    return problems


def _selects(selector: dict[str, str], deployment: Doc) -> bool:
    """Whether a label selector picks the pods of ``deployment``."""
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"].get("labels", {})
    return bool(selector) and selector.items() <= labels.items()


def service_problems(manifests: list[Manifest], kind: str, name: str, doc: Doc) -> list[str]:
    """A Service or PodDisruptionBudget selects the pods of one Deployment of k8s/, and a
    Service's target ports are ports of that Deployment's container."""
    where = f"{kind}/{name}"
    selector = doc["spec"]["selector"]
    selector = selector.get("matchLabels", {}) if kind == "PodDisruptionBudget" else selector
    selected = [d for d in of_kind(manifests, "Deployment").values() if _selects(selector, d)]
    if kind == "PodDisruptionBudget" and not selected:
        # RabbitMQ's nodes: the operator makes no budget for them.
        for pod, (labels, _) in service_pods(manifests).items():
            if selector and selector.items() <= labels.items():
                if doc["spec"].get("maxUnavailable") != 1 or "minAvailable" in doc["spec"]:
                    return [f"{where}: {pod}'s budget must set maxUnavailable: 1"]
                return []
    if not selected:
        return [f"{where}: its selector {selector} picks the pods of no Deployment"]
    problems = []
    for port in doc["spec"].get("ports", []):
        target = port.get("targetPort", port["port"])
        for deployment in selected:
            ports = container(deployment).get("ports", [])
            if target not in {p.get("name") for p in ports} | {p["containerPort"] for p in ports}:
                problems.append(f"{where}: targetPort {target!r} is no port of its pods")
    return problems


def pod_monitor_problems(manifests: list[Manifest], name: str, monitor: Doc) -> list[str]:
    """A PodMonitor of a service (RabbitMQ, PostgreSQL) scrapes named ports of its pods. The
    others select the pods of every Deployment but the admin API's, and each of their
    endpoints is a named container port of theirs that is the port their process serves
    /metrics on."""
    where = f"PodMonitor/{name}"
    spec = monitor.get("spec", {})
    selector = spec.get("selector", {})
    for pod, (labels, named) in service_pods(manifests).items():
        if selector and _selector_matches(selector, labels):
            # A service's own metrics (RabbitMQ's plugin, CloudNativePG's exporter).
            return [
                f"{where}: port {e.get('port')!r} is no named port of {pod}'s pods"
                for e in spec.get("podMetricsEndpoints", [])
                if e.get("port") not in named
            ] or ([] if spec.get("podMetricsEndpoints") else [f"{where}: no podMetricsEndpoints"])
    deployments = of_kind(manifests, "Deployment")
    selected = {
        n: d
        for n, d in deployments.items()
        if selector
        and _selector_matches(selector, d["spec"]["template"]["metadata"].get("labels", {}))
    }
    serving = {n for n, d in deployments.items() if process(d) not in DATABASE_ONLY}
    problems = [
        f"{where}: its selector {selector} misses the pods of Deployment/{n}"
        for n in sorted(serving - set(selected))
    ]
    problems += [
        f"{where}: selects Deployment/{n}, which serves no metrics"
        for n in sorted(set(selected) - serving)
    ]
    selected = {n: d for n, d in selected.items() if n in serving}
    endpoints = spec.get("podMetricsEndpoints", [])
    if not endpoints:
        problems.append(f"{where}: no podMetricsEndpoints")
    for endpoint in endpoints:
        port = endpoint.get("port")
        if endpoint.get("path", "/metrics") != "/metrics":
            problems.append(f"{where}: path {endpoint.get('path')!r}, but /metrics is served")
        for n, deployment in sorted(selected.items()):
            ports = {
                p.get("name"): p["containerPort"] for p in container(deployment).get("ports", [])
            }
            if port not in ports:
                problems.append(f"{where}: port {port!r} is no named port of Deployment/{n}")
                continue
            try:
                settings = effective_settings(manifests, deployment)
            except SettingsError:
                continue  # reported with the Deployment
            if ports[port] != settings.metrics_port:
                problems.append(
                    f"{where}: port {port!r} of Deployment/{n} is {ports[port]}, but its process"
                    f" serves /metrics on INTAKE_METRICS_PORT {settings.metrics_port}"
                )
            if settings.metrics_host in LOOPBACK:
                problems.append(
                    f"{where}: Deployment/{n} serves /metrics on INTAKE_METRICS_HOST"
                    f" {settings.metrics_host}, unreachable from Prometheus"
                )
    return problems


def hpa_problems(manifests: list[Manifest], name: str, hpa: Doc) -> list[str]:
    where = f"HorizontalPodAutoscaler/{name}"
    target = hpa["spec"]["scaleTargetRef"]
    deployment = of_kind(manifests, "Deployment").get(target["name"])
    if target["kind"] != "Deployment" or deployment is None or process(deployment) != "edge":
        return [f"{where}: scales {target['kind']}/{target['name']}, not the edge Deployment"]
    problems = []
    if "replicas" in deployment["spec"]:
        problems.append(f"{where}: Deployment/{target['name']} sets replicas, which the HPA owns")
    if not hpa["spec"].get("behavior", {}).get("scaleDown", {}).get("stabilizationWindowSeconds"):
        problems.append(f"{where}: no scale-down stabilization window")
    return problems


# The Secret the processes take their secret settings from (secret.example.yaml's shape).
SECRETS = "intake-secrets"
# The admin API's keys of it (INTAKE_SECRET_KEY only because no process starts without it in
# production), and the one no other process takes.
ADMIN_SECRETS = frozenset(
    {"INTAKE_SECRET_KEY", "INTAKE_SECRET_KEYS", "INTAKE_DATABASE_URL", "INTAKE_ADMIN_TOKENS"}
)
# The retention job's: PostgreSQL and the master secrets (which the settings check against
# INTAKE_SECRET_KEY_CURRENT).
RETENTION_SECRETS = frozenset({"INTAKE_SECRET_KEY", "INTAKE_SECRET_KEYS", "INTAKE_DATABASE_URL"})
ADMIN_SECRETS_ONLY = frozenset({"INTAKE_ADMIN_TOKENS"})


def readable(pod: Doc, c: Doc, mode: int) -> bool:
    """Whether container ``c`` of ``pod`` can read a file of a Secret volume with this mode:
    the kubelet makes it owned by root, and by the group fsGroup when the pod sets one (the
    process's user is in that group)."""
    context = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    if context.get("runAsUser") == 0 or mode & 0o004:
        return True
    return pod.get("securityContext", {}).get("fsGroup") is not None and bool(mode & 0o040)


def secret_problems(manifests: list[Manifest]) -> list[str]:
    """Every Secret key referred to exists in the Secret's example (secret.example.yaml). The
    processes and the migration Job take their secrets as files of a mounted Secret, never in
    their environment: no ``secretKeyRef`` env, no ``secretRef`` envFrom; each
    ``INTAKE_<NAME>_FILE`` names a file of a Secret volume the container mounts read-only, which
    holds the key ``INTAKE_<NAME>`` and which the container's user can read. Every process
    takes intake-secrets' keys that way (INTAKE_ADMIN_TOKENS the admin API alone, which takes
    no INTAKE_AMQP_URL), the retention CronJob the master secrets and INTAKE_DATABASE_URL, the
    Job its INTAKE_DATABASE_URL."""
    secrets = {
        name: set(doc.get("stringData", {})) | set(doc.get("data", {}))
        for name, doc in of_kind(manifests, "Secret").items()
    }
    refs: list[tuple[str, str, str]] = []
    problems = []
    workloads = [
        (f"{kind}/{name}", kind, workload)
        for kind in ("Deployment", "Job", "CronJob")
        for name, workload in of_kind(manifests, kind).items()
    ]
    for where, kind, workload in workloads:
        pod = pod_spec(workload)
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    problems.append(
                        f"{where}: envFrom the Secret {source['secretRef'].get('name')!r} puts"
                        " secrets in the environment: mount it and set INTAKE_<NAME>_FILE"
                    )
            for env in c.get("env", []):
                name = env["name"]
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    refs.append((where, ref["name"], ref["key"]))
                    problems.append(
                        f"{where}: env {name} takes the key {ref['key']!r} of the Secret"
                        f" {ref['name']!r} through secretKeyRef, into the environment: mount"
                        f" the Secret and set {name}_FILE"
                    )
                setting = file_setting(name)
                if setting is None:
                    continue
                file = secret_file(pod, c, str(env.get("value", "")))
                if file is None or file.key is None:
                    problems.append(
                        f"{where}: {name} {env.get('value')!r} is no file of a Secret volume"
                        " the container mounts"
                    )
                    continue
                refs.append((where, file.secret, file.key))
                if file.key != setting:
                    problems.append(
                        f"{where}: {name} reads the key {file.key!r} of the Secret"
                        f" {file.secret!r}, not {setting!r}"
                    )
                if not file.read_only:
                    problems.append(f"{where}: the Secret {file.secret!r} is mounted writable")
                if file.optional:
                    problems.append(
                        f"{where}: the Secret {file.secret!r} is an optional volume: the pod"
                        " would start without it"
                    )
                if not readable(pod, c, file.mode):
                    problems.append(
                        f"{where}: {env['value']} (mode {file.mode:04o}) is not readable by the"
                        " container's user (no fsGroup with a group-readable mode)"
                    )
        keys = secrets.get(SECRETS, set())
        if kind == "Job":
            wanted = {"INTAKE_DATABASE_URL"}
        elif kind == "CronJob":
            wanted = keys & RETENTION_SECRETS
        elif process(workload) == "admin":
            wanted = keys & ADMIN_SECRETS
        else:
            wanted = keys - ADMIN_SECRETS_ONLY
        taken = secret_settings(workload)
        for setting in sorted(set(taken) - wanted):
            if setting in ADMIN_SECRETS_ONLY or setting == "INTAKE_AMQP_URL":
                problems.append(f"{where}: takes {setting}, which it has no use for")
        for setting in sorted(wanted):
            if taken.get(setting) != (SECRETS, setting):
                problems.append(
                    f"{where}: does not take {setting} from the Secret {SECRETS!r} (the file"
                    f" of its key {setting} named by {setting}_FILE)"
                )
    for name, auth in of_kind(manifests, "TriggerAuthentication").items():
        for ref in auth["spec"].get("secretTargetRef", []):
            refs.append((f"TriggerAuthentication/{name}", ref["name"], ref["key"]))
    return problems + [
        f"{where}: Secret {secret!r} has no key {key!r}"
        for where, secret, key in refs
        if key not in secrets.get(secret, set())
    ]


def coverage_problems(manifests: list[Manifest]) -> list[str]:
    """Every process has a Deployment, every queue consumer a ScaledObject on its queue."""
    problems = []
    deployments = of_kind(manifests, "Deployment")
    running = {process(d) for d in deployments.values()}
    for kind in sorted({"edge", "admin", *WORKER_KINDS} - running):
        problems.append(
            f"no Deployment runs `intake {kind if kind in {'edge', 'admin'} else 'worker ' + kind}`"
        )
    scaled = {
        trigger.get("metadata", {}).get("queueName")
        for so in of_kind(manifests, "ScaledObject").values()
        for trigger in so["spec"].get("triggers", [])
    }
    for queue in sorted(all_queues() - scaled):
        problems.append(f"no ScaledObject scales on {queue}")
    hpa_targets = {
        hpa["spec"]["scaleTargetRef"]["name"]
        for hpa in of_kind(manifests, "HorizontalPodAutoscaler").values()
    }
    if not any(process(deployments[name]) == "edge" for name in hpa_targets & set(deployments)):
        problems.append("no HorizontalPodAutoscaler scales the edge")
    if not of_kind(manifests, "PodMonitor"):
        problems.append("no PodMonitor scrapes the processes' /metrics")
    monitors = [
        m["spec"]["selector"].get("matchLabels", {})
        for m in of_kind(manifests, "PodMonitor").values()
    ]
    budgets = [
        b["spec"]["selector"].get("matchLabels", {})
        for b in of_kind(manifests, "PodDisruptionBudget").values()
    ]
    for pod, (labels, _) in sorted(service_pods(manifests).items()):
        if not any(m and m.items() <= labels.items() for m in monitors):
            problems.append(f"no PodMonitor scrapes the pods of {pod}")
        # CloudNativePG makes its own budgets (postgresql_problems checks enablePDB).
        if pod.startswith("RabbitmqCluster/") and not any(
            b and b.items() <= labels.items() for b in budgets
        ):
            problems.append(f"no PodDisruptionBudget for the pods of {pod}")
    for kind in ("RabbitmqCluster", "Cluster", "PrometheusRule", "Ingress"):
        if not of_kind(manifests, kind):
            problems.append(f"no {kind} in k8s/")
    return problems


# --- 4. RabbitMQ and PostgreSQL, through their operators ----------------------------------


# The pods each operator makes for a cluster named N, and their named container ports (the
# RabbitMQ cluster operator's internal/resource/statefulset.go and internal/metadata/label.go;
# CloudNativePG's instance pods). NetworkPolicies, PodDisruptionBudgets and PodMonitors are
# checked against these.
def rabbitmq_pod(name: str) -> tuple[dict[str, str], dict[str, int]]:
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "rabbitmq",
        "app.kubernetes.io/part-of": "rabbitmq",
    }
    return labels, {"epmd": 4369, "amqp": 5672, "management": 15672, "prometheus": 15692}


def postgresql_pod(name: str) -> tuple[dict[str, str], dict[str, int]]:
    labels = {"cnpg.io/cluster": name, "cnpg.io/podRole": "instance"}
    return labels, {"postgresql": 5432, "metrics": 9187, "status": 8000}


def service_pods(manifests: list[Manifest]) -> dict[str, tuple[dict[str, str], dict[str, int]]]:
    """``RabbitmqCluster/<name>`` or ``Cluster/<name>`` to its pods' labels and named ports."""
    pods = {f"RabbitmqCluster/{n}": rabbitmq_pod(n) for n in of_kind(manifests, "RabbitmqCluster")}
    pods |= {f"Cluster/{n}": postgresql_pod(n) for n in of_kind(manifests, "Cluster")}
    return pods


# Where the peers of the services' pods run (network.yaml's assumptions), as (namespace, pod
# labels): a NetworkPolicy peer admits such a source or not.
PROMETHEUS = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
KEDA_OPERATOR = ("keda", {"app.kubernetes.io/name": "keda-operator"})
RABBITMQ_OPERATOR = ("rabbitmq-system", {"app.kubernetes.io/component": "rabbitmq-operator"})
CNPG_OPERATOR = ("cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"})
NAMESPACE = "intake"
Source = tuple[str, dict[str, str]]


def _peer_admits(peer: Doc, source: Source) -> bool:
    namespace, labels = source
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not _selector_matches(
            peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}
        ):
            return False
    elif namespace != NAMESPACE:
        return False
    return _selector_matches(peer.get("podSelector") or {}, labels)


def _port_numbers(rule: Doc, named: dict[str, int]) -> set[Port]:
    if not rule.get("ports"):
        return {ALL_PORTS}
    ports: set[Port] = set()
    for p in rule["ports"]:
        first = named.get(p["port"], 0) if isinstance(p["port"], str) else int(p["port"])
        for number in range(first, int(p.get("endPort", first)) + 1):
            ports.add((number, p.get("protocol", "TCP")))
    return ports


def admitted(policies: list[Doc], source: Source, named: dict[str, int]) -> set[Port]:
    """The ports on which ``policies`` (of one pod) let ``source`` in."""
    ports: set[Port] = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            if not peers or any(_peer_admits(peer, source) for peer in peers):
                ports |= _port_numbers(rule, named)
    return ports


def _range(first: int, last: int) -> set[Port]:
    return {(n, "TCP") for n in range(first, last + 1)}


DNS: set[Port] = {(53, "UDP"), (53, "TCP")}
RABBITMQ_PEERS = {(4369, "TCP"), (25672, "TCP")} | _range(35672, 35682)
POSTGRESQL_PEERS = {(5432, "TCP"), (8000, "TCP")}
KUBERNETES_API = {(443, "TCP"), (6443, "TCP")}


def services_network_problems(manifests: list[Manifest]) -> list[str]:
    """The pods of RabbitMQ and PostgreSQL isolated both ways, open to exactly their clients,
    their peers, their operator and Prometheus, and reaching only DNS, their peers and (for
    CloudNativePG's instance manager) the Kubernetes API; and a namespace-wide default deny."""
    policies = list(of_kind(manifests, "NetworkPolicy").values())
    problems = []
    if not any(
        p["spec"].get("podSelector") == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ):
        problems.append("no NetworkPolicy denies everything in the namespace by default")
    clients: list[Source] = [
        (NAMESPACE, d["spec"]["template"]["metadata"]["labels"])
        for kind in ("Deployment", "Job")
        for d in of_kind(manifests, kind).values()
    ]
    for where, (labels, named) in service_pods(manifests).items():
        mine = [p for p in policies if _selector_matches(p["spec"]["podSelector"], labels)]
        self_source: Source = (NAMESPACE, labels)
        if where.startswith("RabbitmqCluster/"):
            expected = {
                "KEDA's operator": (KEDA_OPERATOR, {(5672, "TCP")}),
                "Prometheus": (PROMETHEUS, {(15692, "TCP")}),
                "the cluster operator": (RABBITMQ_OPERATOR, {(15672, "TCP")}),
                "its peers": (self_source, RABBITMQ_PEERS),
            }
            egress = DNS | RABBITMQ_PEERS
        else:
            expected = {
                "Prometheus": (PROMETHEUS, {(9187, "TCP")}),
                "the operator": (CNPG_OPERATOR, POSTGRESQL_PEERS),
                "its peers": (self_source, POSTGRESQL_PEERS),
            }
            egress = DNS | POSTGRESQL_PEERS | KUBERNETES_API
        for direction in ("Ingress", "Egress"):
            if not any(direction in p["spec"].get("policyTypes", []) for p in mine):
                problems.append(f"{where}: no NetworkPolicy isolates its {direction.lower()}")
        for who, (source, ports) in expected.items():
            got = admitted(mine, source, named)
            for port in sorted(ports - got):
                problems.append(f"{where}: {who} is not let in on {port[0]}/{port[1]}")
            for port in sorted(got - ports):
                problems.append(f"{where}: {who} is let in on {port}, which it does not need")
        if where.startswith("Cluster/"):
            # Every process and the migration Job reach PostgreSQL, and on nothing else.
            for source in clients:
                got = admitted(mine, source, named)
                if got != {(5432, "TCP")}:
                    problems.append(f"{where}: {source[1]} is let in on {sorted(got)}, not 5432")
        else:
            for source in clients:
                got = admitted(mine, source, named)
                apart = source[1].get("app.kubernetes.io/component") in DATABASE_ONLY
                if got != (set() if apart else {(5672, "TCP")}):
                    problems.append(f"{where}: {source[1]} is let in on {sorted(got)}")
        out: set[Port] = set()
        for p in mine:
            for rule in p["spec"].get("egress") or []:
                out |= _port_numbers(rule, named)
        for port in sorted(egress - out):
            problems.append(f"{where}: no NetworkPolicy lets it reach port {port[0]}/{port[1]}")
        for port in sorted(out - egress):
            problems.append(f"{where}: a NetworkPolicy lets it reach {port}, which it never calls")
    return problems


def _url(manifests: list[Manifest], key: str) -> urllib.parse.SplitResult:
    (secret,) = [d for n, d in of_kind(manifests, "Secret").items() if n == "intake-secrets"]
    return urllib.parse.urlsplit(str(secret["stringData"][key]))


# The PostgreSQL pool of each process (intake/app.py, workers/persist.py, workers/dispatch.py,
# workers/selection.py, workers/notify.py, admin/app.py: fixed; a lane's is
# INTAKE_LANE_DB_CONNECTIONS).
FIXED_POOLS = {"edge": 4, "persist": 2, "dispatch": 3, "waves": 2, "notify": 3, "admin": 2}


def connection_budget(manifests: list[Manifest]) -> int:
    """PostgreSQL connections the processes open at full scale-out: each Deployment's most
    replicas (its HPA's or ScaledObject's maximum, or its own replicas) times its pool."""
    maxima = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa["spec"]["maxReplicas"]
        for hpa in of_kind(manifests, "HorizontalPodAutoscaler").values()
    } | {
        so["spec"]["scaleTargetRef"]["name"]: so["spec"].get("maxReplicaCount", 100)
        for so in of_kind(manifests, "ScaledObject").values()
    }
    total = 0
    for name, deployment in of_kind(manifests, "Deployment").items():
        kind = process(deployment)
        replicas = maxima.get(name, deployment["spec"].get("replicas", 1))
        pool = FIXED_POOLS.get(str(kind))
        if pool is None:
            try:
                pool = effective_settings(manifests, deployment).lane_db_connections
            except SettingsError:
                continue  # reported with the Deployment
        total += replicas * pool
    return total


def rabbitmq_problems(manifests: list[Manifest], name: str, cluster: Doc) -> list[str]:
    """Three nodes (quorum queues), the Secret's URL pointing at this cluster, and the vhost and
    user of that URL made by the definitions the nodes import at boot."""
    where = f"RabbitmqCluster/{name}"
    spec = cluster["spec"]
    problems = []
    if spec.get("replicas") != 3:
        problems.append(f"{where}: {spec.get('replicas')} replicas, not 3 (quorum queues)")
    url = _url(manifests, "INTAKE_AMQP_URL")
    vhost, user = urllib.parse.unquote(url.path[1:]), url.username
    if (url.hostname or "").split(".")[0] != name:
        problems.append(f"{where}: INTAKE_AMQP_URL names host {url.hostname}, not its Service")
    config = spec.get("rabbitmq", {}).get("additionalConfig", "")
    folder = next(
        (
            line.split("=", 1)[1].strip()
            for line in config.splitlines()
            if line.split("=")[0].strip() == "load_definitions"
        ),
        None,
    )
    if folder is None:
        return [*problems, f"{where}: no load_definitions in additionalConfig"]
    pod = spec.get("override", {}).get("statefulSet", {}).get("spec", {}).get("template", {})
    volumes = {v["name"]: v for v in pod.get("spec", {}).get("volumes", [])}
    (rabbit,) = [c for c in pod["spec"]["containers"] if c["name"] == "rabbitmq"]
    configmaps = of_kind(manifests, "ConfigMap")
    secrets = of_kind(manifests, "Secret")
    imported: list[tuple[str, Doc]] = []
    for mount in rabbit.get("volumeMounts", []):
        if not mount["mountPath"].startswith(folder.rstrip("/") + "/"):
            continue
        volume = volumes.get(mount["name"], {})
        if "configMap" in volume:
            source = configmaps.get(volume["configMap"]["name"], {}).get("data", {})
        elif "secret" in volume:
            source = secrets.get(volume["secret"]["secretName"], {}).get("stringData", {})
        else:
            source = {}
        if mount.get("subPath") not in source:
            problems.append(f"{where}: {mount['mountPath']} is no key of its volume's source")
            continue
        imported.append((mount["mountPath"], json.loads(source[mount["subPath"]])))
    imported.sort()  # RabbitMQ imports a folder's files in name order
    users = [u["name"] for _, d in imported for u in d.get("users", [])]
    vhosts = [v["name"] for _, d in imported for v in d.get("vhosts", [])]
    if user not in users:
        problems.append(f"{where}: the definitions make no user {user!r} (INTAKE_AMQP_URL)")
    if vhost not in vhosts:
        problems.append(f"{where}: the definitions make no vhost {vhost!r} (INTAKE_AMQP_URL)")
    for index, (path, d) in enumerate(imported):
        for permission in d.get("permissions", []):
            before = [u["name"] for _, e in imported[: index + 1] for u in e.get("users", [])]
            if permission["user"] not in before:
                problems.append(f"{where}: {path} gives permissions to a user not yet imported")
    granted = {
        (p["user"], p["vhost"])
        for _, d in imported
        for p in d.get("permissions", [])
        if p["configure"] == p["write"] == p["read"] == ".*"
    }
    if (user, vhost) not in granted:
        problems.append(f"{where}: the definitions give {user!r} no full permissions on {vhost!r}")
    return problems


def postgresql_problems(manifests: list[Manifest], name: str, cluster: Doc) -> list[str]:
    """Three instances with synchronous replication, the Secret's URL pointing at its primary's
    Service, its database and owner, and room for every process's pool."""
    where = f"Cluster/{name}"
    spec = cluster["spec"]
    problems = []
    if spec.get("instances") != 3:
        problems.append(f"{where}: {spec.get('instances')} instances, not 3")
    sync = spec.get("postgresql", {}).get("synchronous", {})
    if sync.get("number", 0) < 1 or sync.get("dataDurability") != "required":
        problems.append(f"{where}: commits not synchronously replicated (postgresql.synchronous)")
    if spec.get("enablePDB") is False:
        problems.append(f"{where}: enablePDB false: drains could stop every instance")
    url = _url(manifests, "INTAKE_DATABASE_URL")
    if (url.hostname or "").split(".")[0] != f"{name}-rw":
        problems.append(f"{where}: INTAKE_DATABASE_URL names {url.hostname}, not {name}-rw")
    initdb = spec.get("bootstrap", {}).get("initdb", {})
    if initdb.get("database") != url.path[1:] or initdb.get("owner") != url.username:
        problems.append(
            f"{where}: initdb makes database {initdb.get('database')!r} owned by"
            f" {initdb.get('owner')!r}, INTAKE_DATABASE_URL wants {url.path[1:]!r}"
            f" of {url.username!r}"
        )
    secret = of_kind(manifests, "Secret").get(initdb.get("secret", {}).get("name"), {})
    if secret.get("type") != "kubernetes.io/basic-auth" or secret.get("stringData", {}).get(
        "username"
    ) != initdb.get("owner"):
        problems.append(f"{where}: initdb's secret is no basic-auth Secret of its owner")
    limit = int(spec.get("postgresql", {}).get("parameters", {}).get("max_connections", 100))
    budget = connection_budget(manifests)
    if limit < budget + 20:
        problems.append(
            f"{where}: max_connections {limit}, but the processes open up to {budget}"
            " (and the operator, the exporter and the Job need some)"
        )
    return problems


def ingress_problems(manifests: list[Manifest], name: str, ingress: Doc) -> list[str]:
    """HTTPS at the host of INTAKE_PUBLIC_BASE_URL, to a port of the edge's Service (no other
    process's: not the admin API's)."""
    where = f"Ingress/{name}"
    problems = []
    (config,) = [d for n, d in of_kind(manifests, "ConfigMap").items() if n == "intake-config"]
    host = urllib.parse.urlsplit(config["data"]["INTAKE_PUBLIC_BASE_URL"]).hostname
    tls_hosts = {
        h for t in ingress["spec"].get("tls", []) if t.get("secretName") for h in t["hosts"]
    }
    if host not in tls_hosts:
        problems.append(f"{where}: no TLS (with a secretName) for {host} (INTAKE_PUBLIC_BASE_URL)")
    services = of_kind(manifests, "Service")
    for rule in ingress["spec"].get("rules", []):
        if rule.get("host") != host:
            problems.append(f"{where}: rule for {rule.get('host')}, not {host}")
        for path in rule.get("http", {}).get("paths", []):
            backend = path["backend"]["service"]
            service = services.get(backend["name"])
            ports = {p.get("name") for p in (service or {}).get("spec", {}).get("ports", [])}
            if service is None or backend["port"].get("name") not in ports:
                problems.append(f"{where}: backend {backend} is no port of a Service of k8s/")
                continue
            for n, d in sorted(of_kind(manifests, "Deployment").items()):
                if _selects(service["spec"].get("selector", {}), d) and process(d) != "edge":
                    problems.append(f"{where}: backend {backend} reaches Deployment/{n}")
    return problems


def consistency_problems(manifests: list[Manifest]) -> list[str]:
    problems = coverage_problems(manifests) + secret_problems(manifests)
    problems += services_network_problems(manifests)
    settings_maps = {
        source["configMapRef"]["name"]
        for kind in ("Deployment", "Job")
        for d in of_kind(manifests, kind).values()
        for source in container(d).get("envFrom", [])
        if "configMapRef" in source
    }
    for name, configmap in of_kind(manifests, "ConfigMap").items():
        if name in settings_maps:
            problems += configmap_problems(name, configmap)
    for name, rabbitmq in of_kind(manifests, "RabbitmqCluster").items():
        problems += rabbitmq_problems(manifests, name, rabbitmq)
    for name, postgresql in of_kind(manifests, "Cluster").items():
        problems += postgresql_problems(manifests, name, postgresql)
    for name, ingress in of_kind(manifests, "Ingress").items():
        problems += ingress_problems(manifests, name, ingress)
    for name, deployment in of_kind(manifests, "Deployment").items():
        problems += deployment_problems(manifests, name, deployment)
    for name, so in of_kind(manifests, "ScaledObject").items():
        problems += scaled_object_problems(manifests, name, so)
    for name, hpa in of_kind(manifests, "HorizontalPodAutoscaler").items():
        problems += hpa_problems(manifests, name, hpa)
    for name, monitor in of_kind(manifests, "PodMonitor").items():
        problems += pod_monitor_problems(manifests, name, monitor)
    for kind in ("Service", "PodDisruptionBudget"):
        for name, doc in of_kind(manifests, kind).items():
            problems += service_problems(manifests, kind, name, doc)
    return problems


def all_problems(manifests: list[Manifest]) -> list[str]:
    """Everything this file checks, in one list."""
    return schema_problems(manifests) + consistency_problems(manifests)


# --- the manifests --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    return load()


def test_the_pinned_kubernetes_version_is_shipped() -> None:
    # kubernetes-validate falls back to an older version's schemas without a word: refuse that.
    assert KUBERNETES_VERSION in all_versions(), all_versions()


def test_builtin_kinds_validate_against_kubernetes(manifests: list[Manifest]) -> None:
    builtin = [m for m in manifests if not is_custom(m.doc)]
    assert {m.kind for m in builtin} >= {
        "Namespace",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
        "Job",
    }
    assert schema_problems(builtin) == []


def test_custom_resources_validate_against_their_crds(manifests: list[Manifest]) -> None:
    custom = [m for m in manifests if is_custom(m.doc)]
    assert {m.kind for m in custom} == {
        "ScaledObject",
        "TriggerAuthentication",
        "PodMonitor",
        "PrometheusRule",
        "RabbitmqCluster",
        "Cluster",
    }
    assert schema_problems(custom) == []


def test_every_process_serves_metrics_on_the_port_the_pod_monitor_scrapes(
    manifests: list[Manifest],
) -> None:
    # Spelled out, although consistency_problems covers it.
    monitor = of_kind(manifests, "PodMonitor")["intake"]
    names = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    assert names == {"metrics"}
    deployments = of_kind(manifests, "Deployment")
    assert {process(d) for d in deployments.values()} == {"edge", "admin", *WORKER_KINDS}
    for deployment in deployments.values():
        if process(deployment) == "admin":
            continue  # serves no metrics
        ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
        settings = effective_settings(manifests, deployment)
        assert ports["metrics"] == settings.metrics_port != 0
        assert settings.metrics_host not in LOOPBACK


def test_every_worker_has_both_probes_on_its_metrics_port(manifests: list[Manifest]) -> None:
    # Spelled out, although consistency_problems covers it.
    workers = {
        name: d
        for name, d in of_kind(manifests, "Deployment").items()
        if process(d) not in {"edge", "admin"}
    }
    assert {process(d) for d in workers.values()} == set(WORKER_KINDS)
    for deployment in workers.values():
        c = container(deployment)
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == 9464
        for probe, path in WORKER_PROBES:
            assert c[probe]["httpGet"] == {"path": path, "port": "metrics"}


def test_manifests_agree_with_the_code(manifests: list[Manifest]) -> None:
    assert consistency_problems(manifests) == []


def test_the_admin_api_is_apart_from_the_edge_and_not_behind_the_ingress(
    manifests: list[Manifest],
) -> None:
    # Spelled out, although consistency_problems covers it.
    deployments = of_kind(manifests, "Deployment")
    admin, edge = deployments["intake-admin"], deployments["intake-edge"]
    assert process(admin) == "admin"
    admin_port = effective_settings(manifests, admin).admin_port
    assert admin_port != effective_settings(manifests, edge).edge_port
    admin_services = {
        name
        for name, service in of_kind(manifests, "Service").items()
        if _selects(service["spec"]["selector"], admin)
    }
    assert admin_services == {"intake-admin"}
    backends = {
        path["backend"]["service"]["name"]
        for ingress in of_kind(manifests, "Ingress").values()
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert backends == {"intake-edge"}
    assert not backends & admin_services


def test_every_lane_and_the_persist_queue_has_a_scaled_object(manifests: list[Manifest]) -> None:
    # Spelled out, although consistency_problems covers it: the queues come from the topology.
    targets = {
        so["spec"]["scaleTargetRef"]["name"]: {
            trigger["metadata"]["queueName"] for trigger in so["spec"]["triggers"]
        }
        for so in of_kind(manifests, "ScaledObject").values()
    }
    deployments = of_kind(manifests, "Deployment")
    consumed = {process(deployments[name]): queues for name, queues in targets.items()}
    assert consumed == {
        "persist": {topology.PERSIST_QUEUE},
        "participation": {topology.TESTS_QUEUE, topology.JOINS_QUEUE},
        **{check.value: {topology.lane_queue(check)} for check in Check},
    }


def test_the_schema_is_migrated_by_a_job_the_persist_worker_waits_for(
    manifests: list[Manifest],
) -> None:
    jobs = of_kind(manifests, "Job")
    assert [j["spec"]["template"]["spec"]["containers"][0]["args"] for j in jobs.values()] == [
        ["migrate"]
    ]
    (job,) = jobs.values()
    # Its database URL from the Secret's file.
    assert secret_settings(job) == {"INTAKE_DATABASE_URL": (SECRETS, "INTAKE_DATABASE_URL")}
    persist = of_kind(manifests, "Deployment")["intake-worker-persist"]
    assert effective_settings(manifests, persist).persist_migrate is False
    # Its network: DNS and PostgreSQL out, nothing in.
    assert (
        network_problems(
            manifests, "Job/intake-migrate", job, effective_settings(manifests, job), "migrate"
        )
        == []
    )


def test_kustomization_uses_every_manifest() -> None:
    files = {p.resolve() for p in K8S.rglob("*.yaml") if not p.name.endswith(".example.yaml")}
    assert kustomize.sources(K8S) == files
    assert not any(p.name.endswith(".example.yaml") for p in kustomize.sources(K8S))


def test_every_worker_kind_is_one_kustomization_of_the_worker_base() -> None:
    workers = K8S / "workers"
    kinds = {p.name for p in workers.iterdir() if p.is_dir()}
    assert kinds == {*WORKER_KINDS, "base", "autoscaled", "ministry"}
    for kind in WORKER_KINDS:
        kustomization = yaml.safe_load((workers / kind / "kustomization.yaml").read_text())
        assert kustomization["resources"] == ["../base"], kind
        assert kustomization["nameSuffix"] == f"-{kind}"
        (deployment,) = [d for d in kustomize.build(workers / kind) if d["kind"] == "Deployment"]
        assert deployment["metadata"]["name"] == f"intake-worker-{kind}"
        assert argv(deployment) == ["intake", "worker", kind]


def test_every_service_runs_three_replicated_members(manifests: list[Manifest]) -> None:
    # Spelled out, although consistency_problems covers it.
    (rabbitmq,) = of_kind(manifests, "RabbitmqCluster").values()
    assert rabbitmq["spec"]["replicas"] == 3
    (postgresql,) = of_kind(manifests, "Cluster").values()
    assert postgresql["spec"]["instances"] == 3
    assert postgresql["spec"]["postgresql"]["synchronous"]["number"] >= 1
    assert int(postgresql["spec"]["postgresql"]["parameters"]["max_connections"]) > (
        connection_budget(manifests)
    )
    # The budget config.yaml states (about 350), from the autoscalers' maxima.
    assert 300 < connection_budget(manifests) < 400


# --- the rules and dashboards generated from monitoring/ -------------------------------------


def test_the_generated_monitoring_resources_are_current() -> None:
    assert monitoring_k8s.stale(K8S) == [], "stale: run `make k8s-generate`"


def test_a_stale_generated_file_is_reported(tmp_path: Path) -> None:
    for name, text in monitoring_k8s.render().items():
        (tmp_path / name).write_text(text)
    assert monitoring_k8s.stale(tmp_path) == []
    rules = tmp_path / monitoring_k8s.RULES_FILE
    rules.write_text(rules.read_text().replace("for: 5m", "for: 10m", 1))
    (tmp_path / monitoring_k8s.DASHBOARDS_FILE).unlink()
    assert sorted(monitoring_k8s.stale(tmp_path)) == sorted(
        [rules, tmp_path / monitoring_k8s.DASHBOARDS_FILE]
    )
    assert monitoring_k8s.main(["--check", "--directory", str(tmp_path)]) == 1
    assert monitoring_k8s.main(["--directory", str(tmp_path)]) == 0
    assert monitoring_k8s.stale(tmp_path) == []


def test_the_cluster_gets_the_rules_and_dashboards_of_monitoring(
    manifests: list[Manifest],
) -> None:
    monitoring = ROOT / "monitoring"
    groups = []
    for name in ("recording.yml", "alerts.yml"):
        groups += yaml.safe_load((monitoring / "rules" / name).read_text())["groups"]
    (rule,) = of_kind(manifests, "PrometheusRule").values()
    assert rule["spec"]["groups"] == groups
    dashboards = of_kind(manifests, "ConfigMap")["intake-grafana-dashboards"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards["data"] == {
        path.name: path.read_text()
        for path in sorted((monitoring / "grafana" / "dashboards").glob("*.json"))
    }


# --- checkov ----------------------------------------------------------------------------------

TOOLS = ROOT / ".venv-tools"
README = K8S / "README.md"


def checkov_version() -> str:
    """The version scripts/setup.sh pins."""
    found = re.search(r"^CHECKOV_VERSION=(\S+)$", (ROOT / "scripts/setup.sh").read_text(), re.M)
    assert found, "scripts/setup.sh pins no CHECKOV_VERSION"
    return found.group(1)


def checkov(build: str, tmp_path: Path) -> Doc:
    """checkov's report (JSON) on rendered manifests: the Kubernetes checks, offline."""
    binary = TOOLS / "bin" / "checkov"
    command = str(binary) if binary.is_file() else shutil.which("checkov")
    assert command, "checkov not found: `make setup` installs it into .venv-tools"
    path = tmp_path / "k8s.yaml"
    path.write_text(build)
    done = subprocess.run(
        [command, "-f", str(path), "--framework", "kubernetes", "-o", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stderr
    report: Doc = json.loads(done.stdout)
    assert report["summary"]["checkov_version"] == checkov_version()
    return report


def readme_justified() -> set[str]:
    """The checkov check ids k8s/README.md's checkov table justifies."""
    section = README.read_text().partition("\n## checkov")[2].partition("\n## ")[0]
    return set(re.findall(r"^\| `(CKV_K8S_\d+)` \|", section, re.M))


def test_checkov_finds_nothing_unjustified(tmp_path: Path) -> None:
    report = checkov(kustomize.build_text(K8S), tmp_path)
    results, summary = report["results"], report["summary"]
    failed = [
        f"{r['check_id']} {r['resource']}: {r['check_name']}" for r in results["failed_checks"]
    ]
    assert failed == []
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 500
    # Every check skipped in a manifest (checkov.io/skipN annotations) is justified in the
    # README's table, and the table justifies nothing that is not skipped.
    skipped = {r["check_id"] for r in results["skipped_checks"]}
    assert skipped == readme_justified()


def test_checkov_reports_a_finding(tmp_path: Path) -> None:
    # The edge without its pull policy: the check the manifests pass now fails.
    docs = kustomize.build(K8S)
    (edge,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "intake-edge"
    ]
    container(edge).pop("imagePullPolicy")
    report = checkov(yaml.safe_dump_all(docs), tmp_path)
    failed = {(r["check_id"], r["resource"]) for r in report["results"]["failed_checks"]}
    assert failed == {("CKV_K8S_15", "Deployment.intake.intake-edge")}


# --- the checks can fail --------------------------------------------------------------------


def _edit(kind: str, name: str, change: Callable[[Doc], object]) -> list[Manifest]:
    """The manifests with one document changed (a deep copy: the files stay as they are)."""
    edited = []
    hit = False
    for m in load():
        doc = copy.deepcopy(m.doc)
        if m.kind == kind and m.name == name:
            change(doc)
            hit = True
        edited.append(Manifest(m.file, doc))
    assert hit, f"no {kind}/{name} in k8s/"
    return edited


def _rename(mapping: Doc, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def _trigger(doc: Doc) -> Doc:
    metadata: Doc = doc["spec"]["triggers"][0]["metadata"]
    return metadata


def _env(doc: Doc, name: str) -> Doc:
    """The env entry ``name`` of a workload's container."""
    envs: list[Doc] = container(doc)["env"]
    (env,) = [e for e in envs if e["name"] == name]
    return env


def _replace_env(doc: Doc, name: str, new: Doc) -> None:
    envs = container(doc)["env"]
    envs[envs.index(_env(doc, name))] = new


def _secret_volume(doc: Doc) -> Doc:
    """The Secret volume of a workload's pod (the one of intake-secrets)."""
    (volume,) = [v for v in pod_spec(doc)["volumes"] if "secret" in v]
    secret: Doc = volume["secret"]
    return secret


def _secret_mount(doc: Doc) -> Doc:
    mounts: list[Doc] = container(doc)["volumeMounts"]
    (mount,) = [m for m in mounts if m["name"] == "secrets"]
    return mount


SECRET_KEY_REF = {
    "name": "INTAKE_SECRET_KEY",
    "valueFrom": {"secretKeyRef": {"name": "intake-secrets", "key": "INTAKE_SECRET_KEY"}},
}
DATABASE_URL_REF = {
    "name": "INTAKE_DATABASE_URL",
    "valueFrom": {"secretKeyRef": {"name": "intake-secrets", "key": "INTAKE_DATABASE_URL"}},
}


BROKEN: list[tuple[str, str, str, Callable[[Doc], object], str]] = [
    # (what, kind, name, change, a fragment of the expected problem)
    (
        "misspelled ScaledObject field",
        "ScaledObject",
        "intake-worker-dukcapil",
        lambda d: _rename(d["spec"], "maxReplicaCount", "maxReplicaCont"),
        "'maxReplicaCont' was unexpected",
    ),
    (
        "misspelled HPA behavior field in a ScaledObject",
        "ScaledObject",
        "intake-worker-photo",
        lambda d: _rename(
            d["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
            "scaleDown",
            "scaledown",
        ),
        "'scaledown' was unexpected",
    ),
    (
        "wrong queue name",
        "ScaledObject",
        "intake-worker-dukcapil",
        lambda d: _trigger(d).update(queueName="intake.verify.dukcapl"),
        "queueName 'intake.verify.dukcapl'",
    ),
    (
        "another worker's queue",
        "ScaledObject",
        "intake-worker-persist",
        lambda d: _trigger(d).update(queueName=topology.lane_queue(Check.EMAIL)),
        "`intake worker persist` consumes ['intake.registrations']",
    ),
    (
        "misspelled trigger parameter",
        "ScaledObject",
        "intake-worker-email",
        lambda d: _rename(_trigger(d), "queueName", "queuName"),
        "'queuName' is no rabbitmq scaler parameter",
    ),
    (
        "a target that is not a number",
        "ScaledObject",
        "intake-worker-phone",
        lambda d: _trigger(d).update(value="lots"),
        "value 'lots'",
    ),
    (
        "unknown scale target",
        "ScaledObject",
        "intake-worker-dtks",
        lambda d: d["spec"]["scaleTargetRef"].update(name="intake-worker-dtk"),
        "not a Deployment of k8s/",
    ),
    (
        "no scale-down behaviour",
        "ScaledObject",
        "intake-worker-dapodik",
        lambda d: d["spec"].pop("advanced"),
        "no gradual scale-down",
    ),
    (
        "unknown TriggerAuthentication field",
        "TriggerAuthentication",
        "intake-rabbitmq",
        lambda d: d["spec"]["secretTargetRef"][0].update(parameter_="host"),
        "'parameter_' was unexpected",
    ),
    (
        "misspelled Deployment field",
        "Deployment",
        "intake-worker-persist",
        lambda d: _rename(
            d["spec"]["template"]["spec"],
            "terminationGracePeriodSeconds",
            "terminationGracePeriodSecond",
        ),
        "terminationGracePeriodSecond",
    ),
    (
        "a port that is not a number",
        "Service",
        "intake-edge",
        lambda d: d["spec"]["ports"][0].update(port="eighty"),
        "spec.ports.0.port",
    ),
    (
        "a Service selecting nothing",
        "Service",
        "intake-edge",
        lambda d: d["spec"]["selector"].update({"app.kubernetes.io/component": "egde"}),
        "picks the pods of no Deployment",
    ),
    (
        "a Service sending to a port the edge does not open",
        "Service",
        "intake-edge",
        lambda d: d["spec"]["ports"][0].update(targetPort="https"),
        "targetPort 'https' is no port of its pods",
    ),
    (
        "a Deployment whose selector misses its pods",
        "Deployment",
        "intake-worker-dispatch",
        lambda d: d["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "dispatch"}
        ),
        "its selector does not match its pod template's labels",
    ),
    (
        "unknown worker kind",
        "Deployment",
        "intake-worker-dukcapil",
        lambda d: container(d).update(args=["worker", "dukcapl"]),
        "not `intake edge`, `intake admin` nor `intake worker <kind>`",
    ),
    (
        "replicas under KEDA",
        "Deployment",
        "intake-worker-email",
        lambda d: d["spec"].update(replicas=3),
        "sets replicas, which KEDA owns",
    ),
    (
        "a lane killed before it drained",
        "Deployment",
        "intake-worker-dtks",
        lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=10),
        "leaves no time for the lane's 30 s drain",
    ),
    (
        "readiness on a route the edge does not serve",
        "Deployment",
        "intake-edge",
        lambda d: container(d)["readinessProbe"]["httpGet"].update(path="/ready"),
        "readinessProbe must GET /readyz",
    ),
    (
        "a worker's liveness on the wrong path",
        "Deployment",
        "intake-worker-persist",
        lambda d: container(d)["livenessProbe"]["httpGet"].update(path="/readyz"),
        "intake-worker-persist: livenessProbe must GET /healthz",
    ),
    (
        "a worker without readiness",
        "Deployment",
        "intake-worker-dispatch",
        lambda d: container(d).pop("readinessProbe"),
        "intake-worker-dispatch: readinessProbe must GET /readyz",
    ),
    (
        "a worker's probe on another port",
        "Deployment",
        "intake-worker-photo",
        lambda d: container(d)["readinessProbe"]["httpGet"].update(port=8080),
        "intake-worker-photo: readinessProbe must be on the port `metrics`",
    ),
    (
        "an env name that is no setting",
        "Deployment",
        "intake-worker-photo",
        lambda d: container(d)["env"].append({"name": "INTAKE_PHOTO_WORKER", "value": "2"}),
        "env INTAKE_PHOTO_WORKER is not a setting",
    ),
    (
        "photo lane without the blob volume",
        "Deployment",
        "intake-worker-photo",
        lambda d: container(d).update(
            volumeMounts=[m for m in container(d)["volumeMounts"] if m["name"] != "blobs"]
        ),
        "no volume claim mounted at INTAKE_BLOB_DIR",
    ),
    (
        "the admin API without the blob volume (a person's photos)",
        "Deployment",
        "intake-admin",
        lambda d: container(d).update(
            volumeMounts=[m for m in container(d)["volumeMounts"] if m["name"] != "blobs"]
        ),
        "Deployment/intake-admin: no volume claim mounted at INTAKE_BLOB_DIR",
    ),
    (
        "the retention job without the later master secrets",
        "CronJob",
        "intake-retention",
        lambda d: container(d)["env"].remove(_env(d, "INTAKE_SECRET_KEYS_FILE")),
        "CronJob/intake-retention: does not take INTAKE_SECRET_KEYS from the Secret",
    ),
    (
        "a worker without the later master secrets",
        "Deployment",
        "intake-worker-persist",
        lambda d: container(d)["env"].remove(_env(d, "INTAKE_SECRET_KEYS_FILE")),
        "Deployment/intake-worker-persist: does not take INTAKE_SECRET_KEYS from the Secret",
    ),
    (
        "a ConfigMap name that is no setting",
        "ConfigMap",
        "intake-config",
        lambda d: d["data"].update(INTAKE_EDGE_PORTT="8080"),
        "INTAKE_EDGE_PORTT is not a setting",
    ),
    (
        "a ConfigMap value of the wrong type",
        "ConfigMap",
        "intake-config",
        lambda d: d["data"].update(INTAKE_LANE_PREFETCH="many"),
        "INTAKE_LANE_PREFETCH: not a valid int",
    ),
    (
        "a Secret key nobody provides",
        "TriggerAuthentication",
        "intake-rabbitmq",
        lambda d: d["spec"]["secretTargetRef"][0].update(key="AMQP_URL"),
        "has no key 'AMQP_URL'",
    ),
    (
        "misspelled PodMonitor field",
        "PodMonitor",
        "intake",
        lambda d: _rename(d["spec"], "podMetricsEndpoints", "podMetricEndpoints"),
        "'podMetricEndpoints' was unexpected",
    ),
    (
        "a PodMonitor scraping a port the pods do not name",
        "PodMonitor",
        "intake",
        lambda d: d["spec"]["podMetricsEndpoints"][0].update(port="metric"),
        "port 'metric' is no named port of Deployment/intake-edge",
    ),
    (
        "a PodMonitor missing some pods",
        "PodMonitor",
        "intake",
        lambda d: d["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "edge"}
        ),
        "misses the pods of Deployment/intake-worker-persist",
    ),
    (
        "a worker without its metrics port",
        "Deployment",
        "intake-worker-dtks",
        lambda d: container(d).pop("ports"),
        "port 'metrics' is no named port of Deployment/intake-worker-dtks",
    ),
    (
        "a metrics port that is not where the process serves",
        "Deployment",
        "intake-worker-email",
        lambda d: container(d)["ports"][0].update(containerPort=9465),
        "serves /metrics on INTAKE_METRICS_PORT 9464",
    ),
    (
        "metrics on loopback",
        "ConfigMap",
        "intake-config",
        lambda d: d["data"].update(INTAKE_METRICS_HOST="127.0.0.1"),
        "unreachable from Prometheus",
    ),
    (
        "metrics on the edge's public port",
        "Deployment",
        "intake-edge",
        lambda d: container(d)["env"].append({"name": "INTAKE_METRICS_PORT", "value": "8080"}),
        "INTAKE_METRICS_PORT is the public port 8080",
    ),
    (
        "HPA on a worker",
        "HorizontalPodAutoscaler",
        "intake-edge",
        lambda d: d["spec"]["scaleTargetRef"].update(name="intake-worker-persist"),
        "not the edge Deployment",
    ),
    (
        "a worker's disruption budget that blocks drains",
        "PodDisruptionBudget",
        "intake-worker-dispatch",
        lambda d: d["spec"].update(minAvailable=1),
        "intake-worker-dispatch: its PodDisruptionBudget must set maxUnavailable: 1",
    ),
    (
        "a disruption budget for another role",
        "PodDisruptionBudget",
        "intake-worker-photo",
        lambda d: d["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "worker-phone"}
        ),
        "intake-worker-photo: 0 PodDisruptionBudgets select its pods",
    ),
    (
        "the email lane cut off from its SMTP relay",
        "NetworkPolicy",
        "intake-smtp-out",
        lambda d: d["spec"]["egress"][0]["ports"][0].update(port=587),
        "intake-worker-email: no NetworkPolicy lets it reach port 25/TCP",
    ),
    (
        "the photo lane let out to the internet",
        "NetworkPolicy",
        "intake-https-out",
        lambda d: d["spec"]["podSelector"]["matchExpressions"][0]["values"].append("worker-photo"),
        "intake-worker-photo: a NetworkPolicy lets it reach (443, 'TCP'), which it never calls",
    ),
    (
        "a broker of one node",
        "RabbitmqCluster",
        "rabbitmq",
        lambda d: d["spec"].update(replicas=1),
        "RabbitmqCluster/rabbitmq: 1 replicas, not 3",
    ),
    (
        "misspelled RabbitmqCluster field",
        "RabbitmqCluster",
        "rabbitmq",
        lambda d: _rename(d["spec"], "persistence", "persistance"),
        "'persistance' was unexpected",
    ),
    (
        "no definitions imported",
        "RabbitmqCluster",
        "rabbitmq",
        lambda d: d["spec"]["rabbitmq"].update(additionalConfig=""),
        "no load_definitions in additionalConfig",
    ),
    (
        "definitions without the user's permissions",
        "ConfigMap",
        "rabbitmq-definitions",
        lambda d: d["data"].update({"definitions.json": '{"vhosts": [{"name": "intake"}]}'}),
        "the definitions give 'intake' no full permissions on 'intake'",
    ),
    (
        "definitions of another vhost",
        "ConfigMap",
        "rabbitmq-definitions",
        lambda d: d["data"].update(
            {"definitions.json": d["data"]["definitions.json"].replace('"intake"}', '"/"}')}
        ),
        "the definitions make no vhost 'intake'",
    ),
    (
        "a database of one instance",
        "Cluster",
        "postgresql",
        lambda d: d["spec"].update(instances=1),
        "Cluster/postgresql: 1 instances, not 3",
    ),
    (
        "asynchronous replication",
        "Cluster",
        "postgresql",
        lambda d: d["spec"]["postgresql"].pop("synchronous"),
        "commits not synchronously replicated",
    ),
    (
        "misspelled CloudNativePG field",
        "Cluster",
        "postgresql",
        lambda d: _rename(d["spec"], "bootstrap", "boostrap"),
        "'boostrap' was unexpected",
    ),
    (
        "too few PostgreSQL connections",
        "Cluster",
        "postgresql",
        lambda d: d["spec"]["postgresql"]["parameters"].update(max_connections="100"),
        "max_connections 100, but the processes open up to",
    ),
    (
        "another database than the URL's",
        "Cluster",
        "postgresql",
        lambda d: d["spec"]["bootstrap"]["initdb"].update(database="app"),
        "initdb makes database 'app'",
    ),
    (
        "misspelled PrometheusRule field",
        "PrometheusRule",
        "intake",
        lambda d: _rename(d["spec"], "groups", "group"),
        "'group' was unexpected",
    ),
    (
        "RabbitMQ's management API open to the processes",
        "NetworkPolicy",
        "rabbitmq",
        lambda d: d["spec"]["ingress"][0]["ports"].append({"port": 15672}),
        "is let in on [(5672, 'TCP'), (15672, 'TCP')]",
    ),
    (
        "RabbitMQ nodes cut off from each other",
        "NetworkPolicy",
        "rabbitmq",
        lambda d: d["spec"]["egress"].pop(1),
        "RabbitmqCluster/rabbitmq: no NetworkPolicy lets it reach port 25672/TCP",
    ),
    (
        "KEDA unable to read queue lengths",
        "NetworkPolicy",
        "rabbitmq",
        lambda d: d["spec"]["ingress"][0]["from"].pop(1),
        "RabbitmqCluster/rabbitmq: KEDA's operator is not let in on 5672/TCP",
    ),
    (
        "CloudNativePG's operator shut out",
        "NetworkPolicy",
        "postgresql",
        lambda d: d["spec"]["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"].update(
            {"kubernetes.io/metadata.name": "cnpg"}
        ),
        "Cluster/postgresql: the operator is not let in on 8000/TCP",
    ),
    (
        "PostgreSQL's metrics open to the processes",
        "NetworkPolicy",
        "postgresql",
        lambda d: d["spec"]["ingress"][0]["ports"].append({"port": 9187}),
        "is let in on [(5432, 'TCP'), (9187, 'TCP')], not 5432",
    ),
    (
        "a broker budget that blocks drains",
        "PodDisruptionBudget",
        "rabbitmq",
        lambda d: d["spec"].update(minAvailable=3),
        "RabbitmqCluster/rabbitmq's budget must set maxUnavailable: 1",
    ),
    (
        "a broker PodMonitor on a port the nodes do not name",
        "PodMonitor",
        "rabbitmq",
        lambda d: d["spec"]["podMetricsEndpoints"][0].update(port="metrics"),
        "port 'metrics' is no named port of RabbitmqCluster/rabbitmq's pods",
    ),
    (
        "an ingress for another host",
        "Ingress",
        "intake-edge",
        lambda d: d["spec"]["tls"][0].update(hosts=["daftar.example"]),
        "no TLS (with a secretName) for daftar.prakerja.example",
    ),
    (
        "an ingress to a port the Service lacks",
        "Ingress",
        "intake-edge",
        lambda d: d["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(
            port={"name": "https"}
        ),
        "is no port of a Service of k8s/",
    ),
    (
        "the admin API behind the ingress",
        "Ingress",
        "intake-edge",
        lambda d: d["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(
            name="intake-admin"
        ),
        "reaches Deployment/intake-admin",
    ),
    (
        "the admin API open to every pod of the namespace",
        "NetworkPolicy",
        "intake-admin",
        lambda d: d["spec"]["ingress"][0].pop("from"),
        "intake-admin: another pod of the namespace let in on [(8081, 'TCP')]",
    ),
    (
        "the admin API probed over HTTP",
        "Deployment",
        "intake-admin",
        lambda d: container(d).update(readinessProbe={"httpGet": {"path": "/", "port": "http"}}),
        "intake-admin: readinessProbe must connect (tcpSocket) to INTAKE_ADMIN_PORT 8081",
    ),
    (
        "a worker with the admin credentials",
        "Deployment",
        "intake-worker-email",
        lambda d: container(d)["env"].append(
            {
                "name": "INTAKE_ADMIN_TOKENS_FILE",
                "value": "/var/run/secrets/intake/INTAKE_ADMIN_TOKENS",
            }
        ),
        "intake-worker-email: takes INTAKE_ADMIN_TOKENS, which it has no use for",
    ),
    (
        "no default deny",
        "NetworkPolicy",
        "default-deny",
        lambda d: d["spec"].update(policyTypes=["Ingress"]),
        "no NetworkPolicy denies everything in the namespace by default",
    ),
    (
        "the edge's HTTP port closed",
        "NetworkPolicy",
        "intake-edge",
        lambda d: d["spec"]["ingress"][0]["ports"][0].update(port="metrics"),
        "intake-edge: no NetworkPolicy lets in port 8080/TCP",
    ),
    (
        "the secret key back in the environment",
        "Deployment",
        "intake-edge",
        lambda d: _replace_env(d, "INTAKE_SECRET_KEY_FILE", SECRET_KEY_REF),
        "Deployment/intake-edge: env INTAKE_SECRET_KEY takes the key 'INTAKE_SECRET_KEY' of the"
        " Secret 'intake-secrets' through secretKeyRef",
    ),
    (
        "the Job's database URL back in the environment",
        "Job",
        "intake-migrate",
        lambda d: _replace_env(d, "INTAKE_DATABASE_URL_FILE", DATABASE_URL_REF),
        "Job/intake-migrate: env INTAKE_DATABASE_URL takes the key 'INTAKE_DATABASE_URL'",
    ),
    (
        "the whole Secret in the environment",
        "Deployment",
        "intake-worker-email",
        lambda d: container(d)["envFrom"].append({"secretRef": {"name": "intake-secrets"}}),
        "intake-worker-email: envFrom the Secret 'intake-secrets' puts secrets in the environment",
    ),
    (
        "a secret's file outside the Secret's volume",
        "Deployment",
        "intake-worker-persist",
        lambda d: _env(d, "INTAKE_DATABASE_URL_FILE").update(value="/etc/intake/database-url"),
        "INTAKE_DATABASE_URL_FILE '/etc/intake/database-url' is no file of a Secret volume",
    ),
    (
        "a secret's file of a key the Secret lacks",
        "Deployment",
        "intake-worker-dispatch",
        lambda d: _env(d, "INTAKE_AMQP_URL_FILE").update(
            value="/var/run/secrets/intake/INTAKE_AMQP_URI"
        ),
        "Deployment/intake-worker-dispatch: Secret 'intake-secrets' has no key 'INTAKE_AMQP_URI'",
    ),
    (
        "a setting read from another setting's key",
        "Deployment",
        "intake-edge",
        lambda d: _env(d, "INTAKE_AMQP_URL_FILE").update(
            value="/var/run/secrets/intake/INTAKE_DATABASE_URL"
        ),
        "INTAKE_AMQP_URL_FILE reads the key 'INTAKE_DATABASE_URL' of the Secret 'intake-secrets',"
        " not 'INTAKE_AMQP_URL'",
    ),
    (
        "a process without its database URL",
        "Deployment",
        "intake-worker-dtks",
        lambda d: container(d)["env"].remove(_env(d, "INTAKE_DATABASE_URL_FILE")),
        "intake-worker-dtks: does not take INTAKE_DATABASE_URL from the Secret 'intake-secrets'",
    ),
    (
        "the Job without the Secret's volume",
        "Job",
        "intake-migrate",
        lambda d: pod_spec(d)["volumes"].remove({"name": "secrets", "secret": _secret_volume(d)}),
        "Job/intake-migrate: INTAKE_DATABASE_URL_FILE '/var/run/secrets/intake/"
        "INTAKE_DATABASE_URL' is no file of a Secret volume the container mounts",
    ),
    (
        "another Secret mounted",
        "Deployment",
        "intake-worker-phone",
        lambda d: _secret_volume(d).update(secretName="rabbitmq-users"),
        "intake-worker-phone: does not take INTAKE_SECRET_KEY from the Secret 'intake-secrets'",
    ),
    (
        "a Secret's items that leave a setting's file out",
        "Deployment",
        "intake-worker-persist",
        lambda d: _secret_volume(d).update(
            items=[{"key": "INTAKE_DATABASE_URL", "path": "INTAKE_DATABASE_URL"}]
        ),
        "INTAKE_AMQP_URL_FILE '/var/run/secrets/intake/INTAKE_AMQP_URL' is no file of a Secret",
    ),
    (
        "the Secret's files unreadable without fsGroup",
        "Job",
        "intake-migrate",
        lambda d: pod_spec(d)["securityContext"].pop("fsGroup"),
        "Job/intake-migrate: /var/run/secrets/intake/INTAKE_DATABASE_URL (mode 0440) is not"
        " readable by the container's user",
    ),
    (
        "the Secret's files readable by their owner only",
        "Deployment",
        "intake-edge",
        lambda d: _secret_volume(d).update(defaultMode=0o400),
        "/var/run/secrets/intake/INTAKE_SECRET_KEY (mode 0400) is not readable",
    ),
    (
        "the Secret mounted writable",
        "Deployment",
        "intake-worker-dukcapil",
        lambda d: _secret_mount(d).pop("readOnly"),
        "intake-worker-dukcapil: the Secret 'intake-secrets' is mounted writable",
    ),
    (
        "an optional Secret",
        "Deployment",
        "intake-worker-dapodik",
        lambda d: _secret_volume(d).update(optional=True),
        "the Secret 'intake-secrets' is an optional volume",
    ),
    (
        "a secret both from its file and from a value",
        "Deployment",
        "intake-edge",
        lambda d: container(d)["env"].append({"name": "INTAKE_SECRET_KEY", "value": "k" * 40}),
        "Deployment/intake-edge: INTAKE_SECRET_KEY and INTAKE_SECRET_KEY_FILE are both set",
    ),
]


@pytest.mark.parametrize(
    ("kind", "name", "change", "expected"),
    [
        pytest.param(kind, name, change, expected, id=what)
        for what, kind, name, change, expected in BROKEN
    ],
)
def test_a_broken_manifest_is_reported(
    kind: str, name: str, change: Callable[[Doc], object], expected: str
) -> None:
    found = all_problems(_edit(kind, name, change))
    assert any(expected in p for p in found), found


def test_a_lane_without_scaled_object_is_reported() -> None:
    edited = [
        m for m in load() if not (m.kind == "ScaledObject" and m.name == "intake-worker-dtks")
    ]
    assert f"no ScaledObject scales on {topology.lane_queue(Check.DTKS)}" in all_problems(edited)


def test_a_broker_without_budget_or_monitor_is_reported() -> None:
    edited = [
        m
        for m in load()
        if not (m.kind in {"PodDisruptionBudget", "PodMonitor"} and m.name == "rabbitmq")
    ]
    found = all_problems(edited)
    assert "no PodDisruptionBudget for the pods of RabbitmqCluster/rabbitmq" in found
    assert "no PodMonitor scrapes the pods of RabbitmqCluster/rabbitmq" in found


def test_an_older_kubernetes_refuses_what_it_lacks() -> None:
    # The edge against schemas from before the preStop sleep action (1.29): the pinned
    # version is what makes it valid.
    older = [v for v in all_versions() if tuple(map(int, v.split(".")[:2])) < (1, 29)]
    assert older, "kubernetes-validate ships schemas from 1.25 on"
    edge = of_kind(load(), "Deployment")["intake-edge"]
    assert builtin_problems(edge, KUBERNETES_VERSION) == []
    assert any("'sleep' was unexpected" in p for p in builtin_problems(edge, older[-1]))


def test_a_secret_mounted_by_items_or_sub_path_is_followed() -> None:
    # The other ways of mounting a Secret's key as a file: an `items` entry naming its path,
    # a `subPath` mount of the one file. The edge's secret settings through both still check.
    def remount(edge: Doc) -> None:
        _secret_volume(edge)["items"] = [
            {"key": "INTAKE_AMQP_URL", "path": "broker/url"},
            {"key": "INTAKE_DATABASE_URL", "path": "database-url", "mode": 0o440},
            {"key": "INTAKE_SECRET_KEYS", "path": "keys/later"},
        ]
        _env(edge, "INTAKE_SECRET_KEYS_FILE")["value"] = "/var/run/secrets/intake/keys/later"
        _env(edge, "INTAKE_AMQP_URL_FILE")["value"] = "/var/run/secrets/intake/broker/url"
        _env(edge, "INTAKE_DATABASE_URL_FILE")["value"] = "/var/run/secrets/intake/database-url"
        container(edge)["volumeMounts"].append(
            {
                "name": "secrets-key",
                "mountPath": "/etc/intake/secret-key",
                "subPath": "key",
                "readOnly": True,
            }
        )
        pod_spec(edge)["volumes"].append(
            {
                "name": "secrets-key",
                "secret": {
                    "secretName": "intake-secrets",
                    "items": [{"key": "INTAKE_SECRET_KEY", "path": "key"}],
                    "defaultMode": 0o440,
                },
            }
        )
        _env(edge, "INTAKE_SECRET_KEY_FILE")["value"] = "/etc/intake/secret-key"

    edited = _edit("Deployment", "intake-edge", remount)
    edge = of_kind(edited, "Deployment")["intake-edge"]
    assert secret_settings(edge) == {
        key: (SECRETS, key)
        for key in (
            "INTAKE_SECRET_KEY",
            "INTAKE_SECRET_KEYS",
            "INTAKE_AMQP_URL",
            "INTAKE_DATABASE_URL",
        )
    }
    assert consistency_problems(edited) == []
    # A path beside the items' is no file.
    _env(edge, "INTAKE_AMQP_URL_FILE")["value"] = "/var/run/secrets/intake/INTAKE_AMQP_URL"
    assert "INTAKE_AMQP_URL" not in secret_settings(edge)
