"""deploy/: the Kubernetes manifests against the Kubernetes schemas, the compose file's shape
(and `docker compose config` where Docker's compose plugin is installed), and the topology
they describe run without containers: two gateway processes, one Redis, the sandbox
upstream and a round-robin client."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from gateway.app import credential_headers
from gateway.config import Settings, env_name
from gateway.sandbox import ACCOUNTS
from tests.conftest import Sandbox
from tests.servers import gateway_process

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"
SETTINGS = {env_name(name) for name in Settings.model_fields}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            found.append(
                (f"{path.name}:{document['kind']}/{document['metadata']['name']}", document)
            )
    return found


MANIFESTS = manifests()


def one(kind: str, name: str = "catapult-gateway") -> dict[str, Any]:
    [found] = [d for _, d in MANIFESTS if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize(("where", "document"), MANIFESTS, ids=[w for w, _ in MANIFESTS])
def test_each_manifest_is_valid_against_the_kubernetes_schema(
    where: str, document: dict[str, Any]
) -> None:
    # strict: a misspelt or misplaced field is an error, not silently dropped.
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    assert set(kustomization["resources"]) == files


def test_the_deployment_probes_drains_and_reads_its_settings() -> None:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    config = one("ConfigMap")["data"]

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"][0] == "serve"  # the image's entrypoint is catapult-gateway
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"catapult-gateway"}
    # SIGTERM comes after the preStop sleep; the drain then takes up to the shutdown timeout;
    # the kubelet's SIGKILL must come later still.
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(config["GATEWAY_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > sleep + drain
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = one(kind)["spec"]["selector"]
        assert selector.get("matchLabels", selector).items() <= labels.items(), kind
    assert one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "catapult-gateway"


def test_config_and_secret_hold_only_real_settings_and_the_shared_keys() -> None:
    config = one("ConfigMap")["data"]
    secret = one("Secret")["stringData"]
    redis_service = one("Service", "catapult-gateway-redis")
    [port] = redis_service["spec"]["ports"]

    assert set(config) | set(secret) <= SETTINGS
    assert set(secret) == {"GATEWAY_CACHE_KEY", "GATEWAY_CURSOR_KEY"}
    assert not set(config) & {"GATEWAY_CACHE_KEY", "GATEWAY_CURSOR_KEY"}
    assert config["GATEWAY_CACHE_URL"] == f"redis://catapult-gateway-redis:{port['port']}/0"
    # Every setting value is one Settings accepts.
    Settings.model_validate(
        {name.removeprefix("GATEWAY_").lower(): value for name, value in config.items()}
    )


# -- compose --

COMPOSE = ROOT / "deploy" / "compose.yaml"
COMPOSE_ENV = {"GATEWAY_CACHE_KEY": "k" * 32, "GATEWAY_CURSOR_KEY": "c" * 32}


def test_compose_runs_two_replicas_on_one_redis_scraped_by_prometheus() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    gateways = sorted(name for name in services if name.startswith("gateway-"))
    prometheus = yaml.safe_load((COMPOSE.parent / "prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    [targets] = [c["targets"] for c in job["static_configs"]]

    assert gateways == ["gateway-1", "gateway-2"]
    environments = [services[name]["environment"] for name in gateways]
    assert environments[0] == environments[1]
    environment = environments[0]
    assert environment["GATEWAY_CACHE_URL"] == "redis://redis:6379/0"
    for key in ("GATEWAY_CACHE_KEY", "GATEWAY_CURSOR_KEY"):
        assert environment[key].startswith("${" + key + ":?")  # required, never a default
    assert set(environment) <= SETTINGS
    assert "redis" in services
    assert services["gateway-1"]["command"][0] == "serve"
    assert sorted(targets) == [f"{name}:8000" for name in gateways]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_plugin(), reason="docker compose is not installed here")
def test_docker_compose_config_accepts_the_file() -> None:
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", **COMPOSE_ENV},
    )

    assert done.returncode == 0, done.stderr


# -- the same topology, without containers --

DEMO, SECOND = ACCOUNTS[0], ACCOUNTS[1]


@pytest.fixture
def replicas(sandbox: Sandbox, redis_url: str) -> Iterator[list[str]]:
    """Two `catapult-gateway serve` processes configured as deploy/ configures them."""
    env = {
        "GATEWAY_UPSTREAM_URL": sandbox.url,
        "GATEWAY_CACHE_URL": redis_url,
        "GATEWAY_CACHE_KEY": "the key both replicas are given",
        "GATEWAY_CURSOR_KEY": "the cursor key both replicas are given",
        "GATEWAY_CACHE_TTL": "600",
        # One upstream slot per account every 100 s, and no waiting in line for one: a
        # second upstream request for the account anywhere is refused at once.
        "GATEWAY_UPSTREAM_RATE": "0.01",
        "GATEWAY_UPSTREAM_QUEUE_TIMEOUT": "0",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    with ExitStack() as stack:
        urls = [stack.enter_context(gateway_process(env=env))[1] for _ in range(2)]
        yield urls


CONNECTION = """query($first: Int!, $after: String) {
  callsConnection(first: $first, after: $after) {
    edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }"""


def test_two_replicas_share_cache_pacing_and_cursor_keys(
    replicas: list[str], sandbox: Sandbox
) -> None:
    turn = itertools.cycle(replicas)  # the load balancer: round robin

    def post(query: str, account: Any = DEMO, **variables: Any) -> dict[str, Any]:
        answer = httpx.post(
            f"{next(turn)}/graphql",
            json={"query": query, "variables": variables},
            headers=credential_headers(account),
            timeout=30,
        )
        body: dict[str, Any] = answer.json()
        return body

    # Replica 1 fetches a page of three calls: the only upstream request of this test.
    first = post(CONNECTION, first=3)["data"]["callsConnection"]
    edges = first["edges"]
    assert len(edges) == 3
    assert len(sandbox.requests()) == 1

    # Replica 2 resumes after replica 1's first edge: the cursor key is shared (no forged
    # cursor error), and the page comes from the shared cache (no upstream request).
    resumed = post(CONNECTION, first=2, after=edges[0]["cursor"])
    assert "errors" not in resumed, resumed
    assert [e["node"]["id"] for e in resumed["data"]["callsConnection"]["edges"]] == [
        e["node"]["id"] for e in edges[1:]
    ]
    assert len(sandbox.requests()) == 1

    # Replica 1 again, and replica 2 with replica 1's first question: both from the cache.
    assert post(CONNECTION, first=3)["data"]["callsConnection"] == first
    assert post(CONNECTION, first=3)["data"]["callsConnection"] == first
    assert len(sandbox.requests()) == 1

    # Shared pacing: the account's one upstream slot went to replica 1; a new upstream
    # request on either replica finds it taken in Redis and is refused without reaching
    # the upstream. (Pacing per process would let each replica's first request through.)
    for _ in replicas:
        refused = post("{ calls(size: 7) { id } }")
        assert [e["extensions"]["code"] for e in refused["errors"]] == ["RATE_LIMITED"]
    assert len(sandbox.requests()) == 1

    # Another account has its own slot, taken by whichever replica asks first.
    assert post("{ calls(size: 7) { id } }", SECOND)["data"]["calls"]
    assert len(sandbox.requests()) == 2
