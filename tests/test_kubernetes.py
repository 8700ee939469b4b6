"""The Kubernetes manifests (deploy/kubernetes/) without a cluster: every document's fields
checked against the Kubernetes API's own models (the official Python client's, offline),
the invariants between the manifests, the gateway's config in the ConfigMap, the admin API
and the Dockerfile, and the ConfigMap's config run for real by ``hagw run`` with workers:
its probes answer, and a SIGTERM ends it well within the pod's grace period.

``kubectl kustomize`` renders the kustomization when kubectl is here; it is optional (no
Debian package), so that test skips without it, CI included."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes.client
import pytest
import yaml
from kubernetes.client import ApiClient

from bench.processes import free_port
from gateway.app.admin import openapi
from gateway.config import GatewayConfig, parse_config
from gateway.units import parse_duration
from tests.conftest import TOKEN

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"

pytestmark = pytest.mark.timeout(90)


def documents() -> dict[str, list[dict[str, Any]]]:
    """Every YAML document of every manifest, by file name."""
    return {path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
            for path in sorted(MANIFESTS.glob("*.yaml"))}


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for file, docs in documents().items() if file != "kustomization.yaml"
             for doc in docs if doc["kind"] == kind
             and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def gateway_config() -> tuple[str, GatewayConfig]:
    text = the("ConfigMap", "hagw-config")["data"]["gateway.yaml"]
    return text, parse_config(text, "configmap.yaml", env={"HAGW_ADMIN_TOKEN": "x"})


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = the("StatefulSet", "hagw")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod()["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def port(name: str) -> int:
    return next(int(p["containerPort"]) for p in container()["ports"] if p["name"] == name)


# -- the Kubernetes API's schema -------------------------------------------------------------


def check_fields(value: Any, type_name: str, path: str) -> list[str]:
    """Field names and nesting against the client's models (``attribute_map``), which the
    client itself ignores when they are unknown: a typo would pass ``kubectl apply`` only
    to be dropped by the API server (or refused, with strict field validation)."""
    if type_name.lower().startswith("list["):  # List[V1Container] (list[...] before v35)
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, item in enumerate(value)
                for p in check_fields(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.lower().startswith(("dict[", "dict(")):  # Dict[str, str]
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        inner = type_name[5:-1].split(", ", 1)[1]
        return [p for key, item in value.items()
                for p in check_fields(item, inner, f"{path}.{key}")]
    model = getattr(kubernetes.client, type_name, None)
    if model is None:  # str, int, bool, object (int-or-string), datetime...
        return []
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping, found {value!r}"]
    names = {wire: attr for attr, wire in model.attribute_map.items()}
    problems = [f"{path}.{key}: no such field in {type_name}" for key in value
                if key not in names]
    return problems + [p for key, item in value.items() if key in names
                       for p in check_fields(item, model.openapi_types[names[key]],
                                             f"{path}.{key}")]


def test_the_field_check_catches_typos_and_misplaced_fields() -> None:
    sts = documents()["statefulset.yaml"][0]
    spec = sts["spec"]["template"]["spec"]
    spec["containers"][0]["readinesProbe"] = {}
    spec["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    spec["containers"][0]["enableServiceLinks"] = False  # a pod field, not a container's
    prefix = "x.spec.template.spec.containers[0]"
    assert check_fields(sts, "V1StatefulSet", "x") == [
        f"{prefix}.readinesProbe: no such field in V1Container",
        f"{prefix}.enableServiceLinks: no such field in V1Container",
        f"{prefix}.securityContext.readOnlyRootFS: no such field in V1SecurityContext"]


def model_name(doc: dict[str, Any]) -> str:
    version = doc["apiVersion"].rsplit("/", 1)[-1]
    return f"{version.capitalize()}{doc['kind']}"


def test_every_manifest_is_made_of_real_kubernetes_fields() -> None:
    client = ApiClient()
    seen = []
    for file, docs in documents().items():
        if file == "kustomization.yaml":
            continue
        for doc in docs:
            name = model_name(doc)
            assert getattr(kubernetes.client, name, None) is not None, f"{file}: {name}?"
            problems = check_fields(doc, name, f"{file}:{doc['kind']}")
            assert not problems, "\n".join(problems)
            # The client's models check required fields and enums as they are built.
            client._ApiClient__deserialize(doc, name)  # type: ignore[attr-defined]
            seen.append(doc["kind"])
    assert sorted(seen) == sorted(["ConfigMap", "StatefulSet", "Service", "Service",
                                   "NetworkPolicy", "PodDisruptionBudget", "Secret"])


def test_the_kustomization_lists_every_manifest_but_the_secret() -> None:
    kustomization = documents()["kustomization.yaml"][0]
    listed = set(kustomization["resources"])
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == {f for f in files if not f.endswith(".example.yaml")}
    assert [i["name"] for i in kustomization["images"]] == [container()["image"]]
    # The token never sits in the repository: the example Secret is empty and not applied.
    secret = the("Secret", "hagw-admin")
    assert secret["stringData"] == {"token": ""}


def test_kubectl_renders_the_kustomization() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (optional: no Debian package carries it)")
    result = subprocess.run([kubectl, "kustomize", str(MANIFESTS)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {d["kind"] for d in rendered} == {"ConfigMap", "StatefulSet", "Service",
                                             "NetworkPolicy", "PodDisruptionBudget"}
    assert {d["metadata"]["namespace"] for d in rendered} == {"hagw"}
    sts = next(d for d in rendered if d["kind"] == "StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "hagw:0.1.0"


# -- the invariants between them ----------------------------------------------------------


def test_the_ports_are_the_configs() -> None:
    _, config = gateway_config()
    assert port("http") == config.listen.port
    assert port("admin") == config.admin.listen.port
    # Reachable on the pod's address (the Services, the kubelet's probes).
    assert config.listen.host == config.admin.listen.host == "0.0.0.0"
    traffic, admin = the("Service", "hagw"), the("Service", "hagw-admin")
    assert [p["targetPort"] for p in traffic["spec"]["ports"]] == ["http"]
    assert [p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]
    assert admin["spec"]["clusterIP"] == "None"  # headless: one name per pod
    assert the("StatefulSet", "hagw")["spec"]["serviceName"] == "hagw-admin"
    labels = the("StatefulSet", "hagw")["spec"]["template"]["metadata"]["labels"]
    for selector in (traffic["spec"]["selector"], admin["spec"]["selector"],
                     the("NetworkPolicy", "hagw")["spec"]["podSelector"]["matchLabels"],
                     the("PodDisruptionBudget", "hagw")["spec"]["selector"]["matchLabels"],
                     the("StatefulSet", "hagw")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items(), selector
    policy = the("NetworkPolicy", "hagw")["spec"]["ingress"]
    assert [[p["port"] for p in rule["ports"]] for rule in policy] == [["http"], ["admin"]]
    assert "from" not in policy[0] and policy[1]["from"]


def test_the_probes_ask_the_admin_api() -> None:
    _, config = gateway_config()
    paths = openapi.document()["paths"]
    scheme = "HTTPS" if config.admin.tls is not None else "HTTP"
    probes = {kind: container()[kind]["httpGet"]
              for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["path"] in paths
        assert probe["port"] == "admin" and probe["scheme"] == scheme


def test_the_grace_period_covers_the_gateways_shutdown() -> None:
    _, config = gateway_config()
    spec = pod()
    pre_stop = container().get("lifecycle", {}).get("preStop", {})
    sleep = float(pre_stop.get("sleep", {}).get("seconds", 0))
    shutdown = config.shutdown.grace + config.shutdown.drain_timeout
    assert spec["terminationGracePeriodSeconds"] >= sleep + shutdown + 5
    # Long enough for the endpoints to forget the pod while it still serves.
    assert config.shutdown.grace >= 5


def test_state_config_secret_and_image_fit_together() -> None:
    text, config = gateway_config()
    c = container()
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod()["volumes"]}
    claims = {t["metadata"]["name"]: t for t in
              the("StatefulSet", "hagw")["spec"]["volumeClaimTemplates"]}
    # state_dir on the claim (under its root, so hagw owns the directory).
    assert Path(config.state_dir).parent == Path(mounts["state"]["mountPath"])
    assert "state" in claims and "state" not in volumes
    assert claims["state"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    # The config file: the ConfigMap's key, mounted where -c and HAGW_CONFIG say.
    env = {e["name"]: e for e in c["env"]}
    config_path = Path(c["args"][c["args"].index("-c") + 1])
    assert env["HAGW_CONFIG"]["value"] == str(config_path)
    assert config_path.parent == Path(mounts["config"]["mountPath"])
    assert volumes["config"]["configMap"]["name"] == "hagw-config"
    assert config_path.name in the("ConfigMap", "hagw-config")["data"]
    assert mounts["config"]["readOnly"] is True
    # The token comes from the Secret through the environment, never from the ConfigMap.
    assert re.search(r'^\s*token: "\$\{HAGW_ADMIN_TOKEN\}"$', text, re.M)
    ref = env["HAGW_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("hagw-admin", "token")
    assert set(the("Secret", "hagw-admin")["stringData"]) == {"token"}
    # The Dockerfile's image: its entrypoint runs hagw, as its user, on these ports.
    docker = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["hagw"]' in docker and "command" not in c
    assert c["args"][:1] == ["run"]
    uid = re.search(r"useradd .*--uid (\d+)", docker)
    assert uid and pod()["securityContext"]["runAsUser"] == int(uid.group(1))
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", docker, re.M)[0].split()}
    assert {port("http"), port("admin")} <= exposed


def test_the_pod_is_locked_down_and_sized() -> None:
    _, config = gateway_config()
    spec, c = pod(), container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    # Service links would put HAGW_ADMIN_SERVICE_HOST and friends into hagw's environment.
    assert spec["enableServiceLinks"] is False
    assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    # Writable places on a read-only root: the state volume and /tmp only.
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/hagw", "/tmp"}
    requests = c["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests) and "memory" in c["resources"]["limits"]
    # One worker per CPU requested ("auto" would count the node's CPUs).
    assert config.workers == int(requests["cpu"])
    # One gateway per node.
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"


def test_hagw_check_accepts_the_configmaps_config(tmp_path: Path) -> None:
    text, _ = gateway_config()
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAGW_")}
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HAGW_ADMIN_TOKEN is not set" in result.stderr  # a warning: it is the Secret's


# -- the ConfigMap's config, run ----------------------------------------------------------


def start_gateway(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``hagw run -c config`` as the pod's entrypoint does, the token in the environment."""
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HAGW_ADMIN_TOKEN": TOKEN})


async def test_the_configmaps_gateway_runs_answers_its_probes_and_stops_in_time(
        backends: Any, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """``hagw run`` on the ConfigMap's config (its workers, shutdown and status keys), with
    only what a pod has differently replaced: loopback ports, a temporary state_dir, the
    nodes (real backends here). The probes answer as the kubelet asks them; a SIGTERM turns
    /readyz to 503 at once, and the gateway exits within terminationGracePeriodSeconds."""
    text, _ = gateway_config()
    data = yaml.safe_load(text)
    nodes = await backends(3)
    listen, admin = free_port(), free_port()
    data["listen"] = f"127.0.0.1:{listen}"
    data["admin"]["listen"] = f"127.0.0.1:{admin}"
    data["state_dir"] = str(tmp_path / "state")
    data["nodes"] = [{**node, "url": b.url} for node, b in zip(data["nodes"], nodes,
                                                                   strict=True)]
    data["health"].pop("verify")  # the demo backends' /ready is there, but keep it simple
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    proc = start_gateway(config, tmp_path / "gateway.log")
    admin_url, traffic_url = f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{listen}"

    async def status(url: str) -> int:
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                return resp.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    try:
        deadline = time.monotonic() + 30
        while await status(f"{admin_url}/readyz") != 200:
            assert time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()[-3000:]
            await asyncio.sleep(0.1)
        assert await status(f"{admin_url}/healthz") == 200
        async with http.get(f"{admin_url}/processes") as resp:
            workers = (await resp.json())["workers"]
        assert len(workers) == 2  # workers: 2, as the pod's CPU request
        while await status(f"{traffic_url}/") != 200:
            assert time.monotonic() < deadline, "no node took traffic"
            await asyncio.sleep(0.1)
        assert await status(f"{traffic_url}/_status.atom") == 200  # status.public

        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while await status(f"{admin_url}/readyz") != 503:
            assert proc.poll() is None and time.monotonic() - stopped < 2, \
                "/readyz did not turn 503 within 2s of SIGTERM"
            await asyncio.sleep(0.05)
        # Still serving during shutdown.grace, for the endpoints to forget the pod.
        assert await status(f"{traffic_url}/") == 200
        grace_period = pod()["terminationGracePeriodSeconds"]
        code = await asyncio.to_thread(proc.wait, grace_period)
        took = time.monotonic() - stopped
        assert code == 0, (tmp_path / "gateway.log").read_text()[-3000:]
        cfg = parse_config(text, "configmap.yaml", env={"HAGW_ADMIN_TOKEN": "x"})
        assert cfg.shutdown.grace <= took < grace_period
        assert parse_duration("10s") == cfg.shutdown.grace
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
